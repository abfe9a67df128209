//! Running `mfa-reset serve` as a child process and signing in to it through graph-sim's
//! OIDC login form, with a plain HTTP client that keeps cookies (no JavaScript): for the
//! report-download and browser tests.

use std::time::Duration;

use graph_sim::SimConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use super::env::TestEnv;
use super::proc;

/// A running `mfa-reset serve` child.
pub struct Serve {
    /// `http://127.0.0.1:PORT`, from its first line.
    pub url: String,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Serve {
    /// Start `serve` for `env` with the simulator's OIDC provider, the requester's key as
    /// `console.key`, the approver's as `console.approve_key`, and `extra` environment.
    /// `MFA_RESET_BIN` runs another build of the binary (the upload benchmark runs the
    /// release build).
    pub async fn start(env: &TestEnv, extra: &[(&str, String)]) -> Serve {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut command = proc::mfa_reset(&env.settings, &["serve"]);
        if let Some(bin) = std::env::var_os("MFA_RESET_BIN") {
            let std = command.as_std();
            let mut other = tokio::process::Command::new(bin);
            other
                .args(std.get_args())
                .envs(
                    std.get_envs()
                        .filter_map(|(k, v)| v.map(|v| (k.to_os_string(), v.to_os_string()))),
                )
                .env_remove("RUST_LOG")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true);
            command = other;
        }
        let mut child = command
            .envs(oidc_env(env))
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .env("MFA_RESET__CONSOLE__LISTEN", "127.0.0.1:0")
            .env("MFA_RESET__CONSOLE__KEY", &env.keys.requester.path)
            .env("MFA_RESET__CONSOLE__APPROVE_KEY", &env.keys.approver.path)
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("mfa-reset serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("serve prints its first line within 60 s")
            .expect("stdout readable")
            .unwrap_or_else(|| {
                panic!(
                    "serve exited: {}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                )
            });
        let url = first
            .strip_prefix("console on ")
            .unwrap_or_else(|| panic!("first line is `console on URL`, got {first:?}"))
            .to_string();
        Serve { url, child, log }
    }

    /// What the console logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGTERM, and it exits 0.
    pub async fn stop(mut self) {
        proc::signal(&self.child, nix::sys::signal::Signal::SIGTERM);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("serve stops on SIGTERM")
            .expect("wait");
        assert!(status.success(), "serve exits 0 on SIGTERM: {status:?}");
    }
}

/// The console's OIDC settings: graph-sim's provider for the test tenant.
pub fn oidc_env(env: &TestEnv) -> Vec<(&'static str, String)> {
    vec![
        (
            "MFA_RESET__CONSOLE__OIDC_ISSUER",
            format!("{}/{}/v2.0", env.sim.url(), SimConfig::default().tenant_id),
        ),
        (
            "MFA_RESET__CONSOLE__OIDC_CLIENT_ID",
            "console-app-id".into(),
        ),
    ]
}

/// A browser without JavaScript: follows no redirect by itself, keeps its cookies.
pub struct Client {
    /// The HTTP client.
    pub http: reqwest::Client,
    /// Its cookies, by name.
    pub cookies: std::collections::BTreeMap<String, String>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// A client with no cookies.
    pub fn new() -> Client {
        Client {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: Default::default(),
        }
    }

    /// The `Cookie` header.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Keep the response's cookies; return their raw Set-Cookie lines.
    pub fn take_cookies(&mut self, response: &reqwest::Response) -> Vec<String> {
        let mut lines = Vec::new();
        for value in response.headers().get_all("set-cookie") {
            let line = value.to_str().expect("ascii cookie").to_string();
            let pair = line.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').expect("name=value");
            if value.is_empty() || line.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
            lines.push(line);
        }
        lines
    }

    /// GET with the cookies.
    pub async fn get(&mut self, url: &str) -> reqwest::Response {
        let response = self
            .http
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .expect("GET");
        self.take_cookies(&response);
        response
    }

    /// POST a form with the cookies.
    pub async fn post_form(&mut self, url: &str, form: &[(String, String)]) -> reqwest::Response {
        let response = self
            .http
            .post(url)
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .expect("POST");
        self.take_cookies(&response);
        response
    }

    /// POST `body` as CSV with the CSRF header.
    pub async fn post_csv(&mut self, url: &str, csrf: &str, body: &str) -> reqwest::Response {
        let response = self
            .http
            .post(url)
            .header("cookie", self.cookie_header())
            .header("x-csrf-token", csrf)
            .header("content-type", "text/csv")
            .body(body.to_string())
            .send()
            .await
            .expect("POST");
        self.take_cookies(&response);
        response
    }
}

/// The `Location` of a redirect.
pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("a redirect, got {}", response.status()))
        .to_str()
        .expect("ascii location")
        .to_string()
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The hidden inputs and the action of the simulator's login form.
pub fn login_form(html: &str) -> (String, Vec<(String, String)>) {
    let action = html
        .split("<form method=\"post\" action=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a login form")
        .to_string();
    let hidden = html
        .split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|rest| {
            let (name, rest) = rest.split_once('"').expect("name");
            let value = rest
                .split_once("value=\"")
                .and_then(|(_, v)| v.split_once('"'))
                .map(|(v, _)| v)
                .expect("value");
            (unescape(name), unescape(value))
        })
        .collect();
    (action, hidden)
}

/// Sign `client` in at `console` as `upn` with `roles`, through the provider's login form
/// (checking on the way that the authorization request carries PKCE, a nonce and a state,
/// and that the provider sends the code back to the console's callback).
pub async fn sign_in(client: &mut Client, console: &str, sim: &str, upn: &str, roles: &[&str]) {
    let to_provider = client.get(&format!("{console}/login")).await;
    assert_eq!(to_provider.status().as_u16(), 303);
    let authorize = location(&to_provider);
    assert!(authorize.starts_with(sim), "{authorize}");
    for must in [
        "code_challenge_method=S256",
        "code_challenge=",
        "nonce=",
        "state=",
    ] {
        assert!(authorize.contains(must), "{must} in {authorize}");
    }
    let form = client.get(&authorize).await;
    assert_eq!(form.status().as_u16(), 200);
    let html = form.text().await.expect("form");
    assert!(html.contains(upn), "the form lists the tenant's users");
    let (action, mut fields) = login_form(&html);
    fields.push(("login".into(), upn.into()));
    for role in roles {
        fields.push(("role".into(), role.to_string()));
    }
    fields.push(("decision".into(), "allow".into()));
    let back = client.post_form(&format!("{sim}{action}"), &fields).await;
    assert_eq!(back.status().as_u16(), 302);
    let callback = location(&back);
    assert!(
        callback.starts_with(&format!("{console}/auth/callback?code=")),
        "{callback}"
    );
    let signed_in = client.get(&callback).await;
    assert_eq!(
        signed_in.status().as_u16(),
        303,
        "{}",
        signed_in.text().await.unwrap_or_default()
    );
}

/// The CSRF token of a page.
pub fn csrf_of(html: &str) -> String {
    html.split("data-csrf=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf token on the page")
        .to_string()
}
