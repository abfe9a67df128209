//! Least authority on the broker: the definitions `setup --definitions` writes, imported with
//! `rabbitmqctl import_definitions` into a virtual host of the test's own (deleted with its
//! users at the end), let each role do its job and refuse it everything else.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use graph_sim::{GenOptions, SimConfig};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use mfa_reset::broker::definitions::Role;
use mfa_reset::broker::{self, topology::is_access_refused};
use mfa_reset::cli::SetupArgs;
use mfa_reset::commands;
use mfa_reset::config::Settings;
use mfa_reset::domain::Status;

use crate::common::env::{csv_of_generated, enqueue_args, TestEnv};

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl (install RabbitMQ to run this test)")
}

/// A virtual host and the role users imported into it; dropping it deletes them all.
struct Vhost {
    name: String,
    users: Vec<String>,
}

impl Vhost {
    fn new(name: &str) -> Vhost {
        let out = ctl(&["add_vhost", name]);
        assert!(out.status.success(), "add_vhost: {out:?}");
        let vhost = Vhost {
            name: name.to_string(),
            users: Vec::new(),
        };
        // guest, an administrator on this machine, tidies up and plays the legacy all-in-one
        // account; the roles never use it.
        let out = ctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
        assert!(out.status.success(), "set_permissions: {out:?}");
        vhost
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = ctl(&["delete_vhost", &self.name]);
        for user in &self.users {
            let _ = ctl(&["delete_user", user]);
        }
    }
}

/// The settings of `env` as `role`'s user in `vhost`.
fn as_role(
    env: &TestEnv,
    vhost: &str,
    passwords: &HashMap<String, (String, String)>,
    role: Role,
) -> Settings {
    let (user, password) = passwords
        .get(role.name())
        .expect("a password per role")
        .clone();
    let mut s = env.settings.clone();
    s.broker.url = format!("amqp://{user}:{password}@127.0.0.1:5672/{vhost}");
    s
}

