//! `mfa-reset status`: counts per outcome status, pending, and `--wait` with a live
//! progress bar (a terminal) or plain progress lines (logs, CI).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{BackoffBuilder, Retryable};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use crate::batch::BatchView;
use crate::broker::stream::{first_offset, read_to_tail, Offset, StreamFollower, StreamMessage};
use crate::broker::{self, Topology};
use crate::cli::StatusArgs;
use crate::config::Settings;
use crate::domain::Status;
use crate::records::RecordReader;

/// Exit code of `status --wait` when the timeout passes first.
pub const EXIT_TIMEOUT: i32 = 2;

/// `--wait` gave up.
#[derive(Debug, thiserror::Error)]
#[error("batch {batch}: {pending} request(s) still without an outcome after {waited:?}")]
pub struct TimedOut {
    /// Batch.
    pub batch: String,
    /// Still pending.
    pub pending: u64,
    /// How long we waited.
    pub waited: Duration,
}

/// Run the command.
pub async fn run(settings: &Settings, args: &StatusArgs) -> anyhow::Result<()> {
    let view = if args.wait {
        watch(
            settings,
            &args.batch,
            args.timeout.map(Duration::from_secs),
            None,
        )
        .await?
    } else {
        load(settings, &args.batch).await?
    };
    print!("{}", summary_table(&view));
    if let Some(warning) = ignored_warning(&view, &args.batch) {
        eprintln!("{warning}");
    }
    Ok(())
}

/// Read the batch as the stream has it now: from the batch's own time when its id carries
/// one (so a year of older records is skipped, not read), else from the start. Publishes
/// nothing: a read-only broker user can run it.
pub async fn load(settings: &Settings, batch: &str) -> anyhow::Result<BatchView> {
    let topology = Topology::new(&settings.broker, &settings.retry);
    let conn = broker::connect(&settings.broker, "mfa-reset status").await?;
    super::ensure_set_up(
        &conn,
        &topology.outcomes(),
        &format!("no batch {batch:?}"),
        settings,
    )
    .await?;
    let (mut view, _) = read_view(&conn, &topology, batch, start_of(batch), settings).await?;
    if view.manifest().is_none() && !matches!(start_of(batch), Offset::First) {
        // An id that does not tell the truth about its time (`enqueue --batch`): from the start.
        (view, _) = read_view(&conn, &topology, batch, Offset::First, settings).await?;
    }
    let _ = conn.close(200, "bye".into()).await;
    ensure_known(&view, batch, settings)?;
    Ok(view)
}

async fn read_view(
    conn: &lapin::Connection,
    topology: &Topology,
    batch: &str,
    from: Offset,
    settings: &Settings,
) -> anyhow::Result<(BatchView, Option<u64>)> {
    let view = Arc::new(Mutex::new(BatchView::new(batch)));
    let end = read_to_tail(conn, topology, from, believed(&view, settings)?).await?;
    let view = view.lock().map(|v| v.clone()).unwrap_or_default();
    Ok((view, end))
}

/// How far before the time in a batch id reading starts: the broker stamps chunks with its
/// own clock, which may differ a little from the enqueuing host's (the id's minute is a
/// floor already). Too small a margin costs speed, never records: when the manifest is not
/// found from there, the read starts over from the beginning.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::minutes(2);

/// Where a batch's records start: `Since` the time its id carries (`20261127-2301-…`, as
/// `enqueue` names batches) less [`CLOCK_MARGIN`], else the start of the stream.
pub fn start_of(batch: &str) -> Offset {
    let stamp = batch.get(..13).and_then(|s| {
        chrono::NaiveDateTime::parse_from_str(&format!("{s}00"), "%Y%m%d-%H%M%S").ok()
    });
    match stamp {
        Some(t) if t.and_utc() <= Utc::now() + CLOCK_MARGIN => {
            Offset::Since(t.and_utc() - CLOCK_MARGIN)
        }
        _ => Offset::First,
    }
}

/// A stream handler folding into `view` what verifies against `security.allowed_signers`.
fn believed(
    view: &Arc<Mutex<BatchView>>,
    settings: &Settings,
) -> anyhow::Result<impl FnMut(StreamMessage) + Send + 'static> {
    let reader = RecordReader::from_settings(&settings.security)?;
    let sink = view.clone();
    Ok(move |message: StreamMessage| {
        let read = reader.read(&message.body);
        if let Ok(mut v) = sink.lock() {
            v.read(read)
        }
    })
}

