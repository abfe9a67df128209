//! `mfa-reset status`: counts per outcome status, pending, and `--wait` with a live
//! progress bar (a terminal) or plain progress lines (logs, CI).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use crate::batch::BatchView;
use crate::broker::stream::{read_until_now, Offset, StreamFollower, StreamMessage};
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

/// Read the batch as the stream has it now.
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
    let view = Arc::new(Mutex::new(BatchView::new(batch)));
    read_until_now(&conn, &topology, Offset::First, believed(&view, settings)?).await?;
    let _ = conn.close(200, "bye".into()).await;
    let view = view.lock().map(|v| v.clone()).unwrap_or_default();
    ensure_known(&view, batch, settings)?;
    Ok(view)
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
            "warning: {} record(s) of batch {batch} do not verify against              security.allowed_signers (unsigned, forged or altered) and were ignored;              `mfa-reset audit verify --batch {batch}` lists them",
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
/// `total_hint` lets the demo show the bar before the manifest is read.
pub async fn watch(
    settings: &Settings,
    batch: &str,
    timeout: Option<Duration>,
    total_hint: Option<u64>,
) -> anyhow::Result<BatchView> {
    let topology = Topology::new(&settings.broker, &settings.retry);
    let conn = broker::connect(&settings.broker, "mfa-reset status --wait").await?;
    super::ensure_set_up(
        &conn,
        &topology.outcomes(),
        &format!("no batch {batch:?}"),
        settings,
    )
    .await?;
    let view = Arc::new(Mutex::new(BatchView::new(batch)));
    let follower =
        StreamFollower::start(&conn, &topology, Offset::First, believed(&view, settings)?).await?;
    follower
        .sync()
        .await
        .context("reading the outcomes stream")?;
    if total_hint.is_none() {
        let snapshot = view.lock().map(|v| v.clone()).unwrap_or_default();
        ensure_known(&snapshot, batch, settings)?;
    }

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
            break Err(anyhow::anyhow!("lost the outcomes stream while waiting"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = follower.stop().await;
    let _ = conn.close(200, "bye".into()).await;
    result
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
            m.batch,
            m.count,
            m.source,
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
    fn rates_are_rounded_to_what_a_person_reads() {
        assert_eq!(per_second(47.3533), "47.4/s");
        assert_eq!(per_second(0.0), "0.0/s");
        assert_eq!(per_second(99.94), "99.9/s");
        assert_eq!(per_second(100.0), "100/s");
        assert_eq!(per_second(473.49), "473/s");
    }
}