fn tenant(users: usize) -> SimConfig {
    SimConfig {
        users,
        generation: GenOptions {
            methods_min: 1,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    }
}

/// Does the broker take a confirmed publish of `settings`' user to `exchange` with `key`?
async fn may_publish(settings: &Settings, exchange: &str, key: &str) -> bool {
    let conn = broker::connect(&settings.broker, "authority test")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let published = match ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            br#"{"forged":true}"#,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
    {
        Ok(confirm) => confirm.await,
        Err(err) => Err(err),
    };
    let _ = conn.close(200, "bye".into()).await;
    match published {
        Ok(confirmation) => confirmation.is_ack(),
        Err(err) => {
            assert!(
                is_access_refused(&err),
                "refused for want of rights, not {err:?}"
            );
            false
        }
    }
}

/// May `settings`' user consume from `queue` (the broker answers basic.consume)?
async fn may_read(settings: &Settings, queue: &str, stream: bool) -> bool {
    let conn = broker::connect(&settings.broker, "authority test")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(10, BasicQosOptions { global: false })
        .await
        .expect("qos");
    let mut args = FieldTable::default();
    if stream {
        args.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
    }
    let consumed = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await;
    let _ = conn.close(200, "bye".into()).await;
    match consumed {
        Ok(_) => true,
        Err(err) => {
            assert!(
                is_access_refused(&err),
                "refused for want of rights, not {err:?}"
            );
            false
        }
    }
}

/// May `settings`' user declare a queue of the prefix?
async fn may_declare(settings: &Settings, queue: &str) -> bool {
    let conn = broker::connect(&settings.broker, "authority test")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let declared = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    let _ = conn.close(200, "bye".into()).await;
    match declared {
        Ok(_) => true,
        Err(err) => {
            assert!(
                is_access_refused(&err),
                "refused for want of rights, not {err:?}"
            );
            false
        }
    }
}

async fn open(settings: &Settings) -> Connection {
    broker::connect(&settings.broker, "authority test")
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_its_job_under_its_own_user_and_is_refused_beyond_it() {
    let mut env = TestEnv::new("authority", tenant(20)).await;
    let prefix = env.settings.broker.prefix.clone();
    let vhost_name = format!("{prefix}-vhost");
    let mut vhost = Vhost::new(&vhost_name);
    env.settings.broker.url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost_name}");

    // setup --definitions writes the users and permissions, and the passwords beside them.
    let dir = tempfile::tempdir().unwrap();
    let defs = dir.path().join("defs.json");
    commands::setup::run_with(
        &env.settings,
        &SetupArgs {
            definitions: Some(defs.clone()),
        },
    )
    .await
    .expect("setup --definitions");
    let text = std::fs::read_to_string(&defs).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["vhosts"][0]["name"], vhost_name.as_str());
    let passwords: HashMap<String, (String, String)> =
        std::fs::read_to_string(format!("{}.passwords", defs.display()))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[0].to_string(), (f[1].to_string(), f[2].to_string()))
            })
            .collect();
    vhost.users = passwords.values().map(|(u, _)| u.clone()).collect();
    for (_, password) in passwords.values() {
        assert!(
            !text.contains(password.as_str()),
            "no password in clear in the definitions"
        );
    }
    // Through standard input: the node, not this process, would read a file, and the file is
    // ours alone (0600).
    let out = {
        use std::io::Write;
        let mut child = Command::new("rabbitmqctl")
            .args(["import_definitions", "--format", "json"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("rabbitmqctl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(out.status.success(), "import_definitions: {out:?}");

    let setup = as_role(&env, &vhost_name, &passwords, Role::Setup);
    let producer = as_role(&env, &vhost_name, &passwords, Role::Producer);
    let worker = as_role(&env, &vhost_name, &passwords, Role::Worker);
    let approver = as_role(&env, &vhost_name, &passwords, Role::Approver);
    let admin = as_role(&env, &vhost_name, &passwords, Role::Admin);
    let reader = as_role(&env, &vhost_name, &passwords, Role::Reader);
    let exchange = prefix.clone();
    let intake = format!("{prefix}.intake");
    let requests = format!("{prefix}.requests");
    let outcomes = format!("{prefix}.outcomes");
    let dead = format!("{prefix}.dead");

    // Only setup may declare; before it, a worker refuses to start and says to run it.
    assert!(!may_declare(&worker, &requests).await);
    let before = {
        let conn = open(&worker).await;
        let err = env.topology().ensure(&conn).await.unwrap_err().to_string();
        let _ = conn.close(200, "bye".into()).await;
        err
    };
    assert!(before.contains("run `mfa-reset setup`"), "{before}");
    commands::setup::run(&setup)
        .await
        .expect("the setup user declares the topology");
    for role in [&producer, &worker, &approver, &admin, &reader] {
        assert!(
            !may_declare(role, &format!("{prefix}.other")).await,
            "only setup configures"
        );
    }

    // A batch goes the whole way with each process under its own user: the producer
    // enqueues (signed, through the intake), the worker resets, the reader follows.
    let enqueued = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.csv");
        std::fs::write(&path, csv_of_generated(20)).unwrap();
        commands::enqueue::run(&producer, &enqueue_args(Some(path), None))
            .await
            .expect("the producer enqueues")
    };
    env.start_worker_with(worker.clone(), 8);
    let view = commands::status::watch(
        &reader,
        &enqueued.batch,
        Some(Duration::from_secs(120)),
        None,
    )
    .await
    .expect("the reader follows the batch to its end");
    assert_eq!(
        view.counts().get(&Status::Reset).copied(),
        Some(20),
        "{:?}",
        view.counts()
    );
    let again = commands::status::load(&reader, &enqueued.batch)
        .await
        .expect("status as the reader, which may not publish a marker");
    assert_eq!(again.finished(), 20);
    env.stop_workers().await;

    // The producer writes the intake and nothing else.
    assert!(may_publish(&producer, &intake, "request").await);
    assert!(
        !may_publish(&producer, &exchange, "request").await,
        "not the workers' exchange"
    );
    assert!(
        !may_publish(&producer, &exchange, "outcome").await,
        "no forged outcome"
    );
    assert!(
        !may_publish(&producer, "", &requests).await,
        "not the requests queue directly"
    );
    assert!(!may_read(&producer, &outcomes, true).await);
    assert!(!may_read(&producer, &requests, false).await);
    assert!(!may_read(&producer, &format!("{prefix}.awaiting"), true).await);

    // The worker reads requests and the record, writes outcomes, never the intake.
    assert!(may_read(&worker, &requests, false).await);
    assert!(may_read(&worker, &outcomes, true).await);
    assert!(may_publish(&worker, &exchange, "outcome").await);
    assert!(!may_publish(&worker, &intake, "request").await);
    assert!(!may_read(&worker, &dead, false).await);

    // The approver reads the waiting batches and writes the intake, but cannot take requests.
    assert!(may_read(&approver, &format!("{prefix}.awaiting"), true).await);
    assert!(may_publish(&approver, &intake, "request").await);
    assert!(!may_read(&approver, &requests, false).await);
    assert!(!may_publish(&approver, &exchange, "outcome").await);

    // The admin reads the dead letters and writes the control stream and its restore records
    // (through `{p}`), but cannot take requests.
    assert!(may_read(&admin, &dead, false).await);
    assert!(may_publish(&admin, &exchange, "control").await);
    assert!(may_publish(&admin, &exchange, "outcome").await);
    assert!(!may_read(&admin, &requests, false).await);

    // The reader only reads.
    assert!(may_read(&reader, &outcomes, true).await);
    assert!(!may_publish(&reader, &exchange, "outcome").await);
    assert!(!may_publish(&reader, &intake, "request").await);
    assert!(!may_publish(&reader, "", &requests).await);
    assert!(!may_read(&reader, &requests, false).await);
    drop(vhost);
}
