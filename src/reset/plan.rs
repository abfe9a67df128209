//! The reset plan as pure functions: which methods a reset removes ([`Scope`]), in what
//! order ([`order`]), and what the outcome is ([`conclude`]). No I/O here: `reset::execute`
//! asks Graph and feeds the answers to these functions.
//!
//! The order follows two rules Graph states for phone methods
//! (<https://learn.microsoft.com/graph/api/phoneauthenticationmethod-delete>); the first holds
//! for every type that can be the default:
//! - **the default method goes last**: Graph refuses to delete the default MFA method while
//!   any other method is registered (observed answer: 400 `badRequest` "Cannot delete default
//!   method with other methods configured"). Microsoft's own reset scripts delete everything
//!   else first and the default last;
//! - **an alternateMobile cannot exist without a mobile**: Graph refuses to delete the mobile
//!   while an alternate exists, so the mobile goes after the alternate. When the alternate is
//!   the default, no order works: the default is first moved to the mobile.

use std::collections::HashSet;

use crate::config::MethodSelection;
use crate::domain::{MethodRecord, Status};
use crate::graph::AuthMethod;

/// A removable method type, as `reset.methods` and the reports name it (Graph's collection stem).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodType {
    /// `phone`: mobile, alternate mobile and office phones.
    Phone,
    /// `email`.
    Email,
    /// `microsoftAuthenticator`.
    MicrosoftAuthenticator,
    /// `fido2`.
    Fido2,
    /// `softwareOath`.
    SoftwareOath,
    /// `temporaryAccessPass`.
    TemporaryAccessPass,
    /// `windowsHelloForBusiness`.
    WindowsHelloForBusiness,
    /// `platformCredential`.
    PlatformCredential,
    /// `external`.
    External,
    /// `hardwareOath` (beta).
    HardwareOath,
    /// `qrCodePin`.
    QrCodePin,
}

impl MethodType {
    /// Every type this build can delete (`reset.methods = "all"`).
    pub const ALL: [MethodType; 11] = [
        MethodType::Phone,
        MethodType::Email,
        MethodType::MicrosoftAuthenticator,
        MethodType::Fido2,
        MethodType::SoftwareOath,
        MethodType::TemporaryAccessPass,
        MethodType::WindowsHelloForBusiness,
        MethodType::PlatformCredential,
        MethodType::External,
        MethodType::HardwareOath,
        MethodType::QrCodePin,
    ];

    /// What the portal's "Require re-register MFA" removes (`reset.methods = "portal"`):
    /// phone numbers, Authenticator apps and software OATH tokens
    /// (<https://learn.microsoft.com/entra/identity/authentication/howto-mfa-userdevicesettings>).
    /// Not hardware OATH tokens: the portal *deactivates* those and keeps them assigned, while
    /// Graph's DELETE un-assigns the token from the user (it must be assigned again before the
    /// user can activate it), so the preset leaves them alone; `"all"` or a list naming
    /// `hardwareOath` deletes them.
    pub const PORTAL: [MethodType; 3] = [
        MethodType::Phone,
        MethodType::MicrosoftAuthenticator,
        MethodType::SoftwareOath,
    ];

    /// The Graph collection stem (`phone`, `fido2`, …).
    pub fn stem(self) -> &'static str {
        match self {
            MethodType::Phone => "phone",
            MethodType::Email => "email",
            MethodType::MicrosoftAuthenticator => "microsoftAuthenticator",
            MethodType::Fido2 => "fido2",
            MethodType::SoftwareOath => "softwareOath",
            MethodType::TemporaryAccessPass => "temporaryAccessPass",
            MethodType::WindowsHelloForBusiness => "windowsHelloForBusiness",
            MethodType::PlatformCredential => "platformCredential",
            MethodType::External => "external",
            MethodType::HardwareOath => "hardwareOath",
            MethodType::QrCodePin => "qrCodePin",
        }
    }

    /// The type of a stem, `None` for a name that is not a removable type.
    pub fn from_stem(stem: &str) -> Option<MethodType> {
        MethodType::ALL.into_iter().find(|t| t.stem() == stem)
    }
}

