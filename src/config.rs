//! Typed settings, loaded in layers: built-in defaults → one settings file (`--config FILE`,
//! else `MFA_RESET_CONFIG`, else `/etc/mfa-reset/config.toml` when present; see [`source`])
//! → environment variables `MFA_RESET__<SECTION>__<KEY>`.
//!
//! Every key is documented in the repository's `config/default.toml`, the reference (it is
//! not read unless named). Secrets are [`SecretString`]s: they print as `[REDACTED]` in
//! `Debug` and are never serialised back out; the broker URL's password is hidden only where
//! it is shown (`Debug`, [`redact_url`]), never in the value the settings hold.
//!
//! Why one file of this size: it is the typed mirror of `config/default.toml`, one struct per
//! section in the same order, so a key is added, defaulted and documented side by side; most
//! of its lines are those defaults and the doc comment of every key.

pub mod source;

use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// All settings of one process.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the broker is and how names are prefixed.
    pub broker: BrokerSettings,
    /// Which Graph to talk to and how to sign in.
    pub graph: GraphSettings,
    /// How fast and how persistently to call Graph.
    pub rate: RateSettings,
    /// Retry policy: in-process retries and broker delay tiers.
    pub retry: RetrySettings,
    /// Worker process settings.
    pub worker: WorkerSettings,
    /// What a reset does, and whom it never touches.
    pub reset: ResetSettings,
    /// Intake (enqueue) safety rails.
    pub intake: IntakeSettings,
    /// Who may request, approve, execute and stop resets: signatures and caps.
    pub security: SecuritySettings,
    /// The web console and ticket API (`mfa-reset serve`).
    pub console: ConsoleSettings,
    /// Ticket systems allowed to call the webhook, and their secrets.
    pub webhook: WebhookSettings,
    /// The Temporary Access Pass issued after a reset, on request.
    pub tap: TapSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[broker]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// AMQP URL of the RabbitMQ broker (its password is hidden in `Debug`).
    pub url: String,
    /// AMQP URLs of every node of a RabbitMQ cluster; when set, they replace `url`. A
    /// process connects to one of them and fails over to the next when it is unreachable or
    /// drops the connection. A list, or one string of comma-separated URLs (for
    /// `MFA_RESET__BROKER__URLS`).
    #[serde(deserialize_with = "url_list::deserialize")]
    pub urls: Vec<String>,
    /// Every exchange and queue name starts with this prefix.
    pub prefix: String,
    /// Deliveries a worker may hold unacknowledged; 0 = derive from `worker.concurrency`.
    pub prefetch: u16,
    /// Publisher confirms kept in flight by `enqueue`.
    pub confirm_window: usize,
    /// Redeliveries before the broker dead-letters a message that keeps failing (quorum `x-delivery-limit`).
    pub delivery_limit: u32,
    /// How long a process keeps trying to (re)connect before giving up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Size cap of the outcomes stream in bytes (`x-max-length-bytes`): the oldest segments
    /// are dropped beyond it, as beyond a year (`x-max-age`). 0 = no cap. Changing it on an
    /// existing deployment needs a new prefix (the broker refuses other arguments).
    pub stream_max_bytes: u64,
    /// Accept plaintext `amqp://` to a host other than this machine (refused by default:
    /// use `amqps://`).
    pub allow_plaintext: bool,
    /// With `amqps://`: PEM file of the CA(s) that signed the broker's certificate; empty =
    /// the system's trusted roots.
    pub ca_file: String,
    /// With `amqps://`: PEM client certificate for certificate login (RabbitMQ
    /// `rabbitmq_auth_mechanism_ssl`, or mutual TLS with a password); needs `client_key_file`.
    pub client_cert_file: String,
    /// With `amqps://`: the PKCS#8 PEM private key of `client_cert_file`.
    pub client_key_file: String,
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &redact_url(&self.url))
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("prefix", &self.prefix)
            .field("prefetch", &self.prefetch)
            .field("confirm_window", &self.confirm_window)
            .field("delivery_limit", &self.delivery_limit)
            .field("connect_timeout", &self.connect_timeout)
            .field("stream_max_bytes", &self.stream_max_bytes)
            .field("allow_plaintext", &self.allow_plaintext)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .finish()
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            urls: Vec::new(),
            prefix: "mfa-reset".into(),
            prefetch: 0,
            confirm_window: 2000,
            delivery_limit: 5,
            connect_timeout: Duration::from_secs(120),
            stream_max_bytes: 50_000_000_000,
            allow_plaintext: false,
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
        }
    }
}

