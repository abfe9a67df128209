//! AMQP headers mfa-reset reads and writes.

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

/// How many times this request has been tried (1 on the first delivery).
pub const ATTEMPT: &str = "x-mfa-attempt";
/// Why a message is in the dead-letter queue (our code or Graph's).
pub const ERROR_CODE: &str = "x-mfa-error-code";
/// Human-readable reason.
pub const ERROR_MESSAGE: &str = "x-mfa-error-message";
/// Attempts made before giving up.
pub const ATTEMPTS: &str = "x-mfa-attempts";
/// Worker that dead-lettered it.
pub const WORKER: &str = "x-mfa-worker";
/// RFC 3339 time of dead-lettering.
pub const FAILED_AT: &str = "x-mfa-failed-at";
/// Batch, copied for `dlq list --batch` without parsing bodies.
pub const BATCH: &str = "x-mfa-batch";
/// User, copied for `dlq list`.
pub const USER: &str = "x-mfa-user";
/// Why a request was refused by verification (`unsigned`, `bad_signature`, …; the same as
/// its [`ERROR_CODE`]), on dead letters of requests that were never executed.
pub const REASON: &str = "x-mfa-reason";

/// A header as text, whatever its AMQP type.
pub fn get_str(props: &BasicProperties, key: &str) -> Option<String> {
    props.headers().as_ref().and_then(|h| value_str(h, key))
}

/// A header as an integer, whatever its AMQP integer type.
pub fn get_u64(props: &BasicProperties, key: &str) -> Option<u64> {
    let h = props.headers().as_ref()?;
    value_u64(h.inner().get(key)?)
}

fn value_str(table: &FieldTable, key: &str) -> Option<String> {
    match table.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        other => value_u64(other).map(|n| n.to_string()),
    }
}

fn value_u64(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

/// The broker's own dead-lettering reason, from the first `x-death` entry
/// (`rejected`, `expired`, `maxlen`, `delivery_limit`) and its queue.
pub fn x_death(props: &BasicProperties) -> Option<(String, String, u64)> {
    let headers = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let reason = value_str(first, "reason").unwrap_or_default();
    let queue = value_str(first, "queue").unwrap_or_default();
    let count = first.inner().get("count").and_then(value_u64).unwrap_or(0);
    Some((reason, queue, count))
}

/// Builds a header table.
#[derive(Default)]
pub struct Headers(FieldTable);

impl Headers {
    /// Start from the headers of an existing message (e.g. to re-publish it).
    pub fn from_props(props: &BasicProperties) -> Headers {
        Headers(props.headers().clone().unwrap_or_default())
    }
    /// Set a text header.
    pub fn str(mut self, key: &str, value: &str) -> Headers {
        self.0
            .insert(ShortString::from(key), AMQPValue::LongString(value.into()));
        self
    }
    /// Copy header `key` of `props`, whatever its type, when it is there.
    pub fn copied(mut self, props: &BasicProperties, key: &str) -> Headers {
        if let Some(value) = props.headers().as_ref().and_then(|h| h.inner().get(key)) {
            self.0.insert(ShortString::from(key), value.clone());
        }
        self
    }
    /// Set an integer header.
    pub fn int(mut self, key: &str, value: u64) -> Headers {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX)),
        );
        self
    }
    /// Remove a header.
    pub fn without(self, key: &str) -> Headers {
        let map = self
            .0
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<_, _>>();
        Headers(FieldTable::from(map))
    }
    /// The table.
    pub fn build(self) -> FieldTable {
        self.0
    }
}
