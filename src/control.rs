//! Signed admin commands on the `{prefix}.control` stream: `halt` and `resume`.
//!
//! `mfa-reset halt --key FILE` appends a [`SignedCommand`] (sshsig, namespace
//! `mfa-reset-admin`) to the control stream; every worker tails the stream and stops taking
//! requests while the latest verified command is a halt. A command names the deployment
//! (`broker.prefix`) and when it was issued, both signed: the *latest issued* verified
//! command wins, so replaying an old `resume` (anyone with broker credentials can append)
//! does not lift a newer halt, and a command signed for one deployment does nothing on
//! another. Unsigned, forged or foreign commands are ignored and logged.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::trust::{
    sshsig::verify_canonical, AllowedSigners, Namespace, Principal, SignError, Signer,
};

/// What the workers are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stop taking requests (those in flight finish).
    Halt,
    /// Take requests again.
    Resume,
}

impl Action {
    /// `halt` or `resume`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Halt => "halt",
            Action::Resume => "resume",
        }
    }
}

/// The signed part of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// What to do.
    pub action: Action,
    /// The deployment it is for (`broker.prefix`).
    pub prefix: String,
    /// When it was issued; the latest verified command wins.
    pub issued_at: DateTime<Utc>,
    /// Unique per command.
    pub id: Uuid,
    /// Why, in the admin's words.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A command with its signature: one message on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCommand {
    /// The command.
    pub command: Command,
    /// Armored sshsig over the canonical JSON of `command`, namespace `mfa-reset-admin`.
    pub signature: String,
}

impl SignedCommand {
    /// Sign a new `action` for `prefix`, issued now.
    pub fn sign(
        action: Action,
        prefix: &str,
        reason: Option<String>,
        signer: &Signer,
    ) -> Result<SignedCommand, SignError> {
        let command = Command {
            action,
            prefix: prefix.to_string(),
            issued_at: Utc::now(),
            id: Uuid::new_v4(),
            reason,
        };
        let signature = signer.sign_canonical(Namespace::Admin, &command)?;
        Ok(SignedCommand { command, signature })
    }
}

/// A command that verified: who issued it.
#[derive(Debug, Clone, PartialEq)]
pub struct Issued {
    /// The command.
    pub command: Command,
    /// The admin who signed it.
    pub by: Principal,
}

/// Check a control-stream message: a command for `prefix`, signed by an admin.
pub fn verify(body: &[u8], prefix: &str, allowed: &AllowedSigners) -> Result<Issued, String> {
    let signed: SignedCommand =
        serde_json::from_slice(body).map_err(|error| format!("not a signed command: {error}"))?;
    let verified = verify_canonical(
        &signed.signature,
        Namespace::Admin,
        &signed.command,
        allowed,
        signed.command.issued_at,
    )
    .map_err(|error| error.to_string())?;
    if signed.command.prefix != prefix {
        return Err(format!(
            "signed for broker.prefix {:?}, not this deployment's {prefix:?}",
            signed.command.prefix
        ));
    }
    Ok(Issued {
        command: signed.command,
        by: verified.principal,
    })
}

/// What the control stream says now: the latest issued verified command.
#[derive(Debug, Clone, Default)]
pub struct ControlState {
    latest: Option<Issued>,
}

impl ControlState {
    /// Take a verified command in; an older one than the latest changes nothing.
    pub fn apply(&mut self, issued: Issued) -> bool {
        let newer = self
            .latest
            .as_ref()
            .is_none_or(|latest| issued.command.issued_at > latest.command.issued_at);
        if newer {
            self.latest = Some(issued);
        }
        newer
    }

    /// The halt in force, if the latest command is one.
    pub fn halt(&self) -> Option<&Issued> {
        self.latest
            .as_ref()
            .filter(|issued| issued.command.action == Action::Halt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::test_keys::key_set;

    fn signed(action: Action, prefix: &str, key: &std::path::Path) -> Vec<u8> {
        let signer = Signer::from_key_file(key).unwrap();
        serde_json::to_vec(&SignedCommand::sign(action, prefix, None, &signer).unwrap()).unwrap()
    }

    #[test]
    fn an_admins_halt_verifies_and_names_the_admin() {
        let (_dir, keys, allowed) = key_set();
        let issued = verify(&signed(Action::Halt, "p", &keys.admin.path), "p", &allowed).unwrap();
        assert_eq!(issued.by.as_str(), "carol@demo.invalid");
        assert_eq!(issued.command.action, Action::Halt);
    }

    #[test]
    fn commands_by_non_admins_for_other_deployments_or_unsigned_are_refused() {
        let (_dir, keys, allowed) = key_set();
        let by_operator = signed(Action::Resume, "p", &keys.requester.path);
        assert!(verify(&by_operator, "p", &allowed)
            .unwrap_err()
            .contains("not allowed"));
        let elsewhere = signed(Action::Resume, "other", &keys.admin.path);
        assert!(verify(&elsewhere, "p", &allowed)
            .unwrap_err()
            .contains("other"));
        let mut forged: SignedCommand =
            serde_json::from_slice(&signed(Action::Halt, "p", &keys.admin.path)).unwrap();
        forged.command.action = Action::Resume;
        assert!(verify(&serde_json::to_vec(&forged).unwrap(), "p", &allowed).is_err());
        assert!(verify(br#"{"action":"resume"}"#, "p", &allowed).is_err());
    }

    #[test]
    fn the_latest_issued_command_wins_so_a_replayed_old_resume_does_not_lift_a_halt() {
        let (_dir, keys, allowed) = key_set();
        let old_resume = verify(
            &signed(Action::Resume, "p", &keys.admin.path),
            "p",
            &allowed,
        )
        .unwrap();
        let halt = verify(&signed(Action::Halt, "p", &keys.admin.path), "p", &allowed).unwrap();
        let mut state = ControlState::default();
        assert!(state.halt().is_none());
        assert!(state.apply(old_resume.clone()));
        assert!(state.apply(halt));
        assert!(state.halt().is_some());
        assert!(
            !state.apply(old_resume),
            "a replayed older resume is not newer"
        );
        assert!(state.halt().is_some());
        let resume = verify(
            &signed(Action::Resume, "p", &keys.admin.path),
            "p",
            &allowed,
        )
        .unwrap();
        assert!(state.apply(resume));
        assert!(state.halt().is_none());
    }
}