impl BrokerSettings {
    /// The broker addresses to try, in order: `urls` when set, else `url`.
    pub fn addresses(&self) -> Vec<&str> {
        let urls: Vec<&str> = self
            .urls
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            vec![self.url.as_str()]
        } else {
            urls
        }
    }

    /// The addresses as shown in messages: passwords hidden, comma-separated.
    pub fn shown_addresses(&self) -> String {
        self.addresses()
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `broker.urls`: a list of URLs, or one string of comma-separated URLs (what an
/// environment variable holds).
mod url_list {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<String>),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let list = match Given::deserialize(d)? {
            Given::List(list) => list,
            Given::Text(text) => text.split(',').map(str::to_string).collect(),
        };
        Ok(list
            .into_iter()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect())
    }
}

/// A national cloud: picks the authority and Graph root together.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    /// Worldwide: login.microsoftonline.com + graph.microsoft.com.
    #[default]
    Global,
    /// US Government L4: login.microsoftonline.us + graph.microsoft.us.
    Usgov,
    /// US Government L5 (DoD): login.microsoftonline.us + dod-graph.microsoft.us.
    UsgovDod,
    /// Operated by 21Vianet: login.chinacloudapi.cn + microsoftgraph.chinacloudapi.cn.
    China,
}

impl Cloud {
    /// (authority, graph root) of this cloud.
    pub fn endpoints(self) -> (&'static str, &'static str) {
        match self {
            Cloud::Global => (
                "https://login.microsoftonline.com",
                "https://graph.microsoft.com",
            ),
            Cloud::Usgov => (
                "https://login.microsoftonline.us",
                "https://graph.microsoft.us",
            ),
            Cloud::UsgovDod => (
                "https://login.microsoftonline.us",
                "https://dod-graph.microsoft.us",
            ),
            Cloud::China => (
                "https://login.chinacloudapi.cn",
                "https://microsoftgraph.chinacloudapi.cn",
            ),
        }
    }
}

/// `[graph]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphSettings {
    /// National cloud; sets `authority` and `base_url` unless those are given explicitly.
    pub cloud: Cloud,
    /// Graph v1.0 root, e.g. `https://graph.microsoft.com/v1.0`. Empty = from `cloud`.
    pub base_url: String,
    /// Graph beta root. Empty = `base_url` with `/v1.0` replaced by `/beta`.
    pub beta_url: String,
    /// Token authority; the token URL is `{authority}/{tenant_id}/oauth2/v2.0/token`. Empty = from `cloud`.
    pub authority: String,
    /// Scope requested with the token. Empty = `{graph root}/.default`.
    pub scope: String,
    /// Directory (tenant) id.
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    /// Client secret. Never logged, never printed.
    #[serde(skip_serializing)]
    pub client_secret: Option<SecretString>,
    /// PEM certificate for certificate login (instead of a secret).
    pub client_certificate: Option<String>,
    /// PEM private key (PKCS#8 or PKCS#1 RSA) matching `client_certificate`: a file path or
    /// the PEM text. A secret: `[REDACTED]` in `Debug`, never serialised, never in an error.
    #[serde(skip_serializing)]
    pub client_private_key: Option<SecretString>,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Renew a cached token this long before it expires.
    #[serde(with = "humantime_serde")]
    pub token_renew_before: Duration,
    /// List methods from the beta root instead of v1.0. Off (the default): v1.0, which lists
    /// every type but hardware OATH tokens; those are read from beta's own collection only
    /// when `reset.methods` removes them. Microsoft does not support beta in production.
    pub list_methods_from_beta: bool,
    /// `$top` of paged listings such as group members (Graph allows 1..=999).
    pub page_size: u32,
    /// Accept `http://` Graph and token URLs on hosts other than loopback. Only for the
    /// simulator in another container (docker-compose.yml); never against the real Graph.
    pub allow_insecure_http: bool,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            cloud: Cloud::Global,
            base_url: String::new(),
            beta_url: String::new(),
            authority: String::new(),
            scope: String::new(),
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret: None,
            client_certificate: None,
            client_private_key: None,
            request_timeout: Duration::from_secs(65),
            token_renew_before: Duration::from_secs(300),
            list_methods_from_beta: false,
            page_size: 999,
            allow_insecure_http: false,
        }
    }
}

