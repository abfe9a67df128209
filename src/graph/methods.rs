//! [`AuthMethod`]: one variant per `@odata.type` of `/authentication/methods`, plus
//! [`AuthMethod::Unknown`] for types that appear after this build (never guessed at).

use serde_json::Value;

use crate::domain::{mask_email, mask_phone, MethodRecord};

/// The password method's fixed id
/// (<https://learn.microsoft.com/en-us/graph/api/resources/passwordauthenticationmethod>).
#[allow(dead_code)]
pub const PASSWORD_METHOD_ID: &str = "28c10230-6103-485e-b985-444c60001490";

/// A registered authentication method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// Password: cannot be deleted.
    Password { id: String },
    /// Phone (mobile, alternateMobile, office).
    Phone {
        id: String,
        phone_number: String,
        phone_type: String,
    },
    /// Email (SSPR).
    Email { id: String, email_address: String },
    /// Microsoft Authenticator app.
    MicrosoftAuthenticator {
        id: String,
        display_name: Option<String>,
    },
    /// FIDO2 security key / passkey.
    Fido2 {
        id: String,
        display_name: Option<String>,
    },
    /// Software OATH token.
    SoftwareOath { id: String },
    /// Temporary Access Pass.
    TemporaryAccessPass { id: String },
    /// Windows Hello for Business.
    WindowsHelloForBusiness {
        id: String,
        display_name: Option<String>,
    },
    /// macOS platform credential.
    PlatformCredential {
        id: String,
        display_name: Option<String>,
    },
    /// External authentication method.
    External {
        id: String,
        display_name: Option<String>,
    },
    /// Hardware OATH token (listed and deleted under beta only).
    HardwareOath {
        id: String,
        display_name: Option<String>,
    },
    /// QR code + PIN (v1.0): one method holding a standard QR code, maybe a temporary one,
    /// and a PIN.
    QrCodePin { id: String },
    /// A type this build does not know: reported as remaining, never deleted.
    Unknown { odata_type: String, id: String },
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

impl AuthMethod {
    /// Parse one element of the `value` array. Never fails: odd entries become `Unknown`.
    pub fn from_json(v: &Value) -> AuthMethod {
        let odata_type = str_field(v, "@odata.type").unwrap_or_default();
        let id = str_field(v, "id").unwrap_or_default();
        let display_name = str_field(v, "displayName");
        let stem = odata_type
            .strip_prefix("#microsoft.graph.")
            .and_then(|t| t.strip_suffix("AuthenticationMethod"))
            .unwrap_or("");
        match stem {
            "password" => AuthMethod::Password { id },
            "phone" => AuthMethod::Phone {
                id,
                phone_number: str_field(v, "phoneNumber").unwrap_or_default(),
                phone_type: str_field(v, "phoneType").unwrap_or_default(),
            },
            "email" => AuthMethod::Email {
                id,
                email_address: str_field(v, "emailAddress").unwrap_or_default(),
            },
            "microsoftAuthenticator" => AuthMethod::MicrosoftAuthenticator { id, display_name },
            "fido2" => AuthMethod::Fido2 {
                id,
                display_name: display_name.or_else(|| str_field(v, "model")),
            },
            "softwareOath" => AuthMethod::SoftwareOath { id },
            "temporaryAccessPass" => AuthMethod::TemporaryAccessPass { id },
            "windowsHelloForBusiness" => AuthMethod::WindowsHelloForBusiness { id, display_name },
            "platformCredential" => AuthMethod::PlatformCredential { id, display_name },
            "external" => AuthMethod::External { id, display_name },
            "hardwareOath" => AuthMethod::HardwareOath { id, display_name },
            "qrCodePin" => AuthMethod::QrCodePin { id },
            _ => AuthMethod::Unknown { odata_type, id },
        }
    }

    /// The method id.
    pub fn id(&self) -> &str {
        match self {
            AuthMethod::Password { id }
            | AuthMethod::Phone { id, .. }
            | AuthMethod::Email { id, .. }
            | AuthMethod::MicrosoftAuthenticator { id, .. }
            | AuthMethod::Fido2 { id, .. }
            | AuthMethod::SoftwareOath { id }
            | AuthMethod::TemporaryAccessPass { id }
            | AuthMethod::WindowsHelloForBusiness { id, .. }
            | AuthMethod::PlatformCredential { id, .. }
            | AuthMethod::External { id, .. }
            | AuthMethod::HardwareOath { id, .. }
            | AuthMethod::QrCodePin { id }
            | AuthMethod::Unknown { id, .. } => id,
        }
    }