/// What the reset's rules need to know about one registered method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodKind {
    /// The password: never deleted.
    Password,
    /// A phone of `phoneType` `mobile`.
    MobilePhone,
    /// A phone of `phoneType` `alternateMobile` (cannot exist without a mobile).
    AlternateMobilePhone,
    /// A phone of `phoneType` `office`.
    OfficePhone,
    /// A phone of a `phoneType` this build does not know.
    OtherPhone,
    /// An email address (for self-service password reset; never a default MFA method).
    Email,
    /// The Microsoft Authenticator app.
    MicrosoftAuthenticator,
    /// A FIDO2 security key or passkey.
    Fido2,
    /// A software OATH token.
    SoftwareOath,
    /// A Temporary Access Pass.
    TemporaryAccessPass,
    /// Windows Hello for Business.
    WindowsHelloForBusiness,
    /// A macOS platform credential.
    PlatformCredential,
    /// An external authentication method.
    External,
    /// A hardware OATH token.
    HardwareOath,
    /// QR code + PIN.
    QrCodePin,
    /// A method type this build does not know: never deleted, reported as remaining.
    Unknown,
}

impl MethodKind {
    /// The kind of a listed method.
    pub fn of(method: &AuthMethod) -> MethodKind {
        match method {
            AuthMethod::Password { .. } => MethodKind::Password,
            AuthMethod::Phone { phone_type, .. } => match phone_type.as_str() {
                "mobile" => MethodKind::MobilePhone,
                "alternateMobile" => MethodKind::AlternateMobilePhone,
                "office" => MethodKind::OfficePhone,
                _ => MethodKind::OtherPhone,
            },
            AuthMethod::Email { .. } => MethodKind::Email,
            AuthMethod::MicrosoftAuthenticator { .. } => MethodKind::MicrosoftAuthenticator,
            AuthMethod::Fido2 { .. } => MethodKind::Fido2,
            AuthMethod::SoftwareOath { .. } => MethodKind::SoftwareOath,
            AuthMethod::TemporaryAccessPass { .. } => MethodKind::TemporaryAccessPass,
            AuthMethod::WindowsHelloForBusiness { .. } => MethodKind::WindowsHelloForBusiness,
            AuthMethod::PlatformCredential { .. } => MethodKind::PlatformCredential,
            AuthMethod::External { .. } => MethodKind::External,
            AuthMethod::HardwareOath { .. } => MethodKind::HardwareOath,
            AuthMethod::QrCodePin { .. } => MethodKind::QrCodePin,
            AuthMethod::Unknown { .. } => MethodKind::Unknown,
        }
    }

    /// The removable type, `None` for the password and unknown types.
    pub fn method_type(self) -> Option<MethodType> {
        Some(match self {
            MethodKind::Password | MethodKind::Unknown => return None,
            MethodKind::MobilePhone
            | MethodKind::AlternateMobilePhone
            | MethodKind::OfficePhone
            | MethodKind::OtherPhone => MethodType::Phone,
            MethodKind::Email => MethodType::Email,
            MethodKind::MicrosoftAuthenticator => MethodType::MicrosoftAuthenticator,
            MethodKind::Fido2 => MethodType::Fido2,
            MethodKind::SoftwareOath => MethodType::SoftwareOath,
            MethodKind::TemporaryAccessPass => MethodType::TemporaryAccessPass,
            MethodKind::WindowsHelloForBusiness => MethodType::WindowsHelloForBusiness,
            MethodKind::PlatformCredential => MethodType::PlatformCredential,
            MethodKind::External => MethodType::External,
            MethodKind::HardwareOath => MethodType::HardwareOath,
            MethodKind::QrCodePin => MethodType::QrCodePin,
        })
    }

    /// Could this method be the user's default MFA method? The values of
    /// `userPreferredMethodForSecondaryAuthentication` name only phones, the Authenticator
    /// app and OATH tokens ([`DefaultMethod`]).
    pub fn can_be_default(self) -> bool {
        matches!(
            self,
            MethodKind::MobilePhone
                | MethodKind::AlternateMobilePhone
                | MethodKind::OfficePhone
                | MethodKind::OtherPhone
                | MethodKind::MicrosoftAuthenticator
                | MethodKind::SoftwareOath
                | MethodKind::HardwareOath
        )
    }
}