impl GraphSettings {
    /// The v1.0 root, from `base_url` or the cloud.
    pub fn v1_url(&self) -> String {
        if self.base_url.is_empty() {
            format!("{}/v1.0", self.cloud.endpoints().1)
        } else {
            self.base_url.trim_end_matches('/').to_string()
        }
    }
    /// The beta root, from `beta_url` or derived from the v1.0 root.
    pub fn beta_url(&self) -> String {
        if !self.beta_url.is_empty() {
            return self.beta_url.trim_end_matches('/').to_string();
        }
        let v1 = self.v1_url();
        match v1.strip_suffix("/v1.0") {
            Some(root) => format!("{root}/beta"),
            None => v1,
        }
    }
    /// The authority, from `authority` or the cloud.
    pub fn authority_url(&self) -> String {
        if self.authority.is_empty() {
            self.cloud.endpoints().0.to_string()
        } else {
            self.authority.trim_end_matches('/').to_string()
        }
    }
    /// `{authority}/{tenant_id}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority_url(),
            self.tenant_id
        )
    }
    /// The `.default` scope of the Graph root in use.
    pub fn scope(&self) -> String {
        if !self.scope.is_empty() {
            return self.scope.clone();
        }
        let v1 = self.v1_url();
        let root = v1.strip_suffix("/v1.0").unwrap_or(&v1);
        // The simulator and the real Graph both accept the root of the API they serve.
        let root = if root.starts_with("http://127.") || root.starts_with("http://localhost") {
            self.cloud.endpoints().1
        } else {
            root
        };
        format!("{root}/.default")
    }
}

/// `[rate]`: our own budget, mirroring Graph's published buckets for identity and access
/// (<https://learn.microsoft.com/graph/throttling-limits#identity-and-access-service-limits>).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateSettings {
    /// Requests of any kind allowed per `requests_period`.
    pub requests: u32,
    /// Period of the all-requests bucket.
    #[serde(with = "humantime_serde")]
    pub requests_period: Duration,
    /// Writes (DELETE/POST/PATCH) allowed per `writes_period`.
    pub writes: u32,
    /// Period of the writes bucket.
    #[serde(with = "humantime_serde")]
    pub writes_period: Duration,
    /// Worker processes sharing this app+tenant budget; each takes 1/N of it. 0 (the default)
    /// = count the live workers through the broker (heartbeats on `{prefix}.fleet`).
    pub processes: u32,
    /// Burst allowed at full budget, as a fraction of each bucket (Graph's buckets start
    /// full). Kept below `slow_down_at_percent` so our own burst never makes Graph warn.
    pub burst_fraction: f64,
    /// Slow down when Graph reports `x-ms-throttle-limit-percentage` at or above this.
    pub slow_down_at_percent: f64,
}

impl Default for RateSettings {
    fn default() -> Self {
        Self {
            requests: 3500,
            requests_period: Duration::from_secs(10),
            writes: 3000,
            writes_period: Duration::from_secs(150),
            processes: 0,
            burst_fraction: 0.5,
            slow_down_at_percent: 80.0,
        }
    }
}

/// `[retry]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts of one Graph call in process (the first try included) before the error is
    /// handed to the caller, which moves the request to a broker delay tier.
    pub max_attempts: u32,
    /// First backoff delay when Graph gives no Retry-After.
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    /// Longest single backoff delay.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Total time one request may spend retrying in process (well below the broker's 30 min ack timeout).
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
    /// Broker delay tiers, in order; after the last one the request is dead-lettered.
    #[serde(with = "duration_list")]
    pub tiers: Vec<Duration>,
    /// Longest pause a Retry-After from Graph may impose on the process (a longer one is
    /// capped, and logged).
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_secs(3),
            max_delay: Duration::from_secs(180),
            max_elapsed: Duration::from_secs(300),
            tiers: vec![
                Duration::from_secs(30),
                Duration::from_secs(300),
                Duration::from_secs(1800),
            ],
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Users in flight per worker process.
    pub concurrency: usize,
    /// How long SIGTERM waits for in-flight users before giving up on them (they are redelivered).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Address of `/metrics` and `/healthz`; empty = not served.
    pub metrics_addr: String,
    /// Name of this worker in outcomes; empty = hostname-pid.
    pub name: String,
    /// Most request ids the idempotency ledger keeps in memory (oldest forgotten first).
    pub ledger_capacity: usize,
    /// Path of this worker's SSH private key: it signs every record the worker writes
    /// (namespace `mfa-reset-worker`).
    pub key: String,
    /// While halted (Graph refuses the app itself), how often to ask for a token again.
    #[serde(with = "humantime_serde")]
    pub halt_retry_every: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 32,
            shutdown_grace: Duration::from_secs(60),
            metrics_addr: String::new(),
            name: String::new(),
            ledger_capacity: crate::worker::ledger::DEFAULT_CAPACITY,
            key: String::new(),
            halt_retry_every: Duration::from_secs(60),
        }
    }
}