    /// The Graph collection stem used in reports and `reset.methods` (`phone`, `fido2`, …);
    /// for an unknown type, its full `@odata.type`.
    pub fn stem(&self) -> &str {
        match self {
            AuthMethod::Password { .. } => "password",
            AuthMethod::Phone { .. } => "phone",
            AuthMethod::Email { .. } => "email",
            AuthMethod::MicrosoftAuthenticator { .. } => "microsoftAuthenticator",
            AuthMethod::Fido2 { .. } => "fido2",
            AuthMethod::SoftwareOath { .. } => "softwareOath",
            AuthMethod::TemporaryAccessPass { .. } => "temporaryAccessPass",
            AuthMethod::WindowsHelloForBusiness { .. } => "windowsHelloForBusiness",
            AuthMethod::PlatformCredential { .. } => "platformCredential",
            AuthMethod::External { .. } => "external",
            AuthMethod::HardwareOath { .. } => "hardwareOath",
            AuthMethod::QrCodePin { .. } => "qrCodePin",
            AuthMethod::Unknown { odata_type, .. } => odata_type,
        }
    }

    /// Every stem this build can delete.
    pub const REMOVABLE_STEMS: [&'static str; 11] = [
        "phone",
        "email",
        "microsoftAuthenticator",
        "fido2",
        "softwareOath",
        "temporaryAccessPass",
        "windowsHelloForBusiness",
        "platformCredential",
        "external",
        "hardwareOath",
        "qrCodePin",
    ];

    /// What the portal's "Require re-register MFA" removes
    /// (<https://learn.microsoft.com/en-us/entra/identity/authentication/howto-mfa-userdevicesettings>);
    /// hardware OATH tokens it deactivates rather than deletes, so they are not here.
    pub const PORTAL_STEMS: [&'static str; 3] = ["phone", "microsoftAuthenticator", "softwareOath"];

    /// True for a type this build knows how to delete (everything but password and unknown types).
    pub fn is_removable(&self) -> bool {
        !matches!(
            self,
            AuthMethod::Password { .. } | AuthMethod::Unknown { .. }
        )
    }

    /// True for a type only reachable under `/beta`: hardware OATH tokens. v1.0 lists and
    /// deletes every other type (QR code + PIN included).
    pub fn is_beta_only(&self) -> bool {
        matches!(self, AuthMethod::HardwareOath { .. })
    }

    /// Path of its DELETE under `/users/{u}/authentication/`, `None` when it cannot be deleted.
    ///
    /// QR code + PIN is deleted whole at `qrCodePinMethod` (both QR codes and the PIN):
    /// `qrCodePinMethod/standardQRCode` would delete the badge's code only and leave the
    /// method registered
    /// (<https://learn.microsoft.com/en-us/graph/api/qrcodepinauthenticationmethod-delete>).
    pub fn delete_path(&self) -> Option<String> {
        let id = self.id();
        Some(match self {
            AuthMethod::Password { .. } | AuthMethod::Unknown { .. } => return None,
            AuthMethod::Phone { .. } => format!("phoneMethods/{id}"),
            AuthMethod::Email { .. } => format!("emailMethods/{id}"),
            AuthMethod::MicrosoftAuthenticator { .. } => {
                format!("microsoftAuthenticatorMethods/{id}")
            }
            AuthMethod::Fido2 { .. } => format!("fido2Methods/{id}"),
            AuthMethod::SoftwareOath { .. } => format!("softwareOathMethods/{id}"),
            AuthMethod::TemporaryAccessPass { .. } => format!("temporaryAccessPassMethods/{id}"),
            AuthMethod::WindowsHelloForBusiness { .. } => {
                format!("windowsHelloForBusinessMethods/{id}")
            }
            AuthMethod::PlatformCredential { .. } => format!("platformCredentialMethods/{id}"),
            AuthMethod::External { .. } => format!("externalAuthenticationMethods/{id}/$ref"),
            AuthMethod::HardwareOath { .. } => format!("hardwareOathMethods/{id}"),
            AuthMethod::QrCodePin { .. } => "qrCodePinMethod".to_string(),
        })
    }

    /// Could this method be the user's default MFA method, given the
    /// `userPreferredMethodForSecondaryAuthentication` value?
    pub fn matches_default(&self, preferred: &str) -> bool {
        match (self, preferred) {
            (AuthMethod::MicrosoftAuthenticator { .. }, "push") => true,
            (AuthMethod::SoftwareOath { .. } | AuthMethod::HardwareOath { .. }, "oath") => true,
            (AuthMethod::Phone { phone_type, .. }, "sms" | "voiceMobile") => phone_type == "mobile",
            (AuthMethod::Phone { phone_type, .. }, "voiceAlternateMobile") => {
                phone_type == "alternateMobile"
            }
            (AuthMethod::Phone { phone_type, .. }, "voiceOffice") => phone_type == "office",
            _ => false,
        }
    }

    /// Could this type be a default MFA method at all?
    pub fn can_be_default(&self) -> bool {
        matches!(
            self,
            AuthMethod::MicrosoftAuthenticator { .. }
                | AuthMethod::SoftwareOath { .. }
                | AuthMethod::HardwareOath { .. }
                | AuthMethod::Phone { .. }
        )
    }

    /// The outcome record: masked details only. A backup of the full value is added, sealed,
    /// by the reset (`crate::backup`), from [`AuthMethod::backup_value`].
    pub fn record(&self) -> MethodRecord {
        let mut rec = MethodRecord {
            kind: self.stem().to_string(),
            id: self.id().to_string(),
            ..MethodRecord::default()
        };
        match self {
            AuthMethod::Phone {
                phone_number,
                phone_type,
                ..
            } => {
                rec.masked = Some(mask_phone(phone_number));
                rec.phone_type = Some(phone_type.clone());
            }
            AuthMethod::Email { email_address, .. } => {
                rec.masked = Some(mask_email(email_address));
            }
            AuthMethod::MicrosoftAuthenticator { display_name, .. }
            | AuthMethod::Fido2 { display_name, .. }
            | AuthMethod::WindowsHelloForBusiness { display_name, .. }
            | AuthMethod::PlatformCredential { display_name, .. }
            | AuthMethod::External { display_name, .. }
            | AuthMethod::HardwareOath { display_name, .. } => {
                rec.display_name = display_name.clone();
            }
            _ => {}
        }
        rec
    }
}

impl AuthMethod {
    /// The value `restore` can re-create the method from: a phone's number, an email method's
    /// address; `None` for every other type (their secrets stay on the user's device).
    pub fn backup_value(&self) -> Option<&str> {
        match self {
            AuthMethod::Phone { phone_number, .. } => Some(phone_number),
            AuthMethod::Email { email_address, .. } => Some(email_address),
            _ => None,
        }
    }
}

/// A listed method and when it was registered: `createdDateTime`, which Graph's base
/// `authenticationMethod` type carries in v1.0 (optional: `None` when Graph does not populate it,
/// as for phones and email addresses)
/// (<https://learn.microsoft.com/en-us/graph/api/resources/authenticationmethod>).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The method.
    pub method: AuthMethod,
    /// When it was registered, when Graph says.
    pub created: Option<chrono::DateTime<chrono::Utc>>,
}

