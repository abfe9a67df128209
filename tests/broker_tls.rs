//! The whole path (enqueue → worker → outcome → status) over `amqps://`, against a RabbitMQ
//! node of this test's own with a TLS listener that requires a client certificate
//! (`mfa-tls@localhost`: TLS on 127.0.0.1:5691, plain AMQP on 127.0.0.1:5690 for nothing but
//! its start-up check, files under `/tmp/mfa-reset-test-tls`). The CA, the broker's and the
//! client's certificates are generated here with `openssl`. A guard stops the node when the
//! test ends, even when it fails.

#[path = "it/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::env::{csv_of_generated, TestEnv};
use graph_sim::{GenOptions, SimConfig};
use mfa_reset::domain::Status;

const NODE: &str = "mfa-tls@localhost";
const PLAIN_PORT: u16 = 5690;
const TLS_PORT: u16 = 5691;
const DIST_PORT: u16 = 25690;
const DIR: &str = "/tmp/mfa-reset-test-tls";

fn ctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(["-n", NODE])
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn wait_port(port: u16, open: bool, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while port_open(port) != open {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(DIR)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a broker certificate for 127.0.0.1 and a client certificate, all signed by the CA.
struct Certs {
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn generate_certs() -> Certs {
    let ext = Path::new(DIR).join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n",
    )
    .expect("ext file");
    let client_ext = Path::new(DIR).join("client.ext");
    std::fs::write(&client_ext, "extendedKeyUsage = clientAuth\n").expect("ext file");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=mfa-reset test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.rsa.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            ext,
            "-out",
            &format!("{name}.pem"),
        ]);
        // PKCS#8, the form broker.client_key_file takes (and the broker reads too).
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &format!("{name}.rsa.key"),
            "-out",
            &format!("{name}.key"),
        ]);
    }
    Certs {
        ca: Path::new(DIR).join("ca.pem"),
        client_cert: Path::new(DIR).join("client.pem"),
        client_key: Path::new(DIR).join("client.key"),
    }
}

/// The TLS node; dropping it stops it.
struct Node;

impl Node {
    fn up() -> (Node, Certs) {
        let _ = std::fs::remove_dir_all(DIR);
        std::fs::create_dir_all(format!("{DIR}/mnesia")).expect("dir");
        std::fs::create_dir_all(format!("{DIR}/log")).expect("dir");
        let certs = generate_certs();
        std::fs::write(
            format!("{DIR}/rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{PLAIN_PORT}\n\
                 listeners.ssl.local = 127.0.0.1:{TLS_PORT}\n\
                 ssl_options.cacertfile = {DIR}/ca.pem\n\
                 ssl_options.certfile = {DIR}/server.pem\n\
                 ssl_options.keyfile = {DIR}/server.key\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n"
            ),
        )
        .expect("broker config");
        let node = Node;
        // The Debian scripts run the node as the `rabbitmq` user when started by root.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq", DIR])
            .status();
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", NODE)
            .env("RABBITMQ_NODE_PORT", PLAIN_PORT.to_string())
            .env("RABBITMQ_DIST_PORT", DIST_PORT.to_string())
            .env("RABBITMQ_CONFIG_FILE", format!("{DIR}/rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", format!("{DIR}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{DIR}/log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                format!("{DIR}/enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", format!("{DIR}/pid"))
            .current_dir(DIR)
            .status()
            .expect("rabbitmq-server (install RabbitMQ to run this test)");
        assert!(started.success(), "rabbitmq-server -detached failed");
        assert!(
            wait_port(TLS_PORT, true, 90),
            "the TLS node never listened on {TLS_PORT} (see {DIR}/log)"
        );
        (node, certs)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let stopped = ctl(&["stop", &format!("{DIR}/pid")]);
        if !stopped || !wait_port(TLS_PORT, false, 30) {
            eprintln!("could not stop the test broker node {NODE}; stop it with `rabbitmqctl -n {NODE} stop`");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_goes_the_whole_way_over_amqps_with_a_client_certificate() {
    let (_node, certs) = Node::up();
    let config = SimConfig {
        users: 30,
        generation: GenOptions {
            methods_min: 1,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    };
    let mut env = TestEnv::new("tls", config).await;
    env.settings.broker.url = format!("amqps://guest:guest@127.0.0.1:{TLS_PORT}/%2f");
    env.settings.broker.ca_file = certs.ca.display().to_string();
    env.settings.broker.client_cert_file = certs.client_cert.display().to_string();
    env.settings.broker.client_key_file = certs.client_key.display().to_string();
    env.settings.broker.connect_timeout = Duration::from_secs(30);

    // Without the client certificate the broker refuses the handshake.
    let mut anonymous = env.settings.broker.clone();
    anonymous.client_cert_file.clear();
    anonymous.client_key_file.clear();
    anonymous.connect_timeout = Duration::from_secs(1);
    assert!(
        mfa_reset::broker::connect(&anonymous, "tls test")
            .await
            .is_err(),
        "the listener requires a client certificate"
    );
    // Nor does a client that does not trust the broker's CA connect.
    let mut untrusting = env.settings.broker.clone();
    untrusting.ca_file.clear();
    untrusting.connect_timeout = Duration::from_secs(1);
    assert!(
        mfa_reset::broker::connect(&untrusting, "tls test")
            .await
            .is_err(),
        "the broker's certificate is checked"
    );

    env.setup().await;
    let enqueued = env
        .enqueue_csv(&csv_of_generated(30))
        .await
        .expect("enqueue over amqps");
    env.start_worker(8);
    let view = env.wait_batch(&enqueued.batch, 120).await;
    assert_eq!(
        view.counts().get(&Status::Reset).copied(),
        Some(30),
        "{:?}",
        view.counts()
    );
    env.stop_workers().await;
}
