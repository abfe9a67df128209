//! Signed, hash-chained records, and the audit that lists every missing, altered and forged
//! one.
//!
//! A [`SealedRecord`] is a record (any JSON value: a plan, an outcome) with a [`ChainLink`]
//! `(chain, seq, prev)` and an sshsig signature over the canonical JSON of
//! `{"link": …, "record": …}`; `prev` is the SHA-256 of those same bytes of the record before
//! it in the chain ([`Digest::ZERO`] for seq 0).
//!
//! **One chain per writer per batch.** Several workers write a batch's records concurrently,
//! so a single chain would need a lock across processes. Instead each worker process draws a
//! random writer id at start and keeps one [`ChainWriter`] per batch it touches, with chain id
//! `{batch}/{writer}` ([`chain_id`]). A restarted worker starts new chains.
//!
//! **What the audit ([`ChainAudit`]) finds.** Records may arrive in any order (it sorts each
//! chain by seq) and twice (a republish after a lost confirm is not a finding).
//! - *Missing*: a seq no record claims (a gap, including the start of a chain), or a record
//!   whose `prev` is not the hash of the record before it (that one was replaced).
//! - *Altered*: a signature that no longer matches its record (content, link or signature
//!   changed), or two different validly signed records at one seq.
//! - *Forged*: unsigned, or signed by a key the allowed-signers file does not allow in the
//!   worker namespace, or by another allowed key than the one that owns the chain.
//!
//! **A deleted last record** leaves no gap behind it. The batch's manifest is the anchor that
//! catches it: it says how many users the batch has, each worker record that concludes a user
//! names that user's leaf index ([`ChainAudit::push`]'s `concludes`), and the audit reports
//! every index without a verified concluding record ([`Finding::Incomplete`]). Since a user's
//! records end with its outcome, deleting the tail of any chain removes an outcome and is
//! reported. What stays undetectable: deleting a trailing record that concluded no user
//! (a plan whose worker died before the outcome, a second outcome of an already concluded
//! user), which changes no user's result.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::canonical::{canonical_json_value, CanonicalError};
use super::digest::Digest;
use super::signer::{SignError, Signer};
use super::sshsig::{verify, Verified, VerifyError};
use super::{AllowedSigners, Namespace};

/// Where a record sits in its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainLink {
    /// The chain: `{batch}/{writer}`.
    pub chain: String,
    /// Position in the chain, from 0, no gaps.
    pub seq: u64,
    /// Digest of the record at `seq - 1`; [`Digest::ZERO`] at seq 0.
    pub prev: Digest,
}

/// A record with its link and the writer's signature over both: the wire form on the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedRecord {
    /// Where it sits in its chain.
    pub link: ChainLink,
    /// The record itself (plan, outcome…), kept as received so that it verifies byte for byte.
    pub record: Value,
    /// Armored sshsig signature over [`SealedRecord::signed_bytes`].
    pub signature: String,
}

impl SealedRecord {
    /// The bytes that are signed and hashed: canonical JSON of `{"link":…,"record":…}`.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        signed_bytes(&self.link, &self.record)
    }

    /// The digest the next record of the chain names as `prev`.
    pub fn digest(&self) -> Result<Digest, CanonicalError> {
        Ok(Digest::of(&self.signed_bytes()?))
    }

    /// Check the signature: made in `namespace` by a key `allowed` lets sign there at `at`.
    pub fn verify(
        &self,
        namespace: Namespace,
        allowed: &AllowedSigners,
        at: DateTime<Utc>,
    ) -> Result<Verified, VerifyError> {
        let bytes = self
            .signed_bytes()
            .map_err(|error| VerifyError::Malformed(error.to_string()))?;
        verify(&self.signature, namespace, &bytes, allowed, at)
    }
}

fn signed_bytes(link: &ChainLink, record: &Value) -> Result<Vec<u8>, CanonicalError> {
    canonical_json_value(&json!({ "link": link, "record": record }))
}

