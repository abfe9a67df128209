//! Writes to a user's methods: a DELETE after Graph's refusals (the default method while
//! others exist, the mobile phone while an alternate exists), which may answer as a ghost; the
//! QR codes of a QR code + PIN method, deleted one by one while the method stays; and creating
//! the phone, email and Temporary Access Pass methods `restore` needs.

use std::time::Instant;

use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use rand::distr::Alphanumeric;
use rand::Rng;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::paths::{Collection, QrCode, QR_CODE_PIN_STEM};
use super::Ctx;
use crate::pipeline::too_many_requests;
use crate::reply::{empty, odata_error};
use crate::tap::{TapPolicy, TapState};
use crate::tenant::{
    email_method, graph_date, phone_id, phone_method, DeletedMethod, Method, User,
};

/// Apply a DELETE of `user.methods[i]` after Graph's refusals; may answer as a ghost.
pub(super) fn delete_method(
    ctx: &Ctx<'_>,
    user: &mut User,
    i: usize,
    c: Option<Collection>,
) -> Response {
    let target = user.methods[i].clone();
    // A user can't have an alternateMobile without a mobile (Graph docs): refused, not cascaded.
    if target.phone_type() == "mobile"
        && user
            .methods
            .iter()
            .any(|m| m.phone_type() == "alternateMobile")
    {
        return ctx.bad_request("A user can't have an alternateMobile number without a mobile number. Delete the alternateMobile number first, or update the mobile number instead.");
    }
    if let Some(preferred) = user.preferred_method.clone() {
        if target.matches_preference(&preferred) {
            // Other methods serving the same preference keep the default alive, so they do not block.
            let blocking = user
                .methods
                .iter()
                .filter(|m| !m.is_password() && !m.matches_preference(&preferred))
                .count();
            if blocking > 0 {
                let message = "Cannot delete default method with other methods configured. Please change default method before deletion.";
                return match c {
                    Some(c) if c.odata_errors => {
                        odata_error(StatusCode::BAD_REQUEST, "invalid_request", message)
                    }
                    _ => ctx.bad_request(message),
                };
            }
        }
    }
    let method = user.methods.remove(i);
    if method.stem() == QR_CODE_PIN_STEM {
        // Both codes and the PIN go with the method.
        user.qr_codes = crate::tenant::QrCodes::default();
    }
    user.deleted.push(DeletedMethod {
        method,
        deleted_at: Utc::now(),
        listed_until: Instant::now() + ctx.shared.consistency_delay,
    });
    if let Some(preferred) = user.preferred_method.as_deref() {
        if !user.methods.iter().any(|m| m.matches_preference(preferred)) {
            user.preferred_method = None;
        }
    }
    let stats = &ctx.shared.stats;
    stats.update(|s| s.methods_deleted += 1);
    match ctx.shared.faults.roll_ghost() {
        Some(429) => {
            stats.update(|s| s.ghost_successes += 1);
            ctx.shared.throttle.record_429(ctx.app, Instant::now(), 1);
            too_many_requests(ctx.shared, ctx.ids, 1, "ResourceUnitLimitExceeded", ctx.app)
        }
        Some(_) => {
            stats.update(|s| s.ghost_successes += 1);
            ctx.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "Service unavailable.",
            )
        }
        None => empty(StatusCode::NO_CONTENT),
    }
}

/// The QR code `which` of the user's QR code + PIN method, as Graph shows a `qrCode`.
pub(super) fn qr_code(user: &User, which: QrCode) -> Option<Value> {
    let method = user.methods.iter().find(|m| m.stem() == QR_CODE_PIN_STEM)?;
    let present = match which {
        QrCode::Standard => user.qr_codes.standard,
        QrCode::Temporary => user.qr_codes.temporary,
    };
    if !present {
        return None;
    }
    let kind = match which {
        QrCode::Standard => "standard",
        QrCode::Temporary => "temporary",
    };
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("{}/{kind}", method.id()).as_bytes(),
    );
    Some(json!({
        "id": id.to_string(),
        "createdDateTime": method.0.get("createdDateTime").cloned().unwrap_or(Value::Null),
        "startDateTime": method.0.get("createdDateTime").cloned().unwrap_or(Value::Null),
        "expireDateTime": null,
        "lastUsedDateTime": null,
        "image": null,
    }))
}

/// Delete the QR code `which` of the user's QR code + PIN method; false when there is none.
/// The method stays registered (and listed) with its PIN and its other code.
pub(super) fn delete_qr_code(user: &mut User, which: QrCode) -> bool {
    if !user.methods.iter().any(|m| m.stem() == QR_CODE_PIN_STEM) {
        return false;
    }
    let code = match which {
        QrCode::Standard => &mut user.qr_codes.standard,
        QrCode::Temporary => &mut user.qr_codes.temporary,
    };
    std::mem::replace(code, false)
}

