//! The console in a real browser: headless Chromium, driven over WebDriver (chromedriver) by
//! `fantoccini`, through sign-in at graph-sim's OIDC login form → an upload with bad lines →
//! a good upload → preview → submit → sign-out, and approval by a second person signed in →
//! live progress to done → the report downloaded. Everything the page shows is waited for as a DOM condition with a
//! deadline; nothing sleeps a fixed time to let the page catch up.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them): without a
//! chromedriver the test fails saying so, it never passes by skipping. `CHROMEDRIVER` and
//! `CHROMIUM` override the paths; `CONSOLE_SCREENSHOT=docs/console-progress.png` saves the
//! progress page the README shows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use graph_sim::tenant::GenOptions;
use graph_sim::SimConfig;
use serde_json::json;

use crate::common::console::Serve;
use crate::common::env::TestEnv;
use crate::common::proc;

/// How long any one thing the page should show may take on a loaded 2-core machine.
const PAGE_DEADLINE: Duration = Duration::from_secs(60);

fn tenant(users: usize) -> SimConfig {
    SimConfig {
        users,
        generation: GenOptions {
            methods_min: 1,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    }
}

/// An executable from `var`, else the first of `candidates` that exists.
fn find_program(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// chromedriver on a free port, in its own process group, with a Chromium profile and a
/// download folder of its own. Dropped (also when the test fails half-way), it kills its
/// group and every Chromium process started on its profile.
struct Driver {
    url: String,
    child: tokio::process::Child,
    log: tempfile::NamedTempFile,
    profile: tempfile::TempDir,
    downloads: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let program = find_program(
            "CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        )
        .unwrap_or_else(|| {
            panic!(
                "chromedriver not found (looked at $CHROMEDRIVER, /usr/bin/chromedriver): the \
                 browser test needs Debian's chromium and chromium-driver packages \
                 (`apt-get install chromium chromium-driver`; .ci/run installs them)"
            )
        });
        let port = proc::free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = tokio::process::Command::new(&program)
            .arg(format!("--port={port}"))
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let url = format!("http://127.0.0.1:{port}");
        let driver = Driver {
            url,
            child,
            log,
            profile: tempfile::tempdir().expect("profile"),
            downloads: tempfile::tempdir().expect("downloads"),
        };
        // Ready when its status says so.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::new();
        loop {
            let ready = http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok()
                .map(|r| r.json::<serde_json::Value>());
            if let Some(body) = ready {
                if body.await.ok().is_some_and(|b| b["value"]["ready"] == true) {
                    return driver;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not get ready in 30 s: {}",
                std::fs::read_to_string(driver.log.path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where the browser saves downloads.
    fn downloads(&self) -> &Path {
        self.downloads.path()
    }

    /// A new headless Chromium session on the driver's profile and download folder.
    async fn browser(&self) -> Client {
        let (profile, downloads) = (self.profile.path(), self.downloads.path());
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1100,900",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
            },
        });
        if let Some(binary) = find_program("CHROMIUM", &["/usr/bin/chromium"]) {
            options["binary"] = binary.display().to_string().into();
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), "chrome".into());
        capabilities.insert("goog:chromeOptions".into(), options);
        // chromedriver listens on plain loopback HTTP.
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no Chromium session from chromedriver: {e}\n{}",
                    std::fs::read_to_string(self.log.path()).unwrap_or_default()
                )
            })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The group chromedriver leads.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Chromium may run in a group of its own: its processes carry this driver's profile.
        let profile = format!("--user-data-dir={}", self.profile.path().display());
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == profile.as_bytes())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Wait until the element at `css` exists and its text satisfies `ok`: its text.
async fn wait_text(browser: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + PAGE_DEADLINE;
    let mut last = None;
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                if ok(&text) {
                    return text;
                }
                last = Some(text);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let url = browser.current_url().await.map(|u| u.to_string());
            panic!("{what}: `{css}` not as expected in {PAGE_DEADLINE:?}; last text {last:?} at {url:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the element at `css` is there: the element.
async fn wait_for(browser: &Client, css: &str, what: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(PAGE_DEADLINE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{what}: `{css}` did not appear in {PAGE_DEADLINE:?}: {e}"))
}

/// On graph-sim's login form (already shown): pick `upn`, tick `roles`, sign in.
async fn sign_in_on_form(browser: &Client, upn: &str, roles: &[&str]) {
    let select = wait_for(browser, "select[name=login]", "the provider's login form").await;
    select.select_by_value(upn).await.expect("pick the user");
    for role in roles {
        browser
            .find(Locator::Css(&format!("input[name=role][value={role}]")))
            .await
            .expect("a role checkbox")
            .click()
            .await
            .expect("tick the role");
    }
    browser
        .find(Locator::Css("button[name=decision][value=allow]"))
        .await
        .expect("the sign-in button")
        .click()
        .await
        .expect("sign in");
}

/// Wait until `dir` holds a finished download named `name`: its content.
async fn downloaded(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let deadline = tokio::time::Instant::now() + PAGE_DEADLINE;
    loop {
        let partial = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".crdownload"))
            })
            .unwrap_or(false);
        if path.is_file() && !partial {
            return std::fs::read_to_string(&path).expect("the downloaded report");
        }
        let seen: Vec<String> = std::fs::read_dir(dir)
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not downloaded in {PAGE_DEADLINE:?}; the folder holds {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_uploads_submits_and_downloads_the_report_in_chromium() {
    // Arrange: a tenant, a worker, the console; chromedriver first, so a machine without it
    // fails here with the reason.
    let driver = Driver::start().await;
    let mut env = TestEnv::new("browser", tenant(12)).await;
    // Four users are above the two-person threshold: the batch waits for an approver.
    env.settings.security.approval_above = 3;
    env.setup().await;
    env.start_worker(4);
    let serve = Serve::start(&env, &[]).await;
    let browser = driver.browser().await;
    let operator = graph_sim::tenant::upn_for_index(10);
    let approver = graph_sim::tenant::upn_for_index(11);
    let users: Vec<String> = (0..4).map(graph_sim::tenant::upn_for_index).collect();
    let files = tempfile::tempdir().expect("files");

    // Sign in: the upload page sends an anonymous visitor to the provider's form and back.
    browser
        .goto(&format!("{}/batches/new", serve.url))
        .await
        .expect("open the console");
    sign_in_on_form(&browser, &operator, &["operator"]).await;
    let file_input = wait_for(&browser, "#file", "back on the upload page, signed in").await;

    // A file with bad lines: every one is named, markup shown as text, nothing submittable.
    let bad = files.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!("user\n{}\nbob@\n<script>alert(1)</script>\n", users[0]),
    )
    .expect("bad.csv");
    file_input
        .send_keys(&bad.display().to_string())
        .await
        .expect("choose bad.csv");
    browser
        .find(Locator::Css("#upload button[type=submit]"))
        .await
        .expect("the check button")
        .click()
        .await
        .expect("check bad.csv");
    wait_text(&browser, "#preview", "the bad lines", |t| {
        t.contains("invalid rows")
    })
    .await;
    let mut lines = Vec::new();
    for row in browser
        .find_all(Locator::Css("#preview tr"))
        .await
        .expect("rows")
        .iter()
        .skip(1)
    {
        lines.push(row.text().await.expect("row text"));
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("3 ") && lines[0].contains("bob@"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("4 ") && lines[1].contains("<script>alert(1)</script>"),
        "the markup is shown as text: {lines:?}"
    );
    assert!(
        browser.get_alert_text().await.is_err(),
        "no script from the file ran"
    );
    assert!(
        browser
            .find_all(Locator::Css("#preview button"))
            .await
            .expect("buttons")
            .is_empty(),
        "nothing to submit"
    );

    // A good file: the preview, then submit.
    let good = files.path().join("good.csv");
    std::fs::write(&good, format!("user\n{}\n", users.join("\n"))).expect("good.csv");
    file_input
        .send_keys(&good.display().to_string())
        .await
        .expect("choose good.csv");
    browser
        .find(Locator::Css("#upload button[type=submit]"))
        .await
        .expect("the check button")
        .click()
        .await
        .expect("check good.csv");
    let preview = wait_text(&browser, "#preview", "the preview", |t| {
        t.contains("Submit 4 users")
    })
    .await;
    assert!(preview.contains("4 users"), "{preview}");
    assert!(preview.contains(&users[0]), "the sample: {preview}");
    assert!(
        preview.contains("waits for a second person's approval"),
        "{preview}"
    );
    browser
        .find(Locator::Css("#preview button"))
        .await
        .expect("the submit button")
        .click()
        .await
        .expect("submit");
    let batch = wait_text(&browser, "#batch", "the batch page after submit", |t| {
        !t.is_empty()
    })
    .await;

    // Nothing runs before a second person approves; the operator has no approve button.
    assert_eq!(
        wait_text(&browser, "#finished", "the batch page", |_| true).await,
        "0"
    );
    assert!(
        browser
            .find_all(Locator::Css("#approve"))
            .await
            .expect("buttons")
            .is_empty(),
        "no approve button on one's own batch"
    );
    assert!(
        env.sim.user(&users[0]).expect("user").methods.len() > 1,
        "nothing ran while the batch waited"
    );

    // The operator signs out; an approver signs in straight to the batch and approves it.
    browser.goto(&serve.url).await.expect("home");
    wait_for(
        &browser,
        "form[action='/logout'] button",
        "the sign-out button",
    )
    .await
    .click()
    .await
    .expect("sign out");
    wait_text(&browser, "body", "signed out", |t| t.contains("Sign in")).await;
    browser
        .goto(&format!("{}/batches/{batch}", serve.url))
        .await
        .expect("open the batch");
    sign_in_on_form(&browser, &approver, &["approver"]).await;
    wait_for(
        &browser,
        "#approve",
        "the approve button for another approver",
    )
    .await
    .click()
    .await
    .expect("approve");
    let approved = wait_text(&browser, "#approved", "the approval", |t| !t.is_empty()).await;
    assert_eq!(approved, format!("approved by {approver}"));

    // Live progress to done, without reloading the page.
    wait_text(&browser, "#finished", "progress to done", |t| t == "4").await;
    let counts = wait_text(&browser, "#counts", "the counts", |t| {
        t.contains("\"reset\": 4")
    })
    .await;
    assert!(counts.contains("\"reset\": 4"), "{counts}");
    let progress = browser
        .execute(
            "const p = document.getElementById('progress'); return [p.value, p.max];",
            vec![],
        )
        .await
        .expect("the progress bar");
    assert_eq!(progress, json!([4, 4]), "the progress bar is full");
    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    if let Some(path) = std::env::var_os("CONSOLE_SCREENSHOT") {
        std::fs::write(&path, &png).expect("save the screenshot");
    }

    // The report, downloaded through the page's link with the browser's session.
    browser
        .find(Locator::Css("#report-csv"))
        .await
        .expect("the CSV report link")
        .click()
        .await
        .expect("download the report");
    let report = downloaded(driver.downloads(), &format!("mfa-reset-{batch}.csv")).await;
    let mut reader = csv::Reader::from_reader(report.as_bytes());
    assert_eq!(
        reader.headers().expect("header").iter().collect::<Vec<_>>(),
        mfa_reset::commands::report::CSV_COLUMNS.to_vec()
    );
    let mut reported: Vec<String> = reader
        .records()
        .map(|r| {
            let r = r.expect("row");
            assert_eq!(&r[1], "reset", "{report}");
            r[0].to_string()
        })
        .collect();
    reported.sort();
    let mut expected = users.clone();
    expected.sort();
    assert_eq!(reported, expected, "{report}");

    browser.close().await.expect("close the browser");
    drop(driver);
    serve.stop().await;
    env.cleanup().await;
}

/// The upload benchmark (`scripts/upload_bench.sh`, BENCHMARKS.md "Console upload"): a
/// 100,000-row CSV picked in the upload page → the validation result on screen, timed in
/// Chromium, with the page showing progress while it runs. Prints the figures; asserts only
/// that the result and the progress were shown (throughput is measured, not tested).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/upload_bench.sh runs it"]
async fn upload_bench_100000_rows_to_the_validation_result_on_screen() {
    let rows: usize = std::env::var("UPLOAD_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runs: usize = std::env::var("UPLOAD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let driver = Driver::start().await;
    // Protected users (break-glass accounts) in reset.protected_users, all in the file.
    let protected: usize = std::env::var("UPLOAD_BENCH_PROTECTED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let env = TestEnv::new("upload-bench", tenant(12)).await;
    env.setup().await;
    let list: Vec<String> = (0..protected)
        .map(|i| graph_sim::tenant::upn_for_index(rows - 1 - i))
        .collect();
    let serve = Serve::start(
        &env,
        &[(
            "MFA_RESET__RESET__PROTECTED_USERS",
            format!("[{}]", list.join(",")),
        )],
    )
    .await;
    let browser = driver.browser().await;
    let files = tempfile::tempdir().expect("files");
    let csv = files.path().join("users.csv");
    std::fs::write(&csv, crate::common::env::csv_of_generated(rows)).expect("users.csv");
    let size = std::fs::metadata(&csv).expect("size").len();

    browser
        .goto(&format!("{}/batches/new", serve.url))
        .await
        .expect("open the console");
    sign_in_on_form(
        &browser,
        &graph_sim::tenant::upn_for_index(10),
        &["operator"],
    )
    .await;
    wait_for(&browser, "#file", "the upload page, signed in").await;
    let expected = format!("Submit {rows} users");
    let mut totals = Vec::new();
    for run in 1..=runs {
        // A fresh page each run: the file input holds one file.
        browser
            .goto(&format!("{}/batches/new", serve.url))
            .await
            .expect("reload");
        let file_input = wait_for(&browser, "#file", "the upload page").await;
        file_input
            .send_keys(&csv.display().to_string())
            .await
            .expect("choose the file");
        let button = browser
            .find(Locator::Css("#upload button[type=submit]"))
            .await
            .expect("the check button");
        let started = std::time::Instant::now();
        button.click().await.expect("check the file");
        // Progress first, then the result; polled tightly so the figure is the page's.
        let mut progress = Vec::new();
        let deadline = started + PAGE_DEADLINE;
        let text = loop {
            let text = browser
                .find(Locator::Css("#preview"))
                .await
                .expect("#preview")
                .text()
                .await
                .unwrap_or_default();
            if text.contains(&expected) {
                break text;
            }
            if !text.is_empty() && progress.last() != Some(&text) {
                progress.push(text);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no validation result in {PAGE_DEADLINE:?}: {progress:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let total = started.elapsed();
        let server_ms = text
            .split("checked in ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("?")
            .to_string();
        println!(
            "upload-bench run {run}: {rows} rows ({size} bytes, {protected} protected): result \
             on screen in {} ms (server validation {server_ms} ms); progress shown: {progress:?}",
            total.as_millis()
        );
        if protected > 0 {
            assert!(
                text.contains(&format!("{protected} protected users will be skipped")),
                "{text}"
            );
        }
        assert!(!progress.is_empty(), "progress was shown while it ran");
        totals.push(total.as_millis());
    }
    totals.sort();
    println!(
        "upload-bench: {rows} rows, {protected} protected, {runs} runs: median {} ms, min {} ms, max {} ms",
        totals[totals.len() / 2],
        totals[0],
        totals[totals.len() - 1]
    );
    browser.close().await.expect("close");
    drop(driver);
    serve.stop().await;
    env.cleanup().await;
}
