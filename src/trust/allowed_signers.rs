//! OpenSSH's allowed-signers file (ssh-keygen(1), "ALLOWED SIGNERS"; the file git names in
//! `gpg.ssh.allowedSignersFile`): who may sign, with which key, for which namespaces, when.
//!
//! One entry a line: `principals [options] keytype base64-key [comment]`; `#` comments and
//! blank lines are skipped. Options, comma-separated, parsed as `ssh-keygen -Y verify` parses
//! them: `namespaces="pattern,…"`, `valid-after="YYYYMMDD[HHMM[SS]][Z]"`, `valid-before="…"`
//! (a time without `Z`/`UTC` is local time, as in OpenSSH), and `cert-authority`, which this
//! tool refuses: certificates are not supported.
//!
//! Two rules stricter than OpenSSH, because a principal here identifies a person (the
//! two-person rule compares them): principals are plain names, not patterns (`*`, `?`, `!` are
//! refused), and one key may not be listed for two different principal lists. A key listed for
//! several principals (`alice@contoso.com,alice@fabrikam.com`) signs as the first one.
//! Key types: `ssh-ed25519`, `ecdsa-sha2-nistp256` and their FIDO2 forms
//! `sk-ssh-ed25519@openssh.com`, `sk-ecdsa-sha2-nistp256@openssh.com`.

use std::fmt;
use std::path::Path;

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg, PublicKey};

use super::Namespace;

/// The key types this tool signs and verifies with, for messages that name them.
pub const SUPPORTED_KEY_TYPES: &str = "ssh-ed25519, ecdsa-sha2-nistp256, \
     sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com";

/// A person allowed to sign, as named in the allowed-signers file (e.g. `alice@contoso.com`).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Principal(String);

impl Principal {
    /// The principal's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed allowed-signers file.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    source: String,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    principals: Vec<Principal>,
    key: KeyData,
    namespaces: Option<String>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
}

/// The allowed-signers file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AllowedSignersError {
    /// The file could not be read.
    #[error(
        "cannot read the allowed-signers file {path}: {source} (security.allowed_signers names it)"
    )]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a valid entry.
    #[error("{source_name} line {line}: {problem}")]
    Line {
        /// The file (or other source) name.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

/// Why a key may not sign for a namespace at a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    /// The key is on no line.
    #[error("key {fingerprint} is not in the allowed-signers file")]
    NotListed {
        /// `SHA256:…` fingerprint of the key.
        fingerprint: String,
    },
    /// A key type this tool does not accept (e.g. `ssh-rsa`).
    #[error("{problem}")]
    UnsupportedKey {
        /// Which type, and the supported ones.
        problem: String,
    },
    /// The key is listed, but not for this namespace.
    #[error("{principal} (line {line}) may not sign in namespace {namespace}: the line allows namespaces=\"{allowed}\"")]
    Namespace {
        /// Who the key belongs to.
        principal: Principal,
        /// The line listing the key.
        line: usize,
        /// The namespace asked for.
        namespace: String,
        /// The line's `namespaces=` patterns.
        allowed: String,
    },
    /// The key is listed, but not valid yet at that time.
    #[error("{principal}'s key (line {line}) is valid only after {valid_after}")]
    NotYetValid {
        /// Who the key belongs to.
        principal: Principal,
        /// The line listing the key.
        line: usize,
        /// Its `valid-after` time.
        valid_after: DateTime<Utc>,
    },
    /// The key is listed, but expired at that time.
    #[error("{principal}'s key (line {line}) expired at {valid_before}")]
    Expired {
        /// Who the key belongs to.
        principal: Principal,
        /// The line listing the key.
        line: usize,
        /// Its `valid-before` time.
        valid_before: DateTime<Utc>,
    },
}

impl AllowedSigners {
    /// Read and parse the file at `path`.
    pub fn read(path: &Path) -> Result<AllowedSigners, AllowedSignersError> {
        let text = std::fs::read_to_string(path).map_err(|source| AllowedSignersError::Read {
            path: path.display().to_string(),
            source,
        })?;
        AllowedSigners::parse(&text, &path.display().to_string())
    }

