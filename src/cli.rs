//! The command line: `mfa-reset <command>` (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Reset MFA for many Entra ID users through RabbitMQ workers and Microsoft Graph.
#[derive(Debug, Parser)]
#[command(name = "mfa-reset", version, about, long_about = None)]
pub struct Cli {
    /// Settings file (default: $MFA_RESET_CONFIG, else /etc/mfa-reset/config.toml when present;
    /// never one of the current directory). Environment MFA_RESET__SECTION__KEY wins over it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Declare the broker topology (idempotent), or write the broker users of each role.
    Setup(SetupArgs),
    /// Validate an input in full, then enqueue one request per user, signed with your key.
    Enqueue(EnqueueArgs),
    /// Approve a batch waiting for a second person (more than security.approval_above users).
    Approve(ApproveArgs),
    /// Generate throw-away SSH keys (two operators, a worker, an admin) and their
    /// allowed_signers file, to try mfa-reset out. Not for production.
    Keys(KeysArgs),
    /// Consume requests and reset users until SIGINT/SIGTERM.
    Work(WorkArgs),
    /// Counts per outcome status for a batch, and how many are pending.
    Status(StatusArgs),
    /// One row per requested user: what was removed, what failed and why.
    Report(ReportArgs),
    /// Inspect and operate the dead-letter queue.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Re-create the phone and email methods a batch removed (needs reset.backup = true, the
    /// restore key --identity, and an admin's --key: the restore is signed and recorded).
    Restore(RestoreArgs),
    /// The web console and the ticket webhook (prints `console on http://HOST:PORT` first).
    Serve,
    /// Everything in one command: a simulated tenant, the broker, workers, a progress bar, a report.
    Demo(DemoArgs),
    /// Stop every worker from taking requests within seconds (signed, admin namespace).
    Halt(AdminArgs),
    /// Let halted workers take requests again (signed, admin namespace).
    Resume(AdminArgs),
    /// Check the signed, hash-chained record; export it for a SIEM.
    Audit {
        /// What to do.
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// `halt`, `resume`
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin's SSH private key, or its `.pub` with the key in ssh-agent (SSH_AUTH_SOCK);
    /// security.allowed_signers must allow it namespaces="mfa-reset-admin".
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Why, recorded with the command.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// `audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check a batch's record end to end: exit 0 when intact, else list every missing,
    /// altered or forged record and exit 4.
    Verify {
        /// The batch.
        #[arg(long, value_name = "ID")]
        batch: String,
    },
    /// Every record on the outcomes stream as JSON lines, each with its verified flag.
    Export {
        /// Only records written since (RFC 3339 time, or a date: 2026-11-28).
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// `setup`
#[derive(Debug, Args, Default)]
pub struct SetupArgs {
    /// Write a RabbitMQ definitions file (users per role, least-authority permissions) to
    /// FILE and the generated passwords to FILE.passwords (0600), instead of declaring;
    /// import it with `rabbitmqctl import_definitions FILE`.
    #[arg(long, value_name = "FILE")]
    pub definitions: Option<PathBuf>,
}

/// `enqueue`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["csv", "tickets", "group"])))]
pub struct EnqueueArgs {
    /// CSV file with a user column (user, userPrincipalName, upn, id or objectId).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Ticket events, one JSON object per line (`-` = standard input).
    #[arg(long, value_name = "FILE")]
    pub tickets: Option<PathBuf>,
    /// Every user member of this Entra group (object id).
    #[arg(long, value_name = "GROUP_ID")]
    pub group: Option<String>,
    /// With --group: include members of nested groups.
    #[arg(long, requires = "group")]
    pub transitive: bool,
    /// Batch id; default: a readable unique id (e.g. 20261127-2301-csv-users-4f2a).
    #[arg(long, value_name = "ID")]
    pub batch: Option<String>,
    /// Record what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also revoke each user's sign-in sessions.
    #[arg(long)]
    pub revoke_sessions: bool,
    /// After each reset, issue a Temporary Access Pass (lifetime and one-time use from
    /// `[tap]`), encrypted to tap.recipient on the outcome. Signed with the batch.
    #[arg(long)]
    pub tap: bool,
    /// Confirm a batch larger than intake.confirm_above.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Recorded as requested_by (default: intake.requested_by or the OS user).
    #[arg(long, value_name = "WHO")]
    pub requested_by: Option<String>,
    /// Why, recorded with every request that has no reason of its own.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Your SSH key, to sign the batch (namespace mfa-reset-request): a private key file, or
    /// a public key file (`~/.ssh/id_ed25519.pub`) whose private key ssh-agent holds
    /// (SSH_AUTH_SOCK; FIDO2 `sk-` keys sign this way). It must be in security.allowed_signers.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Only validate: read the input in full and print the summary (or every bad line);
    /// enqueue nothing. Needs no key and no broker (a --group still reads Graph).
    #[arg(long)]
    pub check: bool,
}

/// `approve`
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The batch to approve.
    #[arg(long, value_name = "ID")]
    pub batch: String,
    /// Your SSH key (namespace mfa-reset-approve): a private key file, or a public key file
    /// whose private key ssh-agent holds. It must not be the requester's.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Approve without asking (after reviewing the batch).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `keys`
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Directory to write the keys and allowed_signers into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// `work`
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Users in flight (default: worker.concurrency).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Exit 0 once nothing has been in flight or waiting for SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub exit_when_idle: Option<u64>,
}

/// `status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Batch id.
    #[arg(long, value_name = "ID")]
    pub batch: String,
    /// Block until every request of the batch has a final outcome.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up (exit 2) after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// Report formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    /// CSV with the documented columns.
    Csv,
    /// One JSON outcome per line, with every detail.
    Jsonl,
}

/// `report`
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Batch id.
    #[arg(long, value_name = "ID")]
    pub batch: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
    pub format: ReportFormat,
    /// Write here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// What is in the dead-letter queue and why (nothing is removed).
    List {
        /// Only this batch.
        #[arg(long, value_name = "ID")]
        batch: Option<String>,
    },
    /// Put dead-lettered requests back on the requests queue with a fresh attempt count.
    Replay {
        /// Only this batch.
        #[arg(long, value_name = "ID")]
        batch: Option<String>,
        /// Only this error code (e.g. retries_exhausted).
        #[arg(long, value_name = "CODE")]
        error_code: Option<String>,
        /// Replay them; without it, only show what would be replayed.
        #[arg(long, short = 'y')]
        yes: bool,
        /// The admin's SSH private key, or its `.pub` with the key in ssh-agent (SSH_AUTH_SOCK),
        /// to sign each replay (namespace mfa-reset-admin); required with --yes. Workers refuse
        /// a replay without it.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Delete the dead letters of a batch.
    Purge {
        /// The batch.
        #[arg(long, value_name = "ID")]
        batch: String,
    },
}

/// `restore`
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The batch whose removed phone/email methods to re-create.
    #[arg(long, value_name = "ID")]
    pub batch: String,
    /// Only this user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Re-create them; without it, only show what would be re-created.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// The restore key (an age identity file, `AGE-SECRET-KEY-1…`, mode 0600) whose public
    /// key is `reset.backup_recipient`: backed-up values are encrypted to it. Needed with --yes.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The admin's SSH private key, or its `.pub` with the key in ssh-agent (SSH_AUTH_SOCK);
    /// security.allowed_signers must allow it namespaces="mfa-reset-admin". Needed with --yes:
    /// who restores what is signed with it and recorded on the outcomes stream before Graph
    /// is called.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

/// `demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Users in the simulated tenant.
    #[arg(long, default_value_t = 600)]
    pub tenant_users: usize,
    /// CSV to enqueue (default: the shipped examples/demo-users.csv).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Worker tasks (in-process workers).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Simulated Graph latency per request, in milliseconds (real Graph: ~50–300).
    #[arg(long, default_value_t = 120)]
    pub latency_ms: u64,
    /// Where to write the outcome report.
    #[arg(long, default_value = "demo-report.csv")]
    pub out: PathBuf,
}