/// The chain id of one writer's records of one batch: `{batch}/{writer}` (a batch id holds
/// no `/`; the writer id is random per worker process, e.g. a UUID).
pub fn chain_id(batch: &str, writer: &str) -> String {
    format!("{batch}/{writer}")
}

impl ChainLink {
    /// The batch part of the chain id. The chain is signed, so an audit of a batch takes the
    /// records whose chain names it, and flags a record whose own batch field says otherwise.
    pub fn batch(&self) -> &str {
        self.chain
            .rsplit_once('/')
            .map_or(&self.chain, |(batch, _)| batch)
    }
}

/// Appends records to one chain: seals each with the next link and the writer's signature.
///
/// Publish every sealed record; if a publish fails, publish *the same* record again (the
/// audit takes duplicates), never seal a replacement: that would fork the chain, and a record
/// never published before later ones are is a gap the audit reports as missing. A worker
/// that dies with sealed but unpublished records loses only its chain's tail: no gap.
#[derive(Debug, Clone)]
pub struct ChainWriter {
    chain: String,
    namespace: Namespace,
    next_seq: u64,
    prev: Digest,
}

impl ChainWriter {
    /// A new, empty chain, signed in `namespace` (workers: [`Namespace::Worker`]).
    pub fn new(chain: impl Into<String>, namespace: Namespace) -> ChainWriter {
        ChainWriter {
            chain: chain.into(),
            namespace,
            next_seq: 0,
            prev: Digest::ZERO,
        }
    }

    /// The chain id.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The seq the next sealed record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Link, sign and hash `record` as the next one of the chain.
    pub fn seal<T: Serialize + ?Sized>(
        &mut self,
        record: &T,
        signer: &Signer,
    ) -> Result<SealedRecord, SignError> {
        let record = serde_json::to_value(record).map_err(CanonicalError::from)?;
        let link = ChainLink {
            chain: self.chain.clone(),
            seq: self.next_seq,
            prev: self.prev,
        };
        let bytes = signed_bytes(&link, &record)?;
        let signature = signer.sign(self.namespace, &bytes)?;
        self.prev = Digest::of(&bytes);
        self.next_seq += 1;
        Ok(SealedRecord {
            link,
            record,
            signature,
        })
    }
}

/// Which of the three kinds of damage a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingKind {
    /// A record is gone.
    Missing,
    /// A record was changed.
    Altered,
    /// A record was made by someone not allowed to.
    Forged,
}

/// One problem the audit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// No record claims these seqs of the chain.
    Missing {
        /// The chain.
        chain: String,
        /// First missing seq.
        first: u64,
        /// Last missing seq.
        last: u64,
    },
    /// The record's `prev` is not the digest of the record before it: that one was replaced.
    BrokenLink {
        /// The chain.
        chain: String,
        /// The seq whose `prev` does not match.
        seq: u64,
        /// Stream position of the record.
        position: u64,
    },
    /// The signature does not match the record.
    Altered {
        /// The chain it claims.
        chain: String,
        /// The seq it claims.
        seq: u64,
        /// Stream position of the record.
        position: u64,
        /// Why.
        reason: String,
    },
    /// Two different validly signed records claim one seq.
    Conflict {
        /// The chain.
        chain: String,
        /// The seq.
        seq: u64,
        /// Stream positions of the records.
        positions: Vec<u64>,
    },
    /// Unsigned, or signed by a key not allowed to write it.
    Forged {
        /// The chain it claims.
        chain: String,
        /// The seq it claims.
        seq: u64,
        /// Stream position of the record.
        position: u64,
        /// Why.
        reason: String,
    },
    /// Items (leaf indices of the manifest) without a verified concluding record.
    Incomplete {
        /// The items, as ranges.
        items: Vec<RangeInclusive<u64>>,
    },
}