/// The warning for records of the batch that were left out, if any.
pub fn ignored_warning(view: &BatchView, batch: &str) -> Option<String> {
    (view.ignored() > 0).then(|| {
        format!(
            "warning: {} record(s) of batch {batch} do not verify against \
             security.allowed_signers (unsigned, forged or altered) and were ignored; \
             `mfa-reset audit verify --batch {batch}` lists them",
            view.ignored()
        )
    })
}

fn ensure_known(view: &BatchView, batch: &str, settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        view.manifest().is_some(),
        "no batch {batch:?} on the outcomes stream {}.outcomes: check the id (enqueue prints it) \
         and broker.prefix",
        settings.broker.prefix
    );
    Ok(())
}

/// Follow the batch until every request has an outcome (or `timeout`), showing progress.
/// `total_hint` lets the demo show the bar before the manifest is read. A broker restart
/// does not end the wait: it reconnects (for up to `broker.connect_timeout`) and resumes
/// after the last record it read.
pub async fn watch(
    settings: &Settings,
    batch: &str,
    timeout: Option<Duration>,
    total_hint: Option<u64>,
) -> anyhow::Result<BatchView> {
    let topology = Topology::new(&settings.broker, &settings.retry);
    let mut conn = broker::connect(&settings.broker, "mfa-reset status --wait").await?;
    super::ensure_set_up(
        &conn,
        &topology.outcomes(),
        &format!("no batch {batch:?}"),
        settings,
    )
    .await?;
    let start = start_of(batch);
    // Where the follower goes on from, once what is there now has been read.
    let (view, mut resume) = if total_hint.is_none() {
        // The batch must exist: read up to now first (from its time, else from the start).
        let (mut snapshot, mut end) = read_view(&conn, &topology, batch, start, settings).await?;
        if snapshot.manifest().is_none() && !matches!(start, Offset::First) {
            (snapshot, end) = read_view(&conn, &topology, batch, Offset::First, settings).await?;
        }
        ensure_known(&snapshot, batch, settings)?;
        let next = end.map_or(Offset::First, |e| Offset::At(e + 1));
        (Arc::new(Mutex::new(snapshot)), next)
    } else {
        (
            Arc::new(Mutex::new(BatchView::new(batch))),
            resolve(&conn, &topology, start).await?,
        )
    };
    let mut follower = follow(&conn, &topology, &view, resume, settings).await?;

    let started = Instant::now();
    let mut progress = Progress::new(total_hint.unwrap_or(0));
    let result = loop {
        let snapshot = view.lock().map(|v| v.clone()).unwrap_or_default();
        progress.update(&snapshot);
        if snapshot.is_complete() {
            progress.finish(&snapshot);
            break Ok(snapshot);
        }
        if let Some(limit) = timeout {
            if started.elapsed() >= limit {
                progress.finish(&snapshot);
                break Err(TimedOut {
                    batch: batch.to_string(),
                    pending: snapshot.pending(),
                    waited: limit,
                }
                .into());
            }
        }
        if !follower.is_running() {
            // The broker went away (a restart, a node move): reconnect and go on after the
            // last record read; what was read stays in the view.
            let high_water = follower.high_water();
            if high_water > 0 {
                resume = Offset::At(high_water);
            }
            let _ = follower.stop().await;
            tracing::warn!("lost the outcomes stream; reconnecting");
            // The stream answers a moment after its node does: retry the whole reopen.
            let reopen = || async {
                let conn = broker::connect(&settings.broker, "mfa-reset status --wait").await?;
                let follower = follow(&conn, &topology, &view, resume, settings).await?;
                anyhow::Ok((conn, follower))
            };
            (conn, follower) = reopen
                .retry(broker::connect_backoff(settings.broker.connect_timeout).build())
                .await
                .context("lost the outcomes stream while waiting")?;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = follower.stop().await;
    let _ = conn.close(200, "bye".into()).await;
    result
}

/// `Since(t)` as the offset of the first record at or after `t`, `Next` when nothing was
/// written since: a resume point that is an offset survives a reconnect.
async fn resolve(
    conn: &lapin::Connection,
    topology: &Topology,
    start: Offset,
) -> anyhow::Result<Offset> {
    Ok(match start {
        Offset::Since(_) => match first_offset(conn, &topology.outcomes(), start).await? {
            Some(first) => Offset::At(first),
            None => Offset::Next,
        },
        other => other,
    })
}

async fn follow(
    conn: &lapin::Connection,
    topology: &Topology,
    view: &Arc<Mutex<BatchView>>,
    from: Offset,
    settings: &Settings,
) -> anyhow::Result<StreamFollower> {
    StreamFollower::start(conn, topology, from, believed(view, settings)?).await
}

/// A progress bar on a terminal, plain lines every few seconds elsewhere.
struct Progress {
    bar: Option<ProgressBar>,
    last_line: Instant,
    started: Instant,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} users  {rate}  ETA {eta}\n  {msg}",
            )
            .map(|style| {
                // indicatif's own {per_sec} prints four decimals ("47.3533/s").
                style.with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&per_second(state.per_sec()));
                })
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            last_line: Instant::now(),
            started: Instant::now(),
        }
    }

    fn update(&mut self, view: &BatchView) {
        let counts = counts_line(view);
        if let Some(bar) = &self.bar {
            if view.expected() > 0 {
                bar.set_length(view.expected());
            }
            bar.set_position(view.finished());
            bar.set_message(counts);
        } else if self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            eprintln!("{}", self.plain(view, &counts));
        }
    }

    fn plain(&self, view: &BatchView, counts: &str) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = view.finished() as f64 / secs;
        let eta = if rate > 0.0 {
            format!("{:.0}s", view.pending() as f64 / rate)
        } else {
            "unknown".into()
        };
        format!(
            "{}/{} users done, {}, ETA {eta} ({counts})",
            view.finished(),
            view.expected(),
            per_second(rate)
        )
    }

    fn finish(&mut self, view: &BatchView) {
        if let Some(bar) = self.bar.take() {
            bar.set_position(view.finished());
            bar.finish_and_clear();
        } else {
            let counts = counts_line(view);
            eprintln!("{}", self.plain(view, &counts));
        }
    }
}

