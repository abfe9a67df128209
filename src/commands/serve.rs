//! `mfa-reset serve`: the web console and the ticket webhook until SIGINT/SIGTERM.

use std::io::Write;

use crate::config::Settings;

/// Run the command. The first line on standard output is `console on http://HOST:PORT`
/// (scripts and tests wait for it; with `console.listen` port 0 it names the port chosen).
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let shutdown = super::shutdown_token();
    let running = crate::console::start(settings.clone(), shutdown).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "console on http://{}", running.addr)?;
        out.flush()?;
    }
    running.task.await?
}