    /// Parse the file's text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<AllowedSigners, AllowedSignersError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let fail = |problem: String| AllowedSignersError::Line {
                source_name: source_name.to_string(),
                line,
                problem,
            };
            let Some(entry) = parse_line(raw, line).map_err(fail)? else {
                continue;
            };
            if let Some(other) = entries
                .iter()
                .find(|other| other.key == entry.key && other.principals != entry.principals)
            {
                return Err(fail(format!(
                    "this key is already listed for {} on line {}: a key identifies one person; \
                     give each person their own key",
                    join(&other.principals),
                    other.line
                )));
            }
            entries.push(entry);
        }
        Ok(AllowedSigners {
            source: source_name.to_string(),
            entries,
        })
    }

    /// Where the entries came from (the file's path).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of entries (lines with a key).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no line lists a key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal that `key` signs as in `namespace` at time `at`, or why it may not.
    ///
    /// The first line that lists the key and permits the namespace and time wins, as in
    /// `ssh-keygen -Y verify`; when none does, the refusal of the first line listing the key.
    pub fn principal_for(
        &self,
        key: &KeyData,
        namespace: Namespace,
        at: DateTime<Utc>,
    ) -> Result<&Principal, NotAllowed> {
        let mut first_refusal = None;
        for entry in self.entries.iter().filter(|entry| &entry.key == key) {
            match entry.permits(namespace.as_str(), at.timestamp()) {
                Ok(()) => return Ok(&entry.principals[0]),
                Err(refusal) => {
                    first_refusal.get_or_insert(refusal);
                }
            }
        }
        Err(first_refusal.unwrap_or_else(|| NotAllowed::NotListed {
            fingerprint: fingerprint(key),
        }))
    }
}

impl Entry {
    fn permits(&self, namespace: &str, at: i64) -> Result<(), NotAllowed> {
        let principal = || self.principals[0].clone();
        if let Some(patterns) = &self.namespaces {
            if !match_pattern_list(namespace, patterns) {
                return Err(NotAllowed::Namespace {
                    principal: principal(),
                    line: self.line,
                    namespace: namespace.to_string(),
                    allowed: patterns.clone(),
                });
            }
        }
        if let Some(after) = self.valid_after.filter(|after| at < *after) {
            return Err(NotAllowed::NotYetValid {
                principal: principal(),
                line: self.line,
                valid_after: utc(after),
            });
        }
        if let Some(before) = self.valid_before.filter(|before| at > *before) {
            return Err(NotAllowed::Expired {
                principal: principal(),
                line: self.line,
                valid_before: utc(before),
            });
        }
        Ok(())
    }
}

/// `SHA256:…` fingerprint of a key, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Refuse key types other than the supported four, naming them.
pub(crate) fn check_key_type(algorithm: &Algorithm) -> Result<(), String> {
    match algorithm {
        Algorithm::Ed25519
        | Algorithm::SkEd25519
        | Algorithm::SkEcdsaSha2NistP256
        | Algorithm::Ecdsa {
            curve: ssh_key::EcdsaCurve::NistP256,
        } => Ok(()),
        other => Err(format!(
            "{} keys are not supported: use {SUPPORTED_KEY_TYPES}",
            other.as_str()
        )),
    }
}

fn utc(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}

