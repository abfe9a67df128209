//! `mfa-reset audit verify` and `mfa-reset audit export`: the signed record, checked and
//! exported.
//!
//! `verify --batch ID` reads the whole outcomes stream, takes every record that claims the
//! batch (by its chain, or by its own `batch` field when unsealed) and runs the chain audit
//! ([`crate::trust::ChainAudit`]): gaps and replaced records (missing), signatures that no
//! longer match (altered), records no allowed worker key made (forged), and users of the
//! batch's manifest without a verified outcome. Restores of the batch (an admin's signed
//! records on `{batch}/restore-…` chains, [`crate::records::restore`]) are audited the same
//! way in the admin namespace and listed: who restored how many methods, when. `export`
//! writes every record as a JSON line with its verified flag, for a SIEM.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::broker::stream::{read_to_tail, Offset, StreamMessage};
use crate::broker::{self, Topology};
use crate::cli::AuditCommand;
use crate::config::Settings;
use crate::domain::{BatchManifest, Record, RestoreRecord, RestoreResult, RestoreStage};
use crate::net::printable;
use crate::records::read::load_allowed_signers;
use crate::records::restore::is_restore_chain;
use crate::records::{Read, RecordReader};
use crate::trust::requests::manifest_bytes;
use crate::trust::{ChainAudit, Namespace, SealedRecord};

/// Exit code of `audit verify` when the record is not intact.
pub const EXIT_DAMAGED: i32 = 4;

/// `audit verify` found damage.
#[derive(Debug, thiserror::Error)]
#[error("batch {batch}: the record is not intact: {problems} problem(s) found (listed above)")]
pub struct Damaged {
    /// The batch.
    pub batch: String,
    /// How many problems.
    pub problems: usize,
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Records claiming the batch.
    pub records: u64,
    /// Of them, verified.
    pub verified: u64,
    /// Chains seen.
    pub chains: usize,
    /// Every problem, one line each.
    pub problems: Vec<String>,
    /// Every verified restore of the batch, one line each: who, when, how many methods.
    pub restores: Vec<String>,
}