fn text_field<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

pub(super) fn create_phone(user: &mut User, input: &Value) -> Result<Map<String, Value>, String> {
    let number = text_field(input, "phoneNumber").unwrap_or("");
    let phone_type = text_field(input, "phoneType").unwrap_or("");
    if phone_id(phone_type).is_none() {
        return Err(format!(
            "Invalid phoneType '{phone_type}'; expected mobile, alternateMobile or office."
        ));
    }
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if !number.starts_with('+') || !(7..=20).contains(&digits) {
        return Err(format!(
            "Invalid phone number '{number}'; use the form +1 5555551234."
        ));
    }
    if user.methods.iter().any(|m| m.phone_type() == phone_type) {
        return Err(format!(
            "The user already has a phone method of type {phone_type}."
        ));
    }
    if phone_type == "alternateMobile" && !user.methods.iter().any(|m| m.phone_type() == "mobile") {
        return Err("A user can't have an alternateMobile number without a mobile number.".into());
    }
    let method = phone_method(phone_type, number);
    if user.preferred_method.is_none() && phone_type == "mobile" {
        user.preferred_method = Some("sms".into());
    }
    user.methods.push(method.clone());
    Ok(method.0)
}

pub(super) fn create_email(user: &mut User, input: &Value) -> Result<Map<String, Value>, String> {
    let address = text_field(input, "emailAddress").unwrap_or("");
    if !address.contains('@') {
        return Err(format!("Invalid emailAddress '{address}'."));
    }
    if user.methods.iter().any(|m| m.stem() == "email") {
        return Err("The user already has an email method.".into());
    }
    let method = email_method(address);
    user.methods.push(method.clone());
    Ok(method.0)
}

/// Create a Temporary Access Pass as the tenant's policy allows: refused while the policy
/// is disabled, outside its lifetime bounds, or reusable where it demands one-time use. The
/// pass is shown in this answer only; the stored method keeps `temporaryAccessPass: null`.
/// Returns the answer and the pass.
pub(super) fn create_tap(
    user: &mut User,
    input: &Value,
    policy: &TapPolicy,
) -> Result<(Map<String, Value>, String), String> {
    if policy.state != TapState::Enabled {
        // The answer Entra gives when the authentication methods policy has TAP off.
        return Err("Converged UserCredentialPolicy does not allow creating or updating this authentication method. AuthMethodType [TemporaryAccessPass].".into());
    }
    let (min, max) = (
        u64::from(policy.minimum_lifetime_in_minutes),
        u64::from(policy.maximum_lifetime_in_minutes),
    );
    let lifetime = match input.get("lifetimeInMinutes") {
        None => u64::from(policy.default_lifetime_in_minutes),
        Some(v) => v
            .as_u64()
            .filter(|m| (10..=43_200).contains(m))
            .ok_or_else(|| format!("lifetimeInMinutes {v} is out of range 10..43200."))?,
    };
    if !(min..=max).contains(&lifetime) {
        return Err(format!(
            "lifetimeInMinutes {lifetime} is outside the Temporary Access Pass policy's range {min}..{max}."
        ));
    }
    let usable_once = match input.get("isUsableOnce") {
        None => policy.is_usable_once,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("isUsableOnce {v} is not a boolean."))?,
    };
    if policy.is_usable_once && !usable_once {
        return Err("The Temporary Access Pass policy only allows one-time use passes (isUsableOnce must be true).".into());
    }
    let now = Utc::now();
    let start = match text_field(input, "startDateTime") {
        None => now,
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|_| format!("startDateTime '{s}' is not an ISO 8601 date-time."))?
            .with_timezone(&Utc),
    };
    let pass: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(policy.default_length as usize)
        .map(char::from)
        .collect();
    let id = Uuid::new_v4().to_string();
    let usable = start <= now;
    let stored = json!({
        "@odata.type": "#microsoft.graph.temporaryAccessPassAuthenticationMethod",
        "id": id,
        "temporaryAccessPass": null,
        "createdDateTime": graph_date(now),
        "startDateTime": graph_date(start),
        "lifetimeInMinutes": lifetime,
        "isUsableOnce": usable_once,
        "isUsable": usable,
        "methodUsabilityReason": if usable { "EnabledByPolicy" } else { "NotYetValid" },
    });
    let Value::Object(stored) = stored else {
        return Err("internal error".into());
    };
    // One TAP per user: a new one replaces the old.
    user.methods.retain(|m| m.stem() != "temporaryAccessPass");
    user.methods.push(Method(stored.clone()));
    let mut shown = stored;
    shown.insert("temporaryAccessPass".into(), Value::String(pass.clone()));
    Ok((shown, pass))
}
