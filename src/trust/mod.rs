//! Trust: the cryptographic core behind "only signed, approved requests are executed; every
//! record is signed and verifiable" — self-contained, no broker and no Graph.
//!
//! - [`signer`]: OpenSSH signatures as `ssh-keygen -Y sign` makes them, by a [`Signer`] from a
//!   key file or ssh-agent.
//! - [`sshsig`]: [`verify`] them as `ssh-keygen -Y verify` does, against [`AllowedSigners`].
//! - [`agent`]: the few ssh-agent protocol messages signing needs.
//! - [`allowed_signers`]: OpenSSH's allowed-signers file: who may sign, for which namespaces.
//! - [`merkle`]: RFC 6962 Merkle tree: one signed root per batch, one proof per request.
//! - [`chain`]: signed, hash-chained records and the audit that finds missing, altered and
//!   forged ones.
//! - [`canonical`]: the one byte form (canonical JSON) of whatever is signed or hashed.
//! - [`digest`]: the SHA-256 value type they share.
//! - [`requests`]: signed batches (manifest + Merkle proofs), approvals, and the pure check a
//!   worker runs on every request before anything else.
//! - [`keyset`]: throw-away keys and their `allowed_signers` for the demo and the tests.
//!
//! Every signature names its purpose in a [`Namespace`], so a signature made for one role
//! (approving) can never be replayed as another (requesting).

pub mod agent;
pub mod allowed_signers;
pub mod canonical;
pub mod chain;
pub mod digest;
pub mod keyset;
pub mod merkle;
pub mod requests;
pub mod signer;
pub mod sshsig;
#[cfg(test)]
pub(crate) mod test_keys;

use std::fmt;

pub use allowed_signers::{AllowedSigners, AllowedSignersError, NotAllowed, Principal};
pub use canonical::{canonical_digest, canonical_json_value, to_canonical_json, CanonicalError};
pub use chain::{
    AuditReport, ChainAudit, ChainLink, ChainWriter, Finding, FindingKind, SealedRecord,
};
pub use digest::Digest;
pub use keyset::{KeyFile, KeySet};
pub use merkle::{MerkleCap, MerkleProof, MerkleTree, RootBuilder};
pub use signer::{SignError, Signer, SignerError};
pub use sshsig::{verify, verify_canonical, Verified, VerifyError};

/// What a signature is for: the sshsig namespace, and the `namespaces="…"` an allowed-signers
/// line grants. One per role of issue 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// Operators enqueueing a batch (its manifest) or a ticket event.
    Request,
    /// A second operator approving a batch above the threshold.
    Approve,
    /// Workers signing the plan and outcome records they write.
    Worker,
    /// `halt`, `resume`, `dlq replay`, `restore`.
    Admin,
}

impl Namespace {
    /// Every namespace, for listing them.
    pub const ALL: [Namespace; 4] = [
        Namespace::Request,
        Namespace::Approve,
        Namespace::Worker,
        Namespace::Admin,
    ];

    /// The sshsig namespace string (what `ssh-keygen -Y sign -n` takes).
    pub const fn as_str(self) -> &'static str {
        match self {
            Namespace::Request => "mfa-reset-request",
            Namespace::Approve => "mfa-reset-approve",
            Namespace::Worker => "mfa-reset-worker",
            Namespace::Admin => "mfa-reset-admin",
        }
    }

    /// The namespace named `name`, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Namespace> {
        Namespace::ALL
            .into_iter()
            .find(|namespace| namespace.as_str() == name)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_have_the_names_of_the_contract() {
        let names: Vec<&str> = Namespace::ALL
            .iter()
            .map(|namespace| namespace.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "mfa-reset-request",
                "mfa-reset-approve",
                "mfa-reset-worker",
                "mfa-reset-admin"
            ]
        );
        for namespace in Namespace::ALL {
            assert_eq!(Namespace::from_name(namespace.as_str()), Some(namespace));
        }
        assert_eq!(Namespace::from_name("git"), None);
    }
}
