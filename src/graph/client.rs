//! [`GraphClient`]: every Graph call mfa-reset makes, all through one send loop.
//!
//! This file holds the client and its calls, each one URL and one parse of the answer. Every
//! call goes through the send loop in `send.rs` (`GraphClient::execute`); what follows each
//! attempt (renew the token, pause everyone, back off, give up, already applied, done) is
//! decided and unit-tested in `attempt.rs`. A call that gives up hands its error back; the
//! caller hands retryable ones to a broker delay tier (the broker's 30-minute ack timeout is
//! never approached in process).

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use secrecy::SecretString;
use serde_json::{json, Value};

use super::address::{encode_delete_path, encode_segment, is_under, origin};
use super::attempt::OnNotFound;
use super::{user_path, AuthMethod, Budget, Error, PauseGate, ThrottleStats, TokenProvider};
use crate::config::{GraphSettings, RateSettings, RetrySettings};
use crate::domain::UserRef;

/// A member of a group, as `enqueue --group` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Object id.
    pub id: String,
    /// UPN, when Graph gave one.
    pub user_principal_name: Option<String>,
}

/// A Temporary Access Pass just created. The pass itself is a secret: hand it to the user
/// through a safe channel, never log it.
#[derive(Debug, Clone)]
pub struct TemporaryAccessPass {
    /// Method id.
    pub id: String,
    /// The pass, in plain text (Graph shows it only in this answer).
    pub pass: SecretString,
    /// When it becomes usable, as Graph reported it.
    pub start_date_time: Option<String>,
    /// Lifetime in minutes.
    pub lifetime_in_minutes: u32,
    /// Usable once only.
    pub is_usable_once: bool,
}

/// The Graph client: one per process, cheap to clone, shares its token cache, budget and pause gate.
#[derive(Clone)]
pub struct GraphClient {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    pub(super) v1: String,
    pub(super) beta: String,
    /// `scheme://host[:port]` of the Graph roots: a nextLink elsewhere is refused (it would
    /// receive our bearer token).
    pub(super) origins: [String; 2],
    pub(super) list_from_beta: bool,
    pub(super) page_size: u32,
    pub(super) tokens: TokenProvider,
    pub(super) budget: Arc<Budget>,
    pub(super) gate: Arc<PauseGate>,
    pub(super) stats: Arc<ThrottleStats>,
    pub(super) retry: RetrySettings,
}

impl GraphClient {
    /// Build a client from settings. Fails when no credential is configured.
    pub fn new(
        graph: &GraphSettings,
        rate: &RateSettings,
        retry: &RetrySettings,
    ) -> anyhow::Result<GraphClient> {
        let stats = Arc::new(ThrottleStats::default());
        let budget = Arc::new(Budget::with_stats(rate, stats.clone())?);
        GraphClient::with_shared(graph, retry, budget, Arc::new(PauseGate::default()))
    }