/// The user's default MFA method: `userPreferredMethodForSecondaryAuthentication` of
/// signInPreferences (<https://learn.microsoft.com/graph/api/resources/signinpreferences>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultMethod {
    /// `push`: the Authenticator app.
    Push,
    /// `oath`: a software or hardware OATH token.
    Oath,
    /// `voiceMobile`: a call to the mobile phone.
    VoiceMobile,
    /// `sms`: a text to the mobile phone.
    Sms,
    /// `voiceAlternateMobile`: a call to the alternate mobile phone.
    VoiceAlternateMobile,
    /// `voiceOffice`: a call to the office phone.
    VoiceOffice,
}

impl DefaultMethod {
    /// Every value, in Graph's order.
    pub const ALL: [DefaultMethod; 6] = [
        DefaultMethod::Push,
        DefaultMethod::Oath,
        DefaultMethod::VoiceMobile,
        DefaultMethod::VoiceAlternateMobile,
        DefaultMethod::VoiceOffice,
        DefaultMethod::Sms,
    ];

    /// Graph's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultMethod::Push => "push",
            DefaultMethod::Oath => "oath",
            DefaultMethod::VoiceMobile => "voiceMobile",
            DefaultMethod::Sms => "sms",
            DefaultMethod::VoiceAlternateMobile => "voiceAlternateMobile",
            DefaultMethod::VoiceOffice => "voiceOffice",
        }
    }

    /// From Graph's name; `None` for `none`, `unknownFutureValue` or anything newer.
    pub fn parse(value: &str) -> Option<DefaultMethod> {
        DefaultMethod::ALL.into_iter().find(|d| d.as_str() == value)
    }

    /// Does a method of this kind serve this default?
    pub fn served_by(self, kind: MethodKind) -> bool {
        match self {
            DefaultMethod::Push => kind == MethodKind::MicrosoftAuthenticator,
            DefaultMethod::Oath => {
                matches!(kind, MethodKind::SoftwareOath | MethodKind::HardwareOath)
            }
            DefaultMethod::VoiceMobile | DefaultMethod::Sms => kind == MethodKind::MobilePhone,
            DefaultMethod::VoiceAlternateMobile => kind == MethodKind::AlternateMobilePhone,
            DefaultMethod::VoiceOffice => kind == MethodKind::OfficePhone,
        }
    }
}

/// Which method types a reset removes (`reset.methods`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(HashSet<MethodType>);

