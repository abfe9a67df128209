//! `mfa-reset`: parse the command line, load settings, set up logging, run the command.

use clap::Parser;
use mfa_reset::cli::{Cli, Command};
use mfa_reset::commands::{self, audit::Damaged, enqueue::Refused, status::TimedOut};
use mfa_reset::config::Settings;
use mfa_reset::control::Action;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    };
    let mut log = settings.log.clone();
    if std::env::var_os("RUST_LOG").is_none() {
        match cli.command {
            // The demo draws a progress bar and a summary; a log line per user would bury them.
            Command::Demo(_) => log.level = "warn".into(),
            // These turn a channel the broker closed (a queue not set up yet) into a message
            // naming the fix; lapin's own ERROR line about it would only confuse.
            Command::Status(_)
            | Command::Report(_)
            | Command::Dlq { .. }
            | Command::Restore(_)
            | Command::Approve(_)
            | Command::Audit { .. }
            | Command::Halt(_)
            | Command::Resume(_) => log.level = format!("{},lapin::channel=off", log.level),
            _ => {}
        }
    }
    mfa_reset::telemetry::init(&log);
    let result = match &cli.command {
        Command::Setup(args) => commands::setup::run_with(&settings, args).await,
        Command::Enqueue(args) => commands::enqueue::run(&settings, args).await.map(|_| ()),
        Command::Approve(args) => commands::approve::run(&settings, args).await.map(|_| ()),
        Command::Keys(args) => commands::keys::run(args),
        Command::Work(args) => commands::work::run(&settings, args).await,
        Command::Status(args) => commands::status::run(&settings, args).await,
        Command::Report(args) => commands::report::run(&settings, args).await,
        Command::Dlq { command } => commands::dlq::run(&settings, command).await,
        Command::Restore(args) => commands::restore::run(&settings, args).await.map(|_| ()),
        Command::Demo(args) => commands::demo::run(&settings, args).await,
        Command::Serve => commands::serve::run(&settings).await,
        Command::Halt(args) => commands::halt::run(&settings, Action::Halt, args).await,
        Command::Resume(args) => commands::halt::run(&settings, Action::Resume, args).await,
        Command::Audit { command } => commands::audit::run(&settings, command).await,
    };
    if let Err(err) = result {
        let code = if let Some(refused) = err.downcast_ref::<Refused>() {
            refused.exit_code
        } else if err.downcast_ref::<TimedOut>().is_some() {
            commands::status::EXIT_TIMEOUT
        } else if err.downcast_ref::<Damaged>().is_some() {
            commands::audit::EXIT_DAMAGED
        } else {
            1
        };
        eprintln!("error: {err:#}");
        std::process::exit(code);
    }
}