    /// Build a client around an existing budget and pause gate (tests, benchmarks, or several
    /// clients in one process that must share one budget). Stats are the budget's.
    pub fn with_shared(
        graph: &GraphSettings,
        retry: &RetrySettings,
        budget: Arc<Budget>,
        gate: Arc<PauseGate>,
    ) -> anyhow::Result<GraphClient> {
        anyhow::ensure!(
            retry.max_attempts >= 1,
            "retry.max_attempts must be at least 1"
        );
        anyhow::ensure!(
            (1..=999).contains(&graph.page_size),
            "graph.page_size must be between 1 and 999"
        );
        let http = reqwest::Client::builder()
            .timeout(graph.request_timeout)
            .connect_timeout(graph.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("mfa-reset/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let tokens = TokenProvider::new(graph, http.clone())?;
        let v1 = graph.v1_url();
        let beta = graph.beta_url();
        let origins = [origin(&v1), origin(&beta)];
        Ok(GraphClient {
            inner: Arc::new(Inner {
                http,
                v1,
                beta,
                origins,
                list_from_beta: graph.list_methods_from_beta,
                page_size: graph.page_size,
                tokens,
                stats: budget.stats().clone(),
                budget,
                gate,
                retry: retry.clone(),
            }),
        })
    }

    /// Counters for metrics and benchmarks.
    pub fn stats(&self) -> Arc<ThrottleStats> {
        self.inner.stats.clone()
    }

    /// The process's budget.
    pub fn budget(&self) -> Arc<Budget> {
        self.inner.budget.clone()
    }

    /// The process's Retry-After pause.
    pub fn gate(&self) -> Arc<PauseGate> {
        self.inner.gate.clone()
    }

    /// The token provider (tests check that renewals are single-flight).
    pub fn tokens(&self) -> &TokenProvider {
        &self.inner.tokens
    }

    fn user_url(&self, beta: bool, user: &UserRef, rest: &str) -> String {
        let root = if beta {
            &self.inner.beta
        } else {
            &self.inner.v1
        };
        format!("{root}/{}{rest}", user_path(user))
    }

    /// `GET /users/{u}/authentication/methods`, from the beta root unless
    /// `graph.list_methods_from_beta` is off: v1.0 does not list hardware OATH tokens or
    /// QR code + PIN, and a reset that cannot see a method cannot remove it.
    pub async fn list_methods(&self, user: &UserRef) -> Result<Vec<AuthMethod>, Error> {
        let url = self.user_url(self.inner.list_from_beta, user, "/authentication/methods");
        let items = self.get_paged(url).await?;
        Ok(items.iter().map(AuthMethod::from_json).collect())
    }

    /// The DELETE for `method`; a 404 on a retry of it counts as success.
    ///
    /// Beta-only types are deleted under `/beta`, the rest under `/v1.0`. A method that cannot
    /// be deleted (password, unknown types) is a `BadRequest` without any request.
    pub async fn delete_method(&self, user: &UserRef, method: &AuthMethod) -> Result<(), Error> {
        let Some(path) = method.delete_path() else {
            return Err(Error::NotDeletable {
                stem: method.stem().to_string(),
            });
        };
        // Method ids come from Graph, but encode them anyway: they end up in a URL path.
        let path = encode_delete_path(&path);
        let url = self.user_url(
            method.is_beta_only(),
            user,
            &format!("/authentication/{path}"),
        );
        self.execute(Method::DELETE, url, None, OnNotFound::GoneAfterRetry)
            .await
            .map(|_| ())
    }

    /// `GET /beta/users/{u}/authentication/signInPreferences` →
    /// `userPreferredMethodForSecondaryAuthentication` (`push`, `oath`, `sms`, `voiceMobile`, …).
    pub async fn default_method(&self, user: &UserRef) -> Result<Option<String>, Error> {
        let url = self.user_url(true, user, "/authentication/signInPreferences");
        let answer = self
            .execute(Method::GET, url, None, OnNotFound::Error)
            .await?;
        let body = answer.json()?;
        Ok(body
            .get("userPreferredMethodForSecondaryAuthentication")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string))
    }

    /// `PATCH /beta/users/{u}/authentication/signInPreferences` with
    /// `userPreferredMethodForSecondaryAuthentication` = `preferred` (`voiceMobile`, `push`, …).
    pub async fn set_default_method(&self, user: &UserRef, preferred: &str) -> Result<(), Error> {
        let url = self.user_url(true, user, "/authentication/signInPreferences");
        let body = json!({ "userPreferredMethodForSecondaryAuthentication": preferred });
        self.execute(Method::PATCH, url, Some(body), OnNotFound::Error)
            .await
            .map(|_| ())
    }

    /// `POST /users/{u}/revokeSignInSessions`.
    pub async fn revoke_sessions(&self, user: &UserRef) -> Result<(), Error> {
        let url = self.user_url(false, user, "/revokeSignInSessions");
        self.execute(Method::POST, url, None, OnNotFound::Error)
            .await
            .map(|_| ())
    }

    /// `GET /users/{u}?$select=id,userPrincipalName`: the user's object id and UPN, so a
    /// user requested by one can be matched against a list holding the other.
    pub async fn user_identity(&self, user: &UserRef) -> Result<(String, String), Error> {
        let url = self.user_url(false, user, "?$select=id,userPrincipalName");
        let answer = self
            .execute(Method::GET, url, None, OnNotFound::Error)
            .await?;
        let body = answer.json()?;
        let text = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ok((text("id"), text("userPrincipalName")))
    }

    /// Display names of the directory roles the user holds (transitively).
    pub async fn directory_roles(&self, user: &UserRef) -> Result<Vec<String>, Error> {
        let url = self.user_url(
            false,
            user,
            "/transitiveMemberOf/microsoft.graph.directoryRole",
        );
        let items = self.get_paged(url).await?;
        Ok(items
            .iter()
            .filter_map(|r| r.get("displayName").and_then(Value::as_str))
            .map(str::to_string)
            .collect())
    }

    /// Every user member of a group, following `@odata.nextLink`.
    pub async fn group_members(
        &self,
        group_id: &str,
        transitive: bool,
    ) -> Result<Vec<GroupMember>, Error> {
        let kind = if transitive {
            "transitiveMembers"
        } else {
            "members"
        };
        let url = format!(
            "{}/groups/{}/{kind}/microsoft.graph.user?$select=id,userPrincipalName&$top={}",
            self.inner.v1,
            encode_segment(group_id),
            self.inner.page_size
        );
        let items = self.get_paged(url).await?;
        Ok(items
            .iter()
            .filter_map(|m| {
                Some(GroupMember {
                    id: m.get("id")?.as_str()?.to_string(),
                    user_principal_name: m
                        .get("userPrincipalName")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
            })
            .collect())
    }

    /// `POST /users/{u}/authentication/phoneMethods` (restore).
    pub async fn create_phone_method(
        &self,
        user: &UserRef,
        phone_number: &str,
        phone_type: &str,
    ) -> Result<(), Error> {
        let url = self.user_url(false, user, "/authentication/phoneMethods");
        let body = json!({ "phoneNumber": phone_number, "phoneType": phone_type });
        self.execute(Method::POST, url, Some(body), OnNotFound::Error)
            .await
            .map(|_| ())
    }

    /// `POST /users/{u}/authentication/emailMethods` (restore).
    pub async fn create_email_method(&self, user: &UserRef, email: &str) -> Result<(), Error> {
        let url = self.user_url(false, user, "/authentication/emailMethods");
        let body = json!({ "emailAddress": email });
        self.execute(Method::POST, url, Some(body), OnNotFound::Error)
            .await
            .map(|_| ())
    }

    /// `POST /users/{u}/authentication/temporaryAccessPassMethods`: a new Temporary Access
    /// Pass (replacing any existing one), usable for `lifetime_in_minutes` (10..=43200).
    pub async fn create_temporary_access_pass(
        &self,
        user: &UserRef,
        lifetime_in_minutes: u32,
        is_usable_once: bool,
    ) -> Result<TemporaryAccessPass, Error> {
        let url = self.user_url(false, user, "/authentication/temporaryAccessPassMethods");
        let body =
            json!({ "lifetimeInMinutes": lifetime_in_minutes, "isUsableOnce": is_usable_once });
        let answer = self
            .execute(Method::POST, url, Some(body), OnNotFound::Error)
            .await?;
        let json = answer.json()?;
        let text = |k: &str| json.get(k).and_then(Value::as_str).map(str::to_string);
        let pass = text("temporaryAccessPass").ok_or_else(|| Error::InvalidResponse {
            status: answer.status,
            message: "Graph created a Temporary Access Pass but did not return it".into(),
        })?;
        Ok(TemporaryAccessPass {
            id: text("id").unwrap_or_default(),
            pass: SecretString::from(pass),
            start_date_time: text("startDateTime"),
            lifetime_in_minutes: json
                .get("lifetimeInMinutes")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(lifetime_in_minutes),
            is_usable_once: json
                .get("isUsableOnce")
                .and_then(Value::as_bool)
                .unwrap_or(is_usable_once),
        })
    }

    /// GET `url` and every `@odata.nextLink` after it (the whole URL, as Graph requires);
    /// the concatenated `value` arrays.
    async fn get_paged(&self, url: String) -> Result<Vec<Value>, Error> {
        let mut items = Vec::new();
        let mut next = Some(url);
        while let Some(url) = next.take() {
            let answer = self
                .execute(Method::GET, url, None, OnNotFound::Error)
                .await?;
            let mut body = answer.json()?;
            if let Some(Value::Array(page)) = body.get_mut("value").map(Value::take) {
                items.extend(page);
            }
            if let Some(link) = body.get("@odata.nextLink").and_then(Value::as_str) {
                if !self.inner.origins.iter().any(|o| is_under(link, o)) {
                    return Err(Error::BadRequest {
                        status: answer.status,
                        code: "foreignNextLink".into(),
                        message: format!("@odata.nextLink points outside Graph: {link}"),
                    });
                }
                next = Some(link.to_string());
            }
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GraphSettings {
        GraphSettings {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: Some(SecretString::from("s")),
            base_url: "http://127.0.0.1:9/v1.0".into(),
            ..GraphSettings::default()
        }
    }

    #[test]
    fn a_client_needs_a_credential_and_ids() {
        let none = GraphSettings {
            client_secret: None,
            ..settings()
        };
        let err = GraphClient::new(&none, &RateSettings::default(), &RetrySettings::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("set graph.client_secret (MFA_RESET__GRAPH__CLIENT_SECRET) or graph.client_certificate + graph.client_private_key"), "{err}");
        let no_client = GraphSettings {
            client_id: " ".into(),
            ..settings()
        };
        assert!(GraphClient::new(
            &no_client,
            &RateSettings::default(),
            &RetrySettings::default()
        )
        .is_err());
        assert!(GraphClient::new(
            &settings(),
            &RateSettings::default(),
            &RetrySettings::default()
        )
        .is_ok());
    }

    #[test]
    fn user_urls_use_the_right_root_and_encoding() {
        let client = GraphClient::new(
            &settings(),
            &RateSettings::default(),
            &RetrySettings::default(),
        )
        .unwrap();
        let guest = UserRef::parse("ann_fabrikam.com#EXT#@contoso.onmicrosoft.com").unwrap();
        assert_eq!(
            client.user_url(true, &guest, "/authentication/methods"),
            "http://127.0.0.1:9/beta/users/ann_fabrikam.com%23EXT%23@contoso.onmicrosoft.com/authentication/methods"
        );
    }
}
