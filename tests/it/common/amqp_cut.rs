//! [`AmqpCut`]: a TCP relay in front of RabbitMQ whose connections a test can cut, as a
//! network failure between one worker and its broker would: [`AmqpCut::cut`] closes every
//! relayed connection at once (the broker takes back what they held unsettled, the client
//! reads the end of its socket) and turns new ones away until [`AmqpCut::reopen`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::amqp_hold::dial;

/// A relay whose connections can be cut (see the module doc).
pub struct AmqpCut {
    port: u16,
    open: Arc<AtomicBool>,
    relays: Arc<Mutex<JoinSet<()>>>,
    task: JoinHandle<()>,
}

impl AmqpCut {
    /// Relay to the broker at `upstream`, open.
    pub async fn start(upstream: SocketAddr) -> AmqpCut {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let port = listener.local_addr().expect("relay address").port();
        let open = Arc::new(AtomicBool::new(true));
        let relays: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let (accepting, into) = (open.clone(), relays.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed
                }
                let mut relays = into.lock().expect("relay set");
                relays.spawn(relay(client, upstream));
                while relays.try_join_next().is_some() {}
            }
        });
        AmqpCut {
            port,
            open,
            relays,
            task,
        }
    }

    /// The broker URL that goes through the relay.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Close every relayed connection now, and turn new ones away.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        // Aborted, a relay drops both of its sockets: each side sees its connection closed.
        self.relays.lock().expect("relay set").abort_all();
    }

    /// Relay new connections again.
    pub fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for AmqpCut {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut relays) = self.relays.lock() {
            relays.abort_all();
        }
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr) {
    let Some(((mut from_client, mut to_client), (mut from_broker, mut to_broker))) =
        dial(client, upstream).await
    else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy(&mut from_broker, &mut to_client) => {}
        _ = tokio::io::copy(&mut from_client, &mut to_broker) => {}
    }
}