fn join(principals: &[Principal]) -> String {
    principals
        .iter()
        .map(Principal::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parse one line: `Ok(None)` for a blank or comment line.
fn parse_line(raw: &str, line: usize) -> Result<Option<Entry>, String> {
    let rest = raw.trim_start_matches([' ', '\t', '\r']);
    if rest.is_empty() || rest.starts_with('#') {
        return Ok(None);
    }
    let (principals_field, rest) = take_field(rest)?;
    let principals = parse_principals(&principals_field)?;
    let rest = rest.trim_start_matches([' ', '\t']);
    let (options, rest) = if looks_like_key_type(first_word(rest)) {
        (None, rest)
    } else {
        let (options, rest) = take_field(rest)?;
        (Some(options), rest.trim_start_matches([' ', '\t']))
    };
    let mut words = rest.split([' ', '\t']).filter(|word| !word.is_empty());
    let (Some(key_type), Some(base64)) = (words.next(), words.next()) else {
        return Err(
            "missing key: expected `principals [options] keytype base64-key [comment]`, \
                    e.g. a line of `ssh-keygen -y -f KEY` output after the principal"
                .to_string(),
        );
    };
    let algorithm = Algorithm::new(key_type).map_err(|_| {
        format!("unknown key type {key_type:?} (certificates are not supported): use {SUPPORTED_KEY_TYPES}")
    })?;
    check_key_type(&algorithm)?;
    let key = PublicKey::from_openssh(&format!("{key_type} {base64}")).map_err(|error| {
        format!("the {key_type} key is not valid ({error}): copy it from the signer's .pub file")
    })?;
    if key.algorithm() != algorithm {
        return Err(format!(
            "the key says {key_type} but its data is a {} key: copy the line from the .pub file",
            key.algorithm().as_str()
        ));
    }
    let mut entry = Entry {
        line,
        principals,
        key: key.key_data().clone(),
        namespaces: None,
        valid_after: None,
        valid_before: None,
    };
    if let Some(options) = options {
        parse_options(&options, &mut entry)?;
    }
    Ok(Some(entry))
}

fn first_word(text: &str) -> &str {
    text.split([' ', '\t']).next().unwrap_or("")
}

/// Key type names OpenSSH would read as a key (and not as options) — including the ones this
/// tool refuses, so that their line gets "not supported" rather than "unknown option".
fn looks_like_key_type(word: &str) -> bool {
    word.starts_with("ssh-")
        || word.starts_with("ecdsa-sha2-")
        || word.starts_with("sk-")
        || word.starts_with("rsa-sha2-")
}

/// One whitespace-delimited field; double quotes keep spaces inside it (as `strdelimw`).
fn take_field(text: &str) -> Result<(String, &str), String> {
    let mut field = String::new();
    let mut quoted = false;
    for (offset, character) in text.char_indices() {
        match character {
            '"' => {
                quoted = !quoted;
                field.push(character);
            }
            ' ' | '\t' if !quoted => return Ok((field, &text[offset..])),
            _ => field.push(character),
        }
    }
    if quoted {
        return Err("unterminated double quote".to_string());
    }
    Ok((field, ""))
}

fn parse_principals(field: &str) -> Result<Vec<Principal>, String> {
    let field = field
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(field);
    let mut principals = Vec::new();
    for name in field.split(',') {
        if name.is_empty() {
            return Err(format!(
                "empty principal in {field:?}: write names separated by single commas"
            ));
        }
        if name.contains(['*', '?', '!', '"']) {
            return Err(format!(
                "principal {name:?} is a pattern: each principal must name one person \
                 (e.g. alice@contoso.com), so list people one by one"
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(format!("principal {name:?} holds a control character"));
        }
        principals.push(Principal(name.to_string()));
    }
    Ok(principals)
}

fn parse_options(options: &str, entry: &mut Entry) -> Result<(), String> {
    let mut rest = options;
    while !rest.is_empty() {
        let lower = rest.to_ascii_lowercase();
        if lower.starts_with("cert-authority") {
            return Err(
                "cert-authority is not supported: list each signer's own key \
                        (the line of their .pub file) instead of a certificate authority"
                    .to_string(),
            );
        } else if let Some(value) = option_value(&mut rest, &lower, "namespaces")? {
            if entry.namespaces.replace(value).is_some() {
                return Err("namespaces= appears twice: merge the lists into one".to_string());
            }
        } else if let Some(value) = option_value(&mut rest, &lower, "valid-after")? {
            let time = parse_time(&value, "valid-after")?;
            if entry.valid_after.replace(time).is_some() {
                return Err("valid-after= appears twice: keep one".to_string());
            }
        } else if let Some(value) = option_value(&mut rest, &lower, "valid-before")? {
            let time = parse_time(&value, "valid-before")?;
            if entry.valid_before.replace(time).is_some() {
                return Err("valid-before= appears twice: keep one".to_string());
            }
        } else {
            let name = rest.split([',', '=']).next().unwrap_or(rest);
            return Err(format!(
                "unknown option {name:?}: the options are namespaces=\"…\", valid-after=\"…\" \
                 and valid-before=\"…\" (or the key type is misspelled; supported: {SUPPORTED_KEY_TYPES})"
            ));
        }
        match rest.strip_prefix(',') {
            Some("") => return Err("the options end in a comma: remove it".to_string()),
            Some(next) => rest = next,
            None if rest.is_empty() => {}
            None => {
                return Err(format!(
                    "unexpected {rest:?} after an option: separate options with commas"
                ))
            }
        }
    }
    if let (Some(after), Some(before)) = (entry.valid_after, entry.valid_before) {
        if before <= after {
            return Err("valid-before is not after valid-after: swap or correct them".to_string());
        }
    }
    Ok(())
}

/// If `rest` starts with `name=` (any case), take its double-quoted value.
fn option_value(rest: &mut &str, lower: &str, name: &str) -> Result<Option<String>, String> {
    let Some(after) = lower
        .strip_prefix(name)
        .and_then(|tail| tail.strip_prefix('='))
    else {
        return Ok(None);
    };
    let start = rest.len() - after.len();
    let Some(quoted) = rest[start..].strip_prefix('"') else {
        return Err(format!(
            "{name}= needs a double-quoted value, e.g. {name}=\"…\""
        ));
    };
    let mut value = String::new();
    let mut characters = quoted.char_indices();
    while let Some((offset, character)) = characters.next() {
        match character {
            '\\' if quoted[offset + 1..].starts_with('"') => {
                value.push('"');
                characters.next();
            }
            '"' => {
                *rest = &quoted[offset + 1..];
                return Ok(Some(value));
            }
            _ => value.push(character),
        }
    }
    Err(format!("{name}= is missing its closing double quote"))
}

/// OpenSSH's `parse_absolute_time`: `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`, in UTC
/// with a `Z` or `UTC` suffix, else in local time.
fn parse_time(value: &str, name: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "{name}=\"{value}\" is not a time: write YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, \
             with a Z suffix for UTC (e.g. {name}=\"20260101Z\")"
        )
    };
    let (digits, is_utc) = if let Some(digits) = value.strip_suffix(['Z', 'z']) {
        (digits, true)
    } else if value.len() > 3 && value[value.len() - 3..].eq_ignore_ascii_case("UTC") {
        (&value[..value.len() - 3], true)
    } else {
        (value, false)
    };
    if !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(bad());
    }
    let field = |range: std::ops::Range<usize>| digits[range].parse::<u32>().map_err(|_| bad());
    let (hour, minute, second) = match digits.len() {
        8 => (0, 0, 0),
        12 => (field(8..10)?, field(10..12)?, 0),
        14 => (field(8..10)?, field(10..12)?, field(12..14)?),
        _ => return Err(bad()),
    };
    let date =
        NaiveDate::from_ymd_opt(field(0..4)? as i32, field(4..6)?, field(6..8)?).ok_or_else(bad)?;
    let naive: NaiveDateTime = date.and_hms_opt(hour, minute, second).ok_or_else(bad)?;
    let seconds = if is_utc {
        naive.and_utc().timestamp()
    } else {
        Local
            .from_local_datetime(&naive)
            .earliest()
            .ok_or_else(bad)?
            .timestamp()
    };
    if seconds <= 0 {
        return Err(bad());
    }
    Ok(seconds)
}

/// OpenSSH's `match_pattern_list`: comma-separated patterns with `*` and `?`; a match of a
/// `!`-negated pattern refuses outright; otherwise any positive match allows.
fn match_pattern_list(text: &str, patterns: &str) -> bool {
    let mut allowed = false;
    for pattern in patterns.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(pattern) => (true, pattern),
            None => (false, pattern),
        };
        if match_pattern(text.as_bytes(), pattern.as_bytes()) {
            if negated {
                return false;
            }
            allowed = true;
        }
    }
    allowed
}

fn match_pattern(text: &[u8], pattern: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| match_pattern(&text[skip..], rest)),
        Some((b'?', rest)) => !text.is_empty() && match_pattern(&text[1..], rest),
        Some((byte, rest)) => text.first() == Some(byte) && match_pattern(&text[1..], rest),
    }
}

#[cfg(test)]
#[path = "allowed_signers_tests.rs"]
mod tests;
