//! [`AmqpHold`]: a TCP relay in front of RabbitMQ that stops clients at a point the test
//! chooses, so "the broker goes away mid-enqueue" or "the replay is killed half-way" happen
//! where the test says, not where a race puts them.
//!
//! The first `limit` `basic.publish` frames pass. The next one, from any connection, starts
//! the hold: from then on every connection that was open at that moment sends nothing more
//! to the broker (its publish and whatever follows are read and dropped), while the broker's
//! frames still reach the client, so confirms of what passed arrive. Connections opened
//! after the hold began pass freely (a client that reconnects gets through). The relay
//! closes a client's connection when the broker closes its side, and the broker's when the
//! client goes away.
//!
//! It reads only the AMQP 0-9-1 framing (protocol header, then frames of type, channel,
//! size, payload and an end octet): a `basic.publish` is a method frame of class 60, method 40.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The address of the broker in an `amqp://user:pass@host:port/vhost` URL.
pub fn broker_address(url: &str) -> SocketAddr {
    let after_credentials = url.rsplit('@').next().expect("a URL");
    let authority = after_credentials
        .trim_start_matches("amqp://")
        .split('/')
        .next()
        .expect("host:port");
    std::net::ToSocketAddrs::to_socket_addrs(authority)
        .expect("a broker address")
        .next()
        .expect("a broker address")
}

/// A relay that holds publishes past a limit (see the module doc).
pub struct AmqpHold {
    port: u16,
    state: Arc<State>,
    task: JoinHandle<()>,
}

struct State {
    upstream: SocketAddr,
    limit: u64,
    passed: AtomicU64,
    holding: AtomicBool,
    held: watch::Sender<bool>,
}

impl AmqpHold {
    /// Relay to the broker at `upstream`, letting `limit` publishes through.
    pub async fn start(upstream: SocketAddr, limit: u64) -> AmqpHold {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let port = listener.local_addr().expect("relay address").port();
        let state = Arc::new(State {
            upstream,
            limit,
            passed: AtomicU64::new(0),
            holding: AtomicBool::new(false),
            held: watch::channel(false).0,
        });
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept task: aborting it ends every relayed connection.
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                relays.spawn(relay(client, accept_state.clone()));
                while relays.try_join_next().is_some() {}
            }
        });
        AmqpHold { port, state, task }
    }

    /// The broker URL that goes through the relay.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Wait until the hold began (a client tried to publish past the limit).
    pub async fn held(&self) {
        let mut held = self.state.held.subscribe();
        held.wait_for(|h| *h).await.expect("relay state");
    }

    /// Publishes that reached the broker.
    pub fn passed(&self) -> u64 {
        self.state
            .passed
            .load(Ordering::SeqCst)
            .min(self.state.limit)
    }
}

impl Drop for AmqpHold {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, state: Arc<State>) {
    // Opened after the hold began: a reconnecting client, let through.
    let free = state.holding.load(Ordering::SeqCst);
    let Some(((mut from_client, mut to_client), (mut from_broker, mut to_broker))) =
        dial(client, state.upstream).await
    else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy(&mut from_broker, &mut to_client) => {}
        _ = upstream(&mut from_client, &mut to_broker, &state, free) => {}
    }
}

/// The broker at `upstream` for `client`: both connections, split into (read, write) halves,
/// or `None` when the broker cannot be reached (the client, dropped, sees its connection
/// closed, as it would).
pub async fn dial(
    client: TcpStream,
    upstream: SocketAddr,
) -> Option<(
    (OwnedReadHalf, OwnedWriteHalf),
    (OwnedReadHalf, OwnedWriteHalf),
)> {
    let broker = TcpStream::connect(upstream).await.ok()?;
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    Some((client.into_split(), broker.into_split()))
}

/// Client → broker, frame by frame, holding publishes past the limit.
async fn upstream(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    state: &State,
    free: bool,
) -> std::io::Result<()> {
    let mut protocol_header = [0u8; 8];
    from.read_exact(&mut protocol_header).await?;
    to.write_all(&protocol_header).await?;
    loop {
        let mut head = [0u8; 7];
        from.read_exact(&mut head).await?;
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut rest = vec![0u8; size + 1];
        from.read_exact(&mut rest).await?;
        if !free && is_publish(head[0], &rest) && !state.admit() {
            // Held: read and drop until the client goes away.
            tokio::io::copy(from, &mut tokio::io::sink()).await?;
            return Ok(());
        }
        to.write_all(&head).await?;
        to.write_all(&rest).await?;
    }
}

impl State {
    /// May one more publish pass? The first refusal starts the hold.
    fn admit(&self) -> bool {
        if !self.holding.load(Ordering::SeqCst)
            && self.passed.fetch_add(1, Ordering::SeqCst) < self.limit
        {
            return true;
        }
        self.holding.store(true, Ordering::SeqCst);
        self.held.send_replace(true);
        false
    }
}

/// A method frame (type 1) of class 60 (basic), method 40 (publish).
fn is_publish(frame_type: u8, payload: &[u8]) -> bool {
    frame_type == 1 && payload.len() >= 4 && payload[..4] == [0, 60, 0, 40]
}