impl Finding {
    /// Missing, altered or forged.
    pub fn kind(&self) -> FindingKind {
        match self {
            Finding::Missing { .. } | Finding::BrokenLink { .. } | Finding::Incomplete { .. } => {
                FindingKind::Missing
            }
            Finding::Altered { .. } | Finding::Conflict { .. } => FindingKind::Altered,
            Finding::Forged { .. } => FindingKind::Forged,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Missing { chain, first, last } if first == last => {
                write!(f, "missing: chain {chain} record {first}")
            }
            Finding::Missing { chain, first, last } => write!(f, "missing: chain {chain} records {first}-{last}"),
            Finding::BrokenLink { chain, seq, position } => write!(
                f,
                "missing: chain {chain} record {seq} (offset {position}) does not follow record {}: it was replaced",
                seq.saturating_sub(1)
            ),
            Finding::Altered { chain, seq, position, reason } => {
                write!(f, "altered: chain {chain} record {seq} (offset {position}): {reason}")
            }
            Finding::Conflict { chain, seq, positions } => write!(
                f,
                "altered: chain {chain} record {seq}: different signed records at offsets {positions:?}"
            ),
            Finding::Forged { chain, seq, position, reason } => {
                write!(f, "forged: chain {chain} record {seq} (offset {position}): {reason}")
            }
            Finding::Incomplete { items } => {
                let items: Vec<String> = items
                    .iter()
                    .map(|range| match (range.start(), range.end()) {
                        (start, end) if start == end => start.to_string(),
                        (start, end) => format!("{start}-{end}"),
                    })
                    .collect();
                write!(f, "missing: no verified outcome for items {}", items.join(", "))
            }
        }
    }
}

/// What an audit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Records read.
    pub records: u64,
    /// Records whose signature verified.
    pub verified: u64,
    /// Chains seen.
    pub chains: usize,
    /// Every problem, grouped by chain and in seq order.
    pub findings: Vec<Finding>,
}

impl AuditReport {
    /// True when nothing is missing, altered or forged.
    pub fn is_intact(&self) -> bool {
        self.findings.is_empty()
    }
}

#[derive(Debug)]
struct Slot {
    position: u64,
    digest: Digest,
    prev: Digest,
    /// The signer, when the signature verified.
    signer: Option<Verified>,
}

/// Checks the records of one batch, pushed in stream order, then [`ChainAudit::finish`].
#[derive(Debug)]
pub struct ChainAudit<'a> {
    allowed: &'a AllowedSigners,
    namespace: Namespace,
    chains: BTreeMap<String, BTreeMap<u64, Vec<Slot>>>,
    findings: Vec<Finding>,
    concluded: BTreeSet<u64>,
    records: u64,
    verified: u64,
}