impl Verdict {
    /// Nothing missing, altered or forged.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A stream message kept for the audit.
struct Seen {
    offset: u64,
    body: Vec<u8>,
}

/// Hand every message of the outcomes stream from `offset` on to `handler`, as it comes
/// (a stream of millions of records is never held whole).
async fn read_stream<H>(settings: &Settings, offset: Offset, mut handler: H) -> anyhow::Result<()>
where
    H: FnMut(Seen) + Send + 'static,
{
    let topology = Topology::new(&settings.broker, &settings.retry);
    let conn = broker::connect(&settings.broker, "mfa-reset audit").await?;
    super::ensure_set_up(&conn, &topology.outcomes(), "nothing to audit", settings).await?;
    // Up to the tail, publishing nothing: the reader's broker user may not write.
    read_to_tail(&conn, &topology, offset, move |message: StreamMessage| {
        handler(Seen {
            offset: message.offset,
            body: message.body,
        })
    })
    .await?;
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

/// The messages that may concern `batch` (its id appears in them): what the audit examines.
async fn batch_messages(settings: &Settings, batch: &str) -> anyhow::Result<Vec<Seen>> {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let sink = seen.clone();
    let needle = batch.as_bytes().to_vec();
    read_stream(settings, Offset::First, move |message| {
        let mentions = !needle.is_empty()
            && message
                .body
                .windows(needle.len())
                .any(|window| window == needle.as_slice());
        if mentions {
            if let Ok(mut seen) = sink.lock() {
                seen.push(message);
            }
        }
    })
    .await?;
    let seen = std::mem::take(&mut *seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(seen)
}

/// Run an `audit` subcommand.
pub async fn run(settings: &Settings, command: &AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { batch } => verify(settings, batch).await.map(|_| ()),
        AuditCommand::Export { since, out } => export(settings, since.as_deref(), out.as_deref())
            .await
            .map(|_| ()),
    }
}

/// Audit `batch` as the stream has it now, printing nothing.
pub async fn check(settings: &Settings, batch: &str) -> anyhow::Result<Verdict> {
    let allowed = load_allowed_signers(&settings.security)?;
    let seen = batch_messages(settings, batch).await?;
    let verdict = audit(batch, &seen, &allowed);
    if verdict.records == 0 {
        anyhow::bail!(
            "no record of batch {batch:?} on {}.outcomes: check the id and broker.prefix",
            settings.broker.prefix
        );
    }
    Ok(verdict)
}

/// Run `audit verify --batch ID`: print the verdict; [`Damaged`] when not intact.
pub async fn verify(settings: &Settings, batch: &str) -> anyhow::Result<Verdict> {
    let verdict = check(settings, batch).await?;
    println!(
        "batch {batch}: {} records in {} chains, {} verified",
        verdict.records, verdict.chains, verdict.verified
    );
    for restore in &verdict.restores {
        println!("  {restore}");
    }
    for problem in &verdict.problems {
        println!("  {problem}");
    }
    if verdict.is_intact() {
        println!("intact: nothing missing, altered or forged");
        Ok(verdict)
    } else {
        Err(Damaged {
            batch: batch.to_string(),
            problems: verdict.problems.len(),
        }
        .into())
    }
}

/// The audit of `batch` over stream messages (pure: no broker).
fn audit(batch: &str, seen: &[Seen], allowed: &crate::trust::AllowedSigners) -> Verdict {
    let mut chain_audit = ChainAudit::new(allowed, Namespace::Worker);
    let mut problems = Vec::new();
    let mut expected: Option<u64> = None;
    let mut concluded: HashSet<(uuid::Uuid, u32)> = HashSet::new();
    let mut items_known = true;
    let mut unsealed = 0u64;
    let mut restore_audit = ChainAudit::new(allowed, Namespace::Admin);
    let mut restores = Restores::default();
    for message in seen {
        let Ok(value) = serde_json::from_slice::<Value>(&message.body) else {
            continue;
        };
        if value.get("signature").is_some() {
            let Ok(sealed) = serde_json::from_value::<SealedRecord>(value) else {
                continue;
            };
            if sealed.link.batch() != batch {
                continue;
            }
            let record = serde_json::from_value::<Record>(sealed.record.clone()).ok();
            if is_restore_chain(&sealed.link.chain) {
                let restore = match record {
                    Some(Record::Restore(restore)) => Some(*restore),
                    _ => None,
                };
                let at = restore.as_ref().map_or_else(Utc::now, |r| r.at);
                let (chain, seq, offset) = (&sealed.link.chain, sealed.link.seq, message.offset);
                match &restore {
                    Some(r) if r.batch != batch => problems.push(format!(
                        "altered: chain {chain} record {seq} (offset {offset}) names batch {:?}",
                        r.batch
                    )),
                    Some(_) => {}
                    None => problems.push(format!(
                        "forged: chain {chain} record {seq} (offset {offset}): not a restore \
                         record, on a restore's chain"
                    )),
                }
                restore_audit.push(offset, &sealed, at, None);
                if let (Some(restore), Ok(verified)) =
                    (restore, sealed.verify(Namespace::Admin, allowed, at))
                {
                    restores.add(verified.principal.to_string(), restore);
                }
                continue;
            }
            let at = match &record {
                Some(Record::Outcome(o)) => o.finished_at,
                Some(Record::Plan(p)) => p.at,
                _ => Utc::now(),
            };
            if let Some(Record::Outcome(o)) = &record {
                if o.batch != batch {
                    problems.push(format!(
                        "altered: chain {} record {} (offset {}) names batch {:?}",
                        sealed.link.chain, sealed.link.seq, message.offset, o.batch
                    ));
                }
            }
            let concludes = match &record {
                Some(Record::Outcome(o)) => o.item,
                _ => None,
            };
            let verified = sealed.verify(Namespace::Worker, allowed, at).is_ok();
            chain_audit.push(message.offset, &sealed, at, concludes);
            if let (true, Some(Record::Outcome(o))) = (verified, &record) {
                concluded.insert((o.request_id, o.replay));
                items_known &= o.item.is_some();
            }
            continue;
        }
        match serde_json::from_value::<Record>(value) {
            Ok(Record::Manifest(m)) if m.batch == batch => match signed_count(&m, allowed) {
                Ok(count) => expected = Some(expected.map_or(count, |c| c.max(count))),
                Err(reason) => problems.push(format!(
                    "forged: manifest at offset {}: {reason}",
                    message.offset
                )),
            },
            Ok(Record::Outcome(o)) if o.batch == batch => {
                unsealed += 1;
                problems.push(format!(
                    "forged: unsigned outcome at offset {} (claims {} is {})",
                    message.offset,
                    printable(&o.user.to_string()),
                    o.status
                ));
            }
            Ok(Record::Plan(p)) if p.batch == batch => {
                unsealed += 1;
                problems.push(format!(
                    "forged: unsigned plan at offset {} (request {})",
                    message.offset, p.request_id
                ));
            }
            Ok(Record::Restore(r)) if r.batch == batch => {
                unsealed += 1;
                problems.push(format!(
                    "forged: unsigned restore record at offset {} (claims {} restored {} \
                     method(s))",
                    message.offset,
                    printable(&r.by),
                    r.methods().count()
                ));
            }
            _ => {}
        }
    }
    let by_item = if items_known { expected } else { None };
    let report = chain_audit.finish(by_item);
    let restore_report = restore_audit.finish(None);
    let mut lines: Vec<String> = report
        .findings
        .iter()
        .chain(&restore_report.findings)
        .map(|f| printable(&f.to_string()).into_owned())
        .collect();
    if !items_known {
        if let Some(count) = expected {
            let done = concluded.len() as u64;
            if done < count {
                lines.push(format!(
                    "missing: {} of the manifest's {count} users have no verified outcome",
                    count - done
                ));
            }
        }
    }
    lines.extend(problems);
    Verdict {
        records: report.records + restore_report.records + unsealed,
        verified: report.verified + restore_report.verified,
        chains: report.chains + restore_report.chains,
        problems: lines,
        restores: restores.lines(),
    }
}

/// The verified restores of a batch, by restore id: its started and finished records.
#[derive(Default)]
struct Restores {
    by_id: BTreeMap<uuid::Uuid, (String, Option<RestoreRecord>, Option<RestoreRecord>)>,
}

impl Restores {
    /// Take one verified record, signed by `signer`.
    fn add(&mut self, signer: String, record: RestoreRecord) {
        let entry = self
            .by_id
            .entry(record.restore_id)
            .or_insert_with(|| (signer, None, None));
        match record.stage {
            RestoreStage::Started => entry.1 = Some(record),
            RestoreStage::Finished => entry.2 = Some(record),
        }
    }

    /// One line per restore, oldest first: "restored by X (KEY) at T: …".
    fn lines(&self) -> Vec<String> {
        let mut lines: Vec<(chrono::DateTime<Utc>, String)> = self
            .by_id
            .iter()
            .filter_map(|(id, (signer, started, finished))| {
                let first = started.as_ref().or(finished.as_ref())?;
                let head = format!(
                    "restore {id} by {} ({}) at {}",
                    printable(signer),
                    printable(&first.key),
                    first.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                let line = match (started, finished) {
                    (_, Some(done)) => format!(
                        "{head}: {} method(s) of {} user(s): {} created, {} failed, {} left \
                         alone (protected){}",
                        done.methods().count(),
                        done.users.len(),
                        done.count(RestoreResult::Created),
                        done.count(RestoreResult::Failed),
                        done.count(RestoreResult::Protected),
                        done.ended
                            .as_deref()
                            .map(|why| format!("; ended early: {}", printable(why)))
                            .unwrap_or_default()
                    ),
                    (Some(started), None) => format!(
                        "{head}: {} method(s) of {} user(s) to re-create; no record of what came \
                         of them (the restore was interrupted, or that record is missing)",
                        started.methods().count(),
                        started.users.len()
                    ),
                    (None, None) => return None,
                };
                Some((first.at, line))
            })
            .collect();
        lines.sort();
        lines.into_iter().map(|(_, line)| line).collect()
    }
}

/// The user count a manifest record's operator signed, if its signature verifies.
fn signed_count(
    manifest: &BatchManifest,
    allowed: &crate::trust::AllowedSigners,
) -> Result<u64, String> {
    let sealed = manifest
        .sealed
        .as_ref()
        .ok_or_else(|| "unsigned".to_string())?;
    if sealed.manifest.batch != manifest.batch {
        return Err(format!("signed for batch {:?}", sealed.manifest.batch));
    }
    let bytes = manifest_bytes(&sealed.manifest).map_err(|error| error.to_string())?;
    crate::trust::verify(
        &sealed.signature,
        Namespace::Request,
        &bytes,
        allowed,
        sealed.manifest.created_at,
    )
    .map_err(|error| error.to_string())?;
    Ok(sealed.manifest.count)
}

/// One line of `audit export`.
#[derive(Debug, Serialize)]
struct ExportLine {
    offset: u64,
    verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    signer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    record: Value,
}

/// Run `audit export`: every record since `since` as JSON lines; how many were written.
pub async fn export(
    settings: &Settings,
    since: Option<&str>,
    out: Option<&Path>,
) -> anyhow::Result<u64> {
    let since = since.map(parse_since).transpose()?;
    let offset = since.map_or(Offset::First, Offset::Since);
    let reader = RecordReader::from_settings(&settings.security)?;
    // The record names users: a file is 0600, never written through a symlink, and put in
    // place only once complete.
    let (writer, private): (Box<dyn Write + Send>, _) = match out {
        Some(path) => {
            let (file, private) = super::private_file::create(path)?;
            (Box::new(std::io::BufWriter::new(file)), Some(private))
        }
        None => (Box::new(std::io::BufWriter::new(std::io::stdout())), None),
    };
    let state = Arc::new(Mutex::new(Export {
        writer,
        written: 0,
        error: None,
    }));
    let sink = state.clone();
    read_stream(settings, offset, move |message| {
        let line = export_line(&reader, &message);
        if let (Some(since), Some(at)) = (since, record_time(&line.record)) {
            // The broker starts a time offset at a segment boundary: earlier records may come.
            if at < since {
                return;
            }
        }
        if let Ok(mut export) = sink.lock() {
            export.write(&line);
        }
    })
    .await?;
    let mut export = state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    if let Some(error) = export.error.take() {
        return Err(error.context("writing the export"));
    }
    export.writer.flush()?;
    let written = export.written;
    drop(export);
    if let Some(private) = private {
        private.commit()?;
    }
    if let Some(path) = out {
        eprintln!("wrote {written} records to {}", path.display());
    }
    Ok(written)
}

/// Where `export` writes, and the first write error.
struct Export {
    writer: Box<dyn Write + Send>,
    written: u64,
    error: Option<anyhow::Error>,
}

impl Export {
    fn write(&mut self, line: &ExportLine) {
        if self.error.is_some() {
            return;
        }
        let written = serde_json::to_writer(&mut self.writer, line)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(self.writer.write_all(b"\n")?));
        match written {
            Ok(()) => self.written += 1,
            Err(error) => self.error = Some(error),
        }
    }
}

fn export_line(reader: &RecordReader, message: &Seen) -> ExportLine {
    let value: Value = serde_json::from_slice(&message.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&message.body).into_owned()));
    let sealed = serde_json::from_value::<SealedRecord>(value.clone()).ok();
    let (chain, seq, record) = match &sealed {
        Some(sealed) => (
            Some(sealed.link.chain.clone()),
            Some(sealed.link.seq),
            sealed.record.clone(),
        ),
        None => (None, None, value),
    };
    let (verified, signer, reason) = match reader.read(&message.body) {
        Read::Verified { signer, .. } => (true, Some(signer.to_string()), None),
        Read::Unsealed(_) => (
            false,
            None,
            Some("unsealed: not a worker record".to_string()),
        ),
        Read::Ignored { reason, .. } => (false, None, Some(reason)),
    };
    ExportLine {
        offset: message.offset,
        verified,
        signer,
        chain,
        seq,
        reason,
        record,
    }
}

fn record_time(record: &Value) -> Option<DateTime<Utc>> {
    ["finished_at", "at", "created_at"]
        .iter()
        .find_map(|field| record.get(*field)?.as_str()?.parse().ok())
}

/// `--since`: an RFC 3339 time or a date (midnight UTC).
fn parse_since(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").with_context(|| {
        format!(
            "--since {text:?}: not a date (2026-11-28) or an RFC 3339 time (2026-11-28T09:00:00Z)"
        )
    })?;
    Ok(date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_or_a_time_and_names_the_format_otherwise() {
        assert_eq!(
            parse_since("2026-11-28").unwrap(),
            "2026-11-28T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            parse_since("2026-11-28T09:30:00+01:00").unwrap(),
            "2026-11-28T08:30:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let error = parse_since("yesterday").unwrap_err().to_string();
        assert!(error.contains("2026-11-28"), "{error}");
    }
}