/// Which method types a reset removes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum MethodSelection {
    /// `"all"` (every removable type) or `"portal"` (what the portal's "Require re-register MFA" removes).
    Preset(String),
    /// Explicit list of type stems, e.g. `["phone", "microsoftAuthenticator"]`.
    List(Vec<String>),
}

impl Default for MethodSelection {
    fn default() -> Self {
        MethodSelection::Preset("all".into())
    }
}

/// `[reset]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResetSettings {
    /// Method types to remove: `"all"`, `"portal"`, or a list of stems.
    pub methods: MethodSelection,
    /// Keep full phone numbers and email addresses in outcomes so `restore` can re-create them,
    /// encrypted to `backup_recipient` (never in clear).
    pub backup: bool,
    /// The restore key's age X25519 recipient (`age1…`) backups are encrypted to; required
    /// with `backup = true`. Only its identity (kept away from the workers) opens them.
    pub backup_recipient: String,
    /// Users never touched (UPNs or object ids), e.g. break-glass accounts.
    pub protected_users: Vec<String>,
    /// Skip users holding any directory role.
    pub skip_admins: bool,
    /// Requests older than this are not executed (`expired`).
    #[serde(with = "humantime_serde")]
    pub max_request_age: Duration,
    /// After deleting, re-list at most this long while Graph still shows deleted methods.
    #[serde(with = "humantime_serde")]
    pub consistency_wait: Duration,
}

impl Default for ResetSettings {
    fn default() -> Self {
        Self {
            methods: MethodSelection::default(),
            backup: false,
            backup_recipient: String::new(),
            protected_users: Vec::new(),
            skip_admins: true,
            max_request_age: Duration::from_secs(24 * 3600),
            consistency_wait: Duration::from_secs(10),
        }
    }
}

/// `[intake]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeSettings {
    /// `enqueue` refuses more users than this without `--yes`.
    pub confirm_above: usize,
    /// Who is recorded as `requested_by` when the input does not say; empty = the OS user.
    pub requested_by: String,
    /// The operator's SSH key `enqueue` signs batches with when `--key` is not given: a
    /// private key file, or a public key file whose private key ssh-agent holds. Empty = none.
    pub key: String,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            confirm_above: 500,
            requested_by: String::new(),
            key: String::new(),
        }
    }
}

/// `[security]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// Path of the OpenSSH `allowed_signers` file: which SSH key may sign as whom, and for which
    /// namespaces (`mfa-reset-request`, `mfa-reset-approve`, `mfa-reset-worker`, `mfa-reset-admin`).
    pub allowed_signers: String,
    /// A batch of more users than this is executed only once a second, different person has
    /// approved it (`mfa-reset approve`).
    pub approval_above: u64,
    /// Most resets executed per hour across all workers; at the cap workers stop taking
    /// requests until the hour frees up (nothing is lost). 0 = no cap.
    pub max_resets_per_hour: u64,
    /// Compact batches (signed manifest and Merkle cap, at most 128 KiB each) a worker keeps
    /// verified in memory; past it the least recently used is forgotten and looked up on the
    /// outcomes stream again if a request of it comes.
    pub known_batches: usize,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            allowed_signers: String::new(),
            approval_above: 25,
            max_resets_per_hour: 10_000,
            known_batches: crate::worker::verify::KNOWN_CAPACITY,
        }
    }
}

