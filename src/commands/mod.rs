//! One module per subcommand, each with a `run`.

pub mod approve;
pub mod audit;
pub mod demo;
pub mod dlq;
pub mod enqueue;
pub mod halt;
pub mod keys;
pub mod private_file;
pub mod report;
pub mod restore;
pub mod serve;
pub mod setup;
pub mod status;
pub mod work;

use anyhow::Context;
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::records::read::load_allowed_signers;
use crate::trust::{Namespace, Principal, Signer};

/// The admin's signer from `key` (a private key file, or its `.pub` with the key in
/// ssh-agent), checked against `security.allowed_signers` before anything is done: a key
/// that may not sign in `mfa-reset-admin` is refused with `refusal` (what would go wrong),
/// naming the file and the namespace. `setting` names where the key came from (`--key`).
pub(crate) fn admin_signer(
    settings: &Settings,
    key: &std::path::Path,
    setting: &str,
    refusal: &str,
) -> anyhow::Result<(Signer, Principal)> {
    let signer = Signer::from_key_file(key)
        .with_context(|| format!("loading {setting} {}", key.display()))?;
    let allowed = load_allowed_signers(&settings.security)?;
    let probe = format!("mfa-reset: may {setting} sign as an admin?");
    let signed = signer
        .sign(Namespace::Admin, probe.as_bytes())
        .with_context(|| format!("signing with {setting}"))?;
    let verified = crate::trust::verify(
        &signed,
        Namespace::Admin,
        probe.as_bytes(),
        &allowed,
        chrono::Utc::now(),
    )
    .map_err(|error| {
        anyhow::anyhow!(
            "{refusal}: {error}. The key ({}) must be listed in {} with \
             namespaces=\"{}\"",
            signer.fingerprint(),
            allowed.source(),
            Namespace::Admin
        )
    })?;
    Ok((signer, verified.principal))
}

/// Fail with "`what`: nothing is set up yet" when `queue` does not exist, instead of the
/// broker's NOT_FOUND: a read before `setup` (or under a mistyped prefix) is a person's
/// mistake, and the message says how to fix it.
pub(crate) async fn ensure_set_up(
    conn: &Connection,
    queue: &str,
    what: &str,
    settings: &Settings,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        queue_exists(conn, queue).await?,
        "{what}: nothing is set up under broker.prefix {:?} yet (the broker has no {queue}): \
         run `mfa-reset setup` or enqueue a batch first, or check broker.prefix \
         (MFA_RESET__BROKER__PREFIX)",
        settings.broker.prefix
    );
    Ok(())
}

/// A connection named `client` and a channel on it in confirm mode, once `queue` is known
/// to exist (else "`what`: nothing is set up…", see [`ensure_set_up`]): for a command that
/// writes one record and must know the broker took it.
pub(crate) async fn confirming_channel(
    settings: &Settings,
    client: &str,
    queue: &str,
    what: &str,
) -> anyhow::Result<(Connection, lapin::Channel)> {
    let conn = crate::broker::connect(&settings.broker, client).await?;
    ensure_set_up(&conn, queue, what, settings).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    Ok((conn, channel))
}

/// Does `queue` exist? Asked with a passive declare on a channel of its own, as the broker
/// closes the channel a missing queue was asked on.
async fn queue_exists(conn: &Connection, queue: &str) -> anyhow::Result<bool> {
    let channel = conn.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(_) => {
            let _ = channel.close(200, "bye".into()).await;
            Ok(true)
        }
        Err(err) if is_not_found(&err) => Ok(false),
        Err(err) => Err(err).with_context(|| format!("checking that {queue} exists")),
    }
}

fn is_not_found(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

/// A token cancelled by the first SIGINT or SIGTERM.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested; finishing what is in flight");
        t.cancel();
    });
    token
}