impl Scope {
    /// From `reset.methods`. Unknown names are an error naming the accepted ones.
    pub fn from_settings(selection: &MethodSelection) -> anyhow::Result<Scope> {
        let accepted = || {
            MethodType::ALL
                .iter()
                .map(|t| t.stem())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let types: HashSet<MethodType> = match selection {
            MethodSelection::Preset(p) if p == "all" => MethodType::ALL.into_iter().collect(),
            MethodSelection::Preset(p) if p == "portal" => MethodType::PORTAL.into_iter().collect(),
            MethodSelection::Preset(p) => anyhow::bail!(
                "reset.methods = {p:?}: use \"all\", \"portal\" or a list of method types ({})",
                accepted()
            ),
            MethodSelection::List(names) => names
                .iter()
                .map(|name| {
                    MethodType::from_stem(name).ok_or_else(|| {
                        anyhow::anyhow!(
                            "reset.methods: {name:?} is not a removable method type; use one of {}",
                            accepted()
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        };
        Ok(Scope(types))
    }

    /// Is a method of this kind to be removed?
    pub fn includes(&self, kind: MethodKind) -> bool {
        kind.method_type().is_some_and(|t| self.0.contains(&t))
    }

    /// Is this method to be removed?
    pub fn contains(&self, method: &AuthMethod) -> bool {
        self.includes(MethodKind::of(method))
    }
}

/// Is the default worth one read? Only when more than one method to delete could be it.
pub fn needs_default_read(targets: &[MethodKind]) -> bool {
    targets.iter().filter(|k| k.can_be_default()).count() > 1
}

/// Must the default be moved to the mobile before anything is deleted? Yes when the
/// alternate mobile is the default and both phones are to go: Graph refuses the mobile while
/// the alternate exists, and the alternate (the default) while the mobile exists.
pub fn must_move_default_to_mobile(targets: &[MethodKind], default: Option<DefaultMethod>) -> bool {
    default == Some(DefaultMethod::VoiceAlternateMobile)
        && targets.contains(&MethodKind::MobilePhone)
        && targets.contains(&MethodKind::AlternateMobilePhone)
}

/// The deletion order: methods that cannot be the default first (as listed), then the
/// candidates, the mobile after the other phones, and the default (when known) last.
pub fn order<T>(
    mut targets: Vec<T>,
    kind_of: impl Fn(&T) -> MethodKind,
    default: Option<DefaultMethod>,
) -> Vec<T> {
    // A stable sort on (could be the default, is the default, is the mobile): false sorts
    // before true, and methods with equal keys keep the order Graph listed them in.
    targets.sort_by_key(|t| {
        let kind = kind_of(t);
        (
            kind.can_be_default(),
            default.is_some_and(|d| d.served_by(kind)),
            kind == MethodKind::MobilePhone,
        )
    });
    targets
}

/// Is a refused DELETE worth asking once more after the others? Not when it was the only
/// one: nothing changed in between, so neither can the answer.
pub fn ask_again_after_the_others(targets: usize) -> bool {
    targets > 1
}

/// Was this method registered after the request was made? Then it is the user's new method
/// (registered again after the helpdesk call, say, while the request waited in a delay tier),
/// and a reset must not delete it. A method Graph gives no `createdDateTime` for (phones,
/// email addresses) cannot be told apart: it counts as registered before.
pub fn registered_after(
    created: Option<chrono::DateTime<chrono::Utc>>,
    requested_at: chrono::DateTime<chrono::Utc>,
) -> bool {
    created.is_some_and(|created| created > requested_at)
}

/// What an interrupted earlier attempt's plan says now, in plan order, each method once and
/// none already `removed`: (the methods no longer `listed` (`type:id`): it removed them; those
/// still listed: its DELETE of them may yet land).
pub fn removed_earlier(
    planned: Vec<MethodRecord>,
    removed: &[MethodRecord],
    listed: &HashSet<String>,
) -> (Vec<MethodRecord>, Vec<MethodRecord>) {
    let mut known: HashSet<String> = removed.iter().map(MethodRecord::short).collect();
    planned
        .into_iter()
        .filter(|m| known.insert(m.short()))
        .partition(|m| !listed.contains(&m.short()))
}

/// The status of a reset a permanent Graph error stopped: failed when nothing was removed,
/// partial otherwise (what was removed stays on the record).
pub fn stopped(removed_any: bool) -> Status {
    if removed_any {
        Status::Partial
    } else {
        Status::Failed
    }
}

/// What a finished reset found, for [`conclude`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Something was removed (by this attempt or an earlier one).
    pub removed_any: bool,
    /// In-scope methods still listed after the deletes.
    pub remaining: usize,
    /// Types this build does not know, left in place (their `@odata.type`).
    pub unknown: Vec<String>,
    /// The first DELETE Graph kept refusing: (Graph's code, "type id: message").
    pub refusal: Option<(String, String)>,
    /// Methods Graph answered 204 (or 404: gone) for but still listed after
    /// `reset.consistency_wait` (`type:id`): the listing is believed over the DELETE's answer,
    /// so they count as remaining too.
    pub lingering: Vec<String>,
}

/// The outcome's status and error of a reset that ran to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conclusion {
    /// Final status.
    pub status: Status,
    /// (code, message) when something is left: Graph's code for a refusal, ours
    /// (`unknown_method_type`) when only unknown types are left.
    pub error: Option<(String, String)>,
}

/// Status and error of a reset that ran to the end.
pub fn conclude(tally: &Tally) -> Conclusion {
    let status = if tally.remaining > 0 || !tally.unknown.is_empty() {
        Status::Partial
    } else if tally.removed_any {
        Status::Reset
    } else {
        Status::AlreadyClean
    };
    let unknown_note = (!tally.unknown.is_empty()).then(|| {
        format!(
            "method type(s) this build does not know were left in place: {}",
            tally.unknown.join(", ")
        )
    });
    let lingering = (!tally.lingering.is_empty()).then(|| {
        (
            "still_listed".to_string(),
            format!(
                "deleted (Graph answered 204, or 404: gone) but still listed after reset.consistency_wait: {}",
                tally.lingering.join(", ")
            ),
        )
    });
    let first = tally.refusal.clone().or(lingering);
    let error = match (first, unknown_note) {
        (Some((code, message)), Some(note)) => Some((code, format!("{message}; {note}"))),
        (Some(first), None) => Some(first),
        (None, Some(note)) => Some(("unknown_method_type".to_string(), note)),
        (None, None) => None,
    };
    Conclusion { status, error }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