/// `[console]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Address `mfa-reset serve` listens on, `HOST:PORT` (port 0 = any free port).
    pub listen: String,
    /// The console's own SSH private key: it signs the batches it creates (ticket webhooks,
    /// uploads) in the `mfa-reset-request` namespace, so its principal must be in
    /// `security.allowed_signers` with that namespace.
    pub key: String,
    /// The console's address as browsers reach it (`https://mfa.example.com`), used for the
    /// sign-in redirect URI `{public_url}/auth/callback`. Empty = `http://` + the listen address.
    pub public_url: String,
    /// OpenID Connect issuer: `https://login.microsoftonline.com/{tenant id}/v2.0` for Entra ID.
    /// Empty = sign-in off (the ticket API still works).
    pub oidc_issuer: String,
    /// Application (client) id of the console's app registration.
    pub oidc_client_id: String,
    /// Client secret of that registration, if it has one (environment only).
    #[serde(skip_serializing)]
    pub oidc_client_secret: Option<SecretString>,
    /// How long a sign-in lasts.
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// Largest CSV upload accepted, in bytes.
    pub max_upload: usize,
    /// The SSH key the console signs approvals with (namespace `mfa-reset-approve`), for a
    /// signed-in approver who is not the batch's operator. Its principal must differ from
    /// `console.key`'s. Empty = approvals only with `mfa-reset approve`.
    pub approve_key: String,
    /// An admin's SSH key (namespace `mfa-reset-admin`) the console signs dead-letter replays
    /// with, once a replay an operator asked for is approved by a different signed-in
    /// approver. Empty = the console lists dead letters and records replay requests, and the
    /// replay itself is run with `mfa-reset dlq replay --yes --key FILE`.
    pub admin_key: String,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            key: String::new(),
            public_url: String::new(),
            oidc_issuer: String::new(),
            oidc_client_id: String::new(),
            oidc_client_secret: None,
            session_lifetime: Duration::from_secs(8 * 3600),
            max_upload: 64 * 1024 * 1024,
            approve_key: String::new(),
            admin_key: String::new(),
        }
    }
}

/// `[webhook]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Source system name → its Standard Webhooks secret (`whsec_` + base64). Never logged,
    /// never printed; set as `MFA_RESET__WEBHOOK__SECRETS__SERVICENOW=whsec_…` (names are
    /// lower-cased).
    #[serde(skip_serializing)]
    pub secrets: std::collections::BTreeMap<String, SecretString>,
    /// Largest webhook body accepted, in bytes.
    pub max_body: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secrets: Default::default(),
            max_body: 16 * 1024,
        }
    }
}

/// `[tap]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TapSettings {
    /// Lifetime of a pass issued for `enqueue --tap` or a ticket with `"tap": true`: whole
    /// minutes from 10 minutes to 30 days (Graph's `lifetimeInMinutes`); the tenant's TAP
    /// policy may allow less, and Graph then refuses the pass (reported, not failing the reset).
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    /// The pass works for one sign-in only (`isUsableOnce`).
    pub usable_once: bool,
    /// The helpdesk's age public key (`age1…`, X25519). Workers encrypt every pass to it;
    /// empty = passes are not issued (a request asking for one reports `tap_no_recipient`).
    pub recipient: String,
    /// Path of the matching age identity file (`AGE-SECRET-KEY-1…`), for the console to
    /// show a pass once to an operator. Empty = the console cannot show passes.
    pub identity: String,
}

impl Default for TapSettings {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(3600),
            usable_once: true,
            recipient: String::new(),
            identity: String::new(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: String,
    /// tracing filter, e.g. `info` or `mfa_reset=debug`; `RUST_LOG` overrides.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// An AMQP/HTTP URL with its password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Settings {
    /// Load the layers: built-in defaults, the settings file [`source::choose`] picks
    /// (`config_file` is `--config`), then the environment. A file someone else could
    /// change is refused ([`source::ensure_trusted`]).
    pub fn load(config_file: Option<&Path>) -> anyhow::Result<Settings> {
        let file = source::choose(
            config_file,
            std::env::var_os(source::FILE_VARIABLE),
            Path::new(source::SYSTEM_FILE),
        )?;
        if let Some(file) = &file {
            source::ensure_trusted(file)?;
        }
        Self::layers(file.as_deref())
            .merge(Env::prefixed("MFA_RESET__").split("__").lowercase(true))
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))
    }

    /// Built-in defaults, then `file`.
    fn layers(file: Option<&Path>) -> Figment {
        let figment = Figment::from(Serialized::defaults(Settings::default()));
        match file {
            Some(file) => figment.merge(Toml::file_exact(file)),
            None => figment,
        }
    }
}

/// `["30s", "5m", "30m"]` ⇄ `Vec<Duration>`.
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> = list
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        texts.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| humantime::parse_duration(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
