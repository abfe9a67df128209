//! Transport policy: which URLs this tool agrees to talk to, and how values that came from
//! outside are made safe to print.
//!
//! - Microsoft Graph and the token endpoint: `https://` only, except a loopback host (the
//!   simulator, a local proxy). A bearer token or client assertion sent in clear to a remote
//!   host is as good as handed out.
//! - The broker: `amqps://`, or `amqp://` to a loopback host; `amqp://` to any other host only
//!   with `broker.allow_plaintext = true` (the broker password and every request would cross
//!   the network in clear).

use std::borrow::Cow;
use std::net::IpAddr;

/// Is `host` (as it appears in a URL: a name, an IPv4 address or a bracketed IPv6 address)
/// this machine's loopback?
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `Ok` when `url` (the value of setting `setting`) is `https://`, or `http://` to loopback.
pub fn require_https(url: &str, setting: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| anyhow::anyhow!("{setting} = {:?} is not a URL ({e})", printable(url)))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if parsed.host_str().is_some_and(is_loopback_host) => Ok(()),
        scheme => anyhow::bail!(
            "{setting} = {:?}: only https:// is allowed ({scheme}:// is accepted for a loopback \
             host only, such as the simulator on 127.0.0.1): tokens and client assertions must \
             not cross the network in clear",
            printable(url)
        ),
    }
}

/// How a broker URL may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerTransport {
    /// `amqps://`: TLS.
    Tls,
    /// `amqp://` to loopback, or elsewhere with `broker.allow_plaintext`.
    Plain,
}

/// Check the broker URL against the policy above. `url` may hold a password: errors show it
/// redacted.
pub fn broker_transport(url: &str, allow_plaintext: bool) -> anyhow::Result<BrokerTransport> {
    let shown = crate::config::redact_url(url);
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        anyhow::anyhow!("broker.url = {shown:?} is not an amqp:// or amqps:// URL")
    })?;
    match scheme.to_ascii_lowercase().as_str() {
        "amqps" => Ok(BrokerTransport::Tls),
        "amqp" => {
            let authority = rest.split(['/', '?']).next().unwrap_or_default();
            let hostport = authority.rsplit('@').next().unwrap_or_default();
            let host = if hostport.starts_with('[') {
                hostport
                    .split_once(']')
                    .map(|(h, _)| h.trim_start_matches('['))
                    .unwrap_or(hostport)
            } else {
                hostport.split(':').next().unwrap_or_default()
            };
            // An empty host is lapin's default, localhost.
            if host.is_empty() || is_loopback_host(host) || allow_plaintext {
                Ok(BrokerTransport::Plain)
            } else {
                anyhow::bail!(
                    "broker.url = {shown:?}: plaintext amqp:// to a host other than this machine \
                     is refused (the broker password and every request would cross the network \
                     in clear). Use amqps:// (with broker.ca_file, and broker.client_cert_file + \
                     broker.client_key_file for certificate login), or set \
                     broker.allow_plaintext = true (MFA_RESET__BROKER__ALLOW_PLAINTEXT) on a \
                     network you trust"
                )
            }
        }
        other => anyhow::bail!(
            "broker.url = {shown:?}: unknown scheme {other:?}; use amqps:// (or amqp:// on this machine)"
        ),
    }
}

/// `value` with every control character (C0, DEL, C1: terminal escapes, carriage returns that
/// overwrite a line, ANSI colour codes) and Unicode bidirectional override shown as `\u{..}`,
/// for printing a value that came from outside (a batch name, a header, a CSV cell) to a
/// terminal or a log.
pub fn printable(value: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || is_bidi_control(c);
    if !value.chars().any(unsafe_char) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `value` fit for one line of an error or a log: [`printable`] first, then cut to at most
/// `max_chars` characters, the last of them `…` when it was cut (escaping cannot make the
/// line longer than that).
pub fn shorten(value: &str, max_chars: usize) -> String {
    let shown = printable(value);
    if shown.chars().nth(max_chars).is_none() {
        return shown.into_owned();
    }
    let end = shown
        .char_indices()
        .nth(max_chars.saturating_sub(1))
        .map_or(shown.len(), |(at, _)| at);
    format!("{}…", &shown[..end])
}

/// Unicode's bidirectional formatting characters, which can make text display in another
/// order than it is (CVE-2021-42574, "Trojan Source").
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortened_values_are_escaped_then_cut_to_the_bound() {
        assert_eq!(shorten("short", 80), "short");
        let exact = "é".repeat(80);
        assert_eq!(shorten(&exact, 80), exact);
        let long = shorten(&"é".repeat(10_000), 80);
        assert_eq!(long.chars().count(), 80);
        assert!(long.ends_with('…'));
        // Escapes count towards the bound: forty control characters escape to 240.
        let escaped = shorten(&"\u{1b}".repeat(40), 80);
        assert_eq!(escaped.chars().count(), 80, "{escaped}");
        assert!(!escaped.chars().any(char::is_control), "{escaped}");
    }

    #[test]
    fn graph_and_token_urls_must_be_https_except_on_loopback() {
        assert!(require_https("https://graph.microsoft.com/v1.0", "graph.base_url").is_ok());
        assert!(require_https("http://127.0.0.1:8080/v1.0", "graph.base_url").is_ok());
        assert!(require_https("http://localhost:8080", "graph.authority").is_ok());
        assert!(require_https("http://[::1]:8080", "graph.authority").is_ok());
        let err = require_https("http://graph.example.com/v1.0", "graph.base_url")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("graph.base_url") && err.contains("only https://"),
            "{err}"
        );
        assert!(require_https("http://127.0.0.1.evil.example/", "graph.authority").is_err());
        assert!(require_https("ftp://127.0.0.1/", "graph.authority").is_err());
    }

    #[test]
    fn plaintext_amqp_is_refused_off_this_machine_unless_allowed() {
        let ok = |url, allow| broker_transport(url, allow).ok();
        assert_eq!(
            ok("amqp://guest:guest@127.0.0.1:5672/%2f", false),
            Some(BrokerTransport::Plain)
        );
        assert_eq!(
            ok("amqp://u:p@localhost/%2f", false),
            Some(BrokerTransport::Plain)
        );
        assert_eq!(
            ok("amqp://u:p@[::1]:5672/v", false),
            Some(BrokerTransport::Plain)
        );
        assert_eq!(
            ok("amqps://u:p@rabbit.example.com:5671/v", false),
            Some(BrokerTransport::Tls)
        );
        assert_eq!(
            ok("amqp://u:p@rabbit.example.com/v", true),
            Some(BrokerTransport::Plain)
        );
        let err = broker_transport("amqp://u:s3cret@rabbit.example.com/v", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("broker.allow_plaintext"), "{err}");
        assert!(
            !err.contains("s3cret"),
            "the password is never shown: {err}"
        );
        assert!(broker_transport("http://127.0.0.1/", false).is_err());
    }

    #[test]
    fn control_characters_from_outside_are_shown_escaped() {
        assert_eq!(printable("20261127-users-4f2a"), "20261127-users-4f2a");
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("ok\r\nFAKE: done"), "ok\\u{d}\\u{a}FAKE: done");
        assert_eq!(printable("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable("Zoë Åström"), "Zoë Åström");
    }
}