impl Registered {
    /// Parse one element of a listing's `value` array (never fails, as [`AuthMethod::from_json`]).
    pub fn from_json(v: &Value) -> Registered {
        let created = v
            .get("createdDateTime")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        Registered {
            method: AuthMethod::from_json(v),
            created,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_types_parse_and_unknown_types_are_kept() {
        let phone = AuthMethod::from_json(&json!({
            "@odata.type": "#microsoft.graph.phoneAuthenticationMethod",
            "id": "3179e48a-750b-4051-897c-87b9720928f7",
            "phoneNumber": "+1 5555551234", "phoneType": "mobile"
        }));
        assert_eq!(phone.stem(), "phone");
        assert_eq!(
            phone.delete_path().unwrap(),
            "phoneMethods/3179e48a-750b-4051-897c-87b9720928f7"
        );
        let future = AuthMethod::from_json(&json!({
            "@odata.type": "#microsoft.graph.quantumAuthenticationMethod", "id": "q1"
        }));
        assert!(matches!(future, AuthMethod::Unknown { .. }));
        assert!(!future.is_removable());
        assert_eq!(future.delete_path(), None);
        let ext = AuthMethod::from_json(&json!({
            "@odata.type": "#microsoft.graph.externalAuthenticationMethod", "id": "e1"
        }));
        assert_eq!(
            ext.delete_path().unwrap(),
            "externalAuthenticationMethods/e1/$ref"
        );
    }

    #[test]
    fn qr_code_pin_is_deleted_whole_under_v1_and_hardware_oath_under_beta() {
        let qr = AuthMethod::from_json(&json!({
            "@odata.type": "#microsoft.graph.qrCodePinAuthenticationMethod", "id": "q"
        }));
        let hardware = AuthMethod::from_json(&json!({
            "@odata.type": "#microsoft.graph.hardwareOathAuthenticationMethod", "id": "h"
        }));
        assert_eq!(qr.delete_path().as_deref(), Some("qrCodePinMethod"));
        assert!(!qr.is_beta_only());
        assert_eq!(
            hardware.delete_path().as_deref(),
            Some("hardwareOathMethods/h")
        );
        assert!(hardware.is_beta_only());
    }

    #[test]
    fn records_hold_masked_values_only() {
        let phone = AuthMethod::Phone {
            id: "p".into(),
            phone_number: "+1 5555551234".into(),
            phone_type: "mobile".into(),
        };
        let rec = phone.record();
        assert_eq!(rec.masked.as_deref(), Some("+1 ******1234"));
        assert_eq!(rec.backup_sealed, None);
        assert!(!serde_json::to_string(&rec).unwrap().contains("5555551234"));
        assert_eq!(phone.backup_value(), Some("+1 5555551234"));
    }
}
