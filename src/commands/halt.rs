//! `mfa-reset halt` and `mfa-reset resume`: a signed admin command on the control stream.

use anyhow::Context;

use crate::broker::publisher::publish_confirmed;
use crate::broker::topology::RK_CONTROL;
use crate::broker::{OutMessage, Topology};
use crate::cli::AdminArgs;
use crate::config::Settings;
use crate::control::{self, Action, SignedCommand};
use crate::records::read::load_allowed_signers;
use crate::trust::Signer;

/// Sign `action` with `--key` and append it to the control stream.
pub async fn run(settings: &Settings, action: Action, args: &AdminArgs) -> anyhow::Result<()> {
    let prefix = &settings.broker.prefix;
    let signer = Signer::from_key_file(&args.key)
        .with_context(|| format!("loading --key {}", args.key.display()))?;
    let signed = SignedCommand::sign(action, prefix, args.reason.clone(), &signer)
        .context("signing the command")?;
    let body = serde_json::to_vec(&signed)?;
    // The workers check it against the same file: refuse here what they would ignore.
    let allowed = load_allowed_signers(&settings.security)?;
    let issued = control::verify(&body, prefix, &allowed).map_err(|reason| {
        anyhow::anyhow!(
            "the workers would ignore this {}: {reason}. The key must be listed in {} with \
             namespaces=\"mfa-reset-admin\"",
            action.as_str(),
            allowed.source()
        )
    })?;
    let topology = Topology::new(&settings.broker, &settings.retry);
    let (conn, channel) = super::confirming_channel(
        settings,
        &format!("mfa-reset {}", action.as_str()),
        &topology.control(),
        &format!("cannot {}", action.as_str()),
    )
    .await?;
    let message = OutMessage::json(RK_CONTROL, body).with_id(signed.command.id.to_string());
    publish_confirmed(&channel, &topology.exchange(), &message)
        .await
        .context("writing the command to the control stream")?;
    let _ = conn.close(200, "bye".into()).await;
    match action {
        Action::Halt => println!(
            "halt signed by {} recorded: every worker of {prefix} stops taking requests within \
             seconds (those in flight finish; nothing is lost). `mfa-reset resume` lets them go on.",
            issued.by
        ),
        Action::Resume => println!(
            "resume signed by {} recorded: the workers of {prefix} take requests again.",
            issued.by
        ),
    }
    Ok(())
}