impl<'a> ChainAudit<'a> {
    /// An audit of records signed in `namespace` by keys `allowed` lets sign there.
    pub fn new(allowed: &'a AllowedSigners, namespace: Namespace) -> ChainAudit<'a> {
        ChainAudit {
            allowed,
            namespace,
            chains: BTreeMap::new(),
            findings: Vec::new(),
            concluded: BTreeSet::new(),
            records: 0,
            verified: 0,
        }
    }

    /// Check one record read at stream `position`, written at `at` (the stream's timestamp
    /// of it, for the keys' validity windows); `concludes` is the manifest leaf index of the
    /// user this record concludes (its outcome), if any.
    pub fn push(
        &mut self,
        position: u64,
        record: &SealedRecord,
        at: DateTime<Utc>,
        concludes: Option<u64>,
    ) {
        self.records += 1;
        let link = &record.link;
        let digest = match record.digest() {
            Ok(digest) => digest,
            Err(error) => {
                self.findings.push(Finding::Altered {
                    chain: link.chain.clone(),
                    seq: link.seq,
                    position,
                    reason: error.to_string(),
                });
                Digest::ZERO
            }
        };
        let signer = match record.verify(self.namespace, self.allowed, at) {
            Ok(verified) => {
                self.verified += 1;
                if let Some(item) = concludes {
                    self.concluded.insert(item);
                }
                Some(verified)
            }
            Err(error) => {
                let (chain, seq, reason) = (link.chain.clone(), link.seq, error.to_string());
                self.findings.push(match error {
                    VerifyError::Unsigned | VerifyError::SignerNotAllowed(_) => Finding::Forged {
                        chain,
                        seq,
                        position,
                        reason,
                    },
                    VerifyError::Malformed(_) | VerifyError::BadSignature(_) => Finding::Altered {
                        chain,
                        seq,
                        position,
                        reason,
                    },
                });
                None
            }
        };
        self.chains
            .entry(link.chain.clone())
            .or_default()
            .entry(link.seq)
            .or_default()
            .push(Slot {
                position,
                digest,
                prev: link.prev,
                signer,
            });
    }

    /// The report; `expected_items` is the manifest's user count, when known.
    pub fn finish(mut self, expected_items: Option<u64>) -> AuditReport {
        let chains = self.chains.len();
        for (chain, slots) in &self.chains {
            check_chain(chain, slots, &mut self.findings);
        }
        if let Some(count) = expected_items {
            let items = missing_ranges(&self.concluded, count);
            if !items.is_empty() {
                self.findings.push(Finding::Incomplete { items });
            }
        }
        AuditReport {
            records: self.records,
            verified: self.verified,
            chains,
            findings: self.findings,
        }
    }
}

fn check_chain(chain: &str, slots: &BTreeMap<u64, Vec<Slot>>, findings: &mut Vec<Finding>) {
    // A chain with no valid record is forged or altered through and through; its records
    // are reported already, and its gaps mean nothing.
    let Some(owner) = slots.values().flatten().find_map(|slot| {
        slot.signer
            .as_ref()
            .map(|signer| signer.fingerprint.clone())
    }) else {
        return;
    };
    let mut expected_seq = 0u64;
    let mut previous: Option<Digest> = None;
    for (&seq, entries) in slots {
        if seq > expected_seq {
            findings.push(Finding::Missing {
                chain: chain.to_string(),
                first: expected_seq,
                last: seq - 1,
            });
            previous = None;
        }
        expected_seq = seq.saturating_add(1);
        let mut valid: Vec<&Slot> = Vec::new();
        for slot in entries {
            let Some(signer) = &slot.signer else { continue };
            if signer.fingerprint != owner {
                findings.push(Finding::Forged {
                    chain: chain.to_string(),
                    seq,
                    position: slot.position,
                    reason: format!(
                        "signed by {} ({}), but the chain belongs to key {owner}",
                        signer.principal, signer.fingerprint
                    ),
                });
            } else if !valid.iter().any(|kept| kept.digest == slot.digest) {
                valid.push(slot);
            }
        }
        if valid.len() > 1 {
            findings.push(Finding::Conflict {
                chain: chain.to_string(),
                seq,
                positions: valid.iter().map(|slot| slot.position).collect(),
            });
        }
        let Some(slot) = valid.first() else {
            // Only damaged records here, reported already: the link cannot be checked.
            previous = None;
            continue;
        };
        let expected_prev = if seq == 0 {
            Some(Digest::ZERO)
        } else {
            previous
        };
        if expected_prev.is_some_and(|prev| prev != slot.prev) {
            findings.push(Finding::BrokenLink {
                chain: chain.to_string(),
                seq,
                position: slot.position,
            });
        }
        previous = Some(slot.digest);
    }
}

/// The items of `0..count` not in `concluded`, as ranges.
fn missing_ranges(concluded: &BTreeSet<u64>, count: u64) -> Vec<RangeInclusive<u64>> {
    let mut ranges = Vec::new();
    let mut next = 0u64;
    for &item in concluded.range(..count) {
        if item > next {
            ranges.push(next..=item - 1);
        }
        next = item + 1;
    }
    if next < count {
        ranges.push(next..=count - 1);
    }
    ranges
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