/// A rate as people read it: `47.4/s`, `473/s`.
pub fn per_second(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}/s")
    } else {
        format!("{rate:.1}/s")
    }
}

fn counts_line(view: &BatchView) -> String {
    let counts = view.counts();
    let mut parts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    parts.push(format!("pending {}", view.pending()));
    parts.join(", ")
}

/// The status table printed by `status` and the demo.
pub fn summary_table(view: &BatchView) -> String {
    let mut out = String::new();
    let counts = view.counts();
    if let Some(m) = view.manifest() {
        out.push_str(&format!(
            "batch {}  ({} users from {}{}, enqueued {})\n",
            crate::net::printable(&m.batch),
            m.count,
            crate::net::printable(&m.source),
            if m.dry_run { ", DRY RUN" } else { "" },
            m.created_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    for status in Status::ALL {
        let n = counts.get(&status).copied().unwrap_or(0);
        if n > 0 {
            out.push_str(&format!(
                "  {:<18} {n:>7}   {}\n",
                status.as_str(),
                explain(status)
            ));
        }
    }
    out.push_str(&format!("  {:<18} {:>7}\n", "pending", view.pending()));
    out.push_str(&format!("  {:<18} {:>7}\n", "total", view.expected()));
    out
}

fn explain(status: Status) -> &'static str {
    match status {
        Status::Reset => "every method in scope removed",
        Status::AlreadyClean => "nothing removable was registered",
        Status::Partial => {
            "some methods remain: see the report's methods_remaining and error columns"
        }
        Status::DryRun => "nothing changed; the report lists what would be removed",
        Status::Failed => "not reset: see the report's error columns and `mfa-reset dlq list`",
        Status::SkippedProtected => {
            "protected account (reset.protected_users / directory role): not touched"
        }
        Status::Expired => "older than reset.max_request_age: not executed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_read_from_its_own_time_less_a_margin_when_its_id_carries_one() {
        let Offset::Since(t) = start_of("20261127-2301-users-4f2a") else {
            panic!("a generated id carries its time");
        };
        assert_eq!(t.to_rfc3339(), "2026-11-27T22:59:00+00:00");
        assert!(matches!(start_of("my-batch"), Offset::First));
        assert!(matches!(start_of("20261399-2301-x"), Offset::First));
        assert!(
            matches!(start_of("29991231-2359-future"), Offset::First),
            "an id from the future does not hide the batch"
        );
    }

    #[test]
    fn rates_are_rounded_to_what_a_person_reads() {
        assert_eq!(per_second(47.3533), "47.4/s");
        assert_eq!(per_second(0.0), "0.0/s");
        assert_eq!(per_second(99.94), "99.9/s");
        assert_eq!(per_second(100.0), "100/s");
        assert_eq!(per_second(473.49), "473/s");
    }
}
