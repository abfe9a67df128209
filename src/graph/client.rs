//! [`GraphClient`]: every Graph call mfa-reset makes, all through one send loop.
//!
//! This file holds the client and its calls, each one URL and one parse of the answer. Every
//! call goes through the send loop in `send.rs` (`GraphClient::execute`); what follows each
//! attempt (renew the token, pause everyone, back off, give up, already applied, done) is
//! decided and unit-tested in `attempt.rs`. A call that gives up hands its error back; the
//! caller hands retryable ones to a broker delay tier (the broker's 30-minute ack timeout is
//! never approached in process).
//!
//! v1.0 unless a call or a type exists only in beta: Microsoft does not support beta in
//! production (<https://learn.microsoft.com/en-us/graph/versioning-and-support>). Beta serves
//! `signInPreferences` (the default method), hardware OATH tokens (only when a listing asks for
//! them, [`Listing::WithHardwareOath`]), and `transitiveRoleAssignments` (the privilege
//! check); `graph.list_methods_from_beta` lists everything from beta instead.
//!
//! A 403 on a call that only the app's permission governs (reading a user, listing methods,
//! listing a group) is the app's fault, not the user's: [`Error::App`] with
//! [`AppFault::PermissionMissing`], class `Halt`.
//!
//! Why one file of this size: it holds one method per Graph call mfa-reset makes (about
//! twenty), each a URL and one parse of the answer; the send loop is `send.rs`, its decisions
//! `attempt.rs`, the types `methods.rs` and `directory.rs`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use secrecy::SecretString;
use serde_json::{json, Value};

use uuid::Uuid;

use super::address::{encode_delete_path, encode_segment, is_under, origin, UserAddress};
use super::attempt::OnNotFound;
use super::directory::{
    DirectoryUser, GroupMember, GroupUsers, Privilege, RoleHeld, SkippedMembers,
};
use super::{
    AppFault, AuthMethod, Budget, Error, PauseGate, Registered, ThrottleStats, TokenProvider,
};
use crate::config::{GraphSettings, RateSettings, RetrySettings};
use crate::domain::UserRef;

/// The request header of an advanced query on directory objects (with `$count=true`).
const EVENTUAL: [(&str, &str); 1] = [("ConsistencyLevel", "eventual")];

/// Application permissions whose absence makes a call answer 403 for every user.
const READ_USERS: &str = "User.Read.All";
const MANAGE_METHODS: &str = "UserAuthenticationMethod.ReadWrite.All";
const READ_GROUP_MEMBERS: &str = "GroupMember.Read.All";
const READ_ROLES: &str = "RoleManagement.Read.Directory";

/// Which methods a listing must show (see [`GraphClient::list_methods_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// `GET /v1.0/users/{u}/authentication/methods`: every type but hardware OATH tokens.
    Supported,
    /// The v1.0 listing plus `GET /beta/users/{u}/authentication/hardwareOathMethods`, the one
    /// type only beta shows: for a scope that removes hardware OATH tokens.
    WithHardwareOath,
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
        // https only, except on loopback (the simulator): a bearer token in clear is handed out.
        if !graph.allow_insecure_http {
            crate::net::require_https(&graph.v1_url(), "graph.base_url")?;
            crate::net::require_https(&graph.beta_url(), "graph.beta_url")?;
            crate::net::require_https(&graph.token_url(), "graph.authority")?;
        }
        let all_https = [graph.v1_url(), graph.beta_url(), graph.token_url()]
            .iter()
            .all(|u| u.starts_with("https://"));
        let http = reqwest::Client::builder()
            // With real endpoints, a redirect to http:// is refused too.
            .https_only(all_https)
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

    fn user_url(&self, beta: bool, user: &(impl UserAddress + ?Sized), rest: &str) -> String {
        let root = if beta {
            &self.inner.beta
        } else {
            &self.inner.v1
        };
        format!("{root}/{}{rest}", user.graph_path())
    }

    /// Drop the cached token and get a new one: what to do before trying again after a
    /// `Halt` (only a token issued after admin consent or a permission was granted carries
    /// it). Hands back the token endpoint's error when the app still cannot get one.
    pub async fn renew_token(&self) -> Result<(), Error> {
        self.inner.tokens.forget().await;
        self.inner.tokens.token().await.map(|_| ())
    }

    /// A 403 from a call only the app's `permission` governs: the app's fault, not the user's.
    /// The cached token is dropped so that the next try gets a token issued after a fix.
    async fn app_wide_if_forbidden(&self, error: Error, permission: &'static str) -> Error {
        match error {
            Error::Forbidden { code, message } => {
                self.inner.tokens.forget().await;
                Error::App {
                    fault: AppFault::PermissionMissing(permission),
                    status: Some(403),
                    code,
                    message,
                }
            }
            other => other,
        }
    }

    /// `GET /users/{u}?$select=id,userPrincipalName,userType`: the user's object id, current
    /// UPN and type, read once so that every later call addresses the user by object id (pass
    /// the [`DirectoryUser`] as the user of those calls).
    ///
    /// 404: no such user ([`Error::NotFound`], permanent). 403: the app lacks `User.Read.All`
    /// ([`Error::App`], halt).
    pub async fn resolve_user(&self, user: &UserRef) -> Result<DirectoryUser, Error> {
        let url = self.user_url(false, user, "?$select=id,userPrincipalName,userType");
        let answer = match self
            .execute(Method::GET, url, None, OnNotFound::Error)
            .await
        {
            Ok(answer) => answer,
            Err(e) => return Err(self.app_wide_if_forbidden(e, READ_USERS).await),
        };
        let body = answer.json()?;
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let id = text("id")
            .and_then(|id| Uuid::try_parse(&id).ok())
            .ok_or_else(|| Error::InvalidResponse {
                status: answer.status,
                message: format!("the user {user} came without an object id"),
            })?;
        Ok(DirectoryUser {
            id,
            user_principal_name: text("userPrincipalName").unwrap_or_default(),
            user_type: text("userType"),
        })
    }

    /// `GET /users/{u}/authentication/methods`, from the beta root when
    /// `graph.list_methods_from_beta` is on, else from v1.0 alone (hardware OATH tokens
    /// unseen). Kept for callers that do not say what they need; see
    /// [`GraphClient::list_methods_with`].
    pub async fn list_methods(
        &self,
        user: &(impl UserAddress + ?Sized),
    ) -> Result<Vec<AuthMethod>, Error> {
        let url = self.user_url(self.inner.list_from_beta, user, "/authentication/methods");
        match self.get_paged(url).await {
            Ok(items) => Ok(items.iter().map(AuthMethod::from_json).collect()),
            Err(e) => Err(self.app_wide_if_forbidden(e, MANAGE_METHODS).await),
        }
    }

    /// A user's methods, listed as `listing` asks: v1.0, plus beta's hardware OATH collection
    /// for [`Listing::WithHardwareOath`] (the only type v1.0 does not list; Microsoft does not
    /// support beta in production, so nothing else is read from it). With
    /// `graph.list_methods_from_beta` on, the whole listing comes from beta instead.
    ///
    /// 403: the app lacks `UserAuthenticationMethod.ReadWrite.All` ([`Error::App`], halt).
    pub async fn list_methods_with(
        &self,
        user: &(impl UserAddress + ?Sized),
        listing: Listing,
    ) -> Result<Vec<AuthMethod>, Error> {
        Ok(self
            .list_registered(user, listing)
            .await?
            .into_iter()
            .map(|r| r.method)
            .collect())
    }

    /// The requests one [`GraphClient::list_registered`] makes (one page each): the v1.0
    /// listing, plus beta's hardware OATH collection for [`Listing::WithHardwareOath`].
    pub fn listing_requests(&self, listing: Listing) -> u32 {
        match listing {
            Listing::WithHardwareOath if !self.inner.list_from_beta => 2,
            _ => 1,
        }
    }

    /// [`GraphClient::list_methods_with`], each method with its `createdDateTime` (so a reset
    /// can leave alone what the user registered after the request was made).
    pub async fn list_registered(
        &self,
        user: &(impl UserAddress + ?Sized),
        listing: Listing,
    ) -> Result<Vec<Registered>, Error> {
        if self.inner.list_from_beta {
            let url = self.user_url(true, user, "/authentication/methods");
            return match self.get_paged(url).await {
                Ok(items) => Ok(items.iter().map(Registered::from_json).collect()),
                Err(e) => Err(self.app_wide_if_forbidden(e, MANAGE_METHODS).await),
            };
        }
        let mut items = match self
            .get_paged(self.user_url(false, user, "/authentication/methods"))
            .await
        {
            Ok(items) => items,
            Err(e) => return Err(self.app_wide_if_forbidden(e, MANAGE_METHODS).await),
        };
        if listing == Listing::WithHardwareOath {
            let url = self.user_url(true, user, "/authentication/hardwareOathMethods");
            let tokens = match self.get_paged(url).await {
                Ok(tokens) => tokens,
                Err(e) => return Err(self.app_wide_if_forbidden(e, MANAGE_METHODS).await),
            };
            for mut token in tokens {
                // A typed collection may leave the type out of its items.
                if let Value::Object(fields) = &mut token {
                    fields.entry("@odata.type").or_insert_with(|| {
                        Value::String("#microsoft.graph.hardwareOathAuthenticationMethod".into())
                    });
                }
                let id = token.get("id").cloned();
                // Should v1.0 start listing them, each still appears once.
                if !items.iter().any(|i| i.get("id") == id.as_ref()) {
                    items.push(token);
                }
            }
        }
        Ok(items.iter().map(Registered::from_json).collect())
    }

    /// The DELETE for `method`; a 404 on a retry of it counts as success.
    ///
    /// Beta-only types (hardware OATH) are deleted under `/beta`, the rest under `/v1.0`. A
    /// method that cannot be deleted (password, unknown types) is a `NotDeletable` without any
    /// request.
    pub async fn delete_method(
        &self,
        user: &(impl UserAddress + ?Sized),
        method: &AuthMethod,
    ) -> Result<(), Error> {
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
    pub async fn default_method(
        &self,
        user: &(impl UserAddress + ?Sized),
    ) -> Result<Option<String>, Error> {
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
    pub async fn set_default_method(
        &self,
        user: &(impl UserAddress + ?Sized),
        preferred: &str,
    ) -> Result<(), Error> {
        let url = self.user_url(true, user, "/authentication/signInPreferences");
        let body = json!({ "userPreferredMethodForSecondaryAuthentication": preferred });
        self.execute(Method::PATCH, url, Some(body), OnNotFound::Error)
            .await
            .map(|_| ())
    }

    /// `POST /users/{u}/revokeSignInSessions` (least privilege: `User.RevokeSessions.All`).
    ///
    /// Graph answers success for an external user too but revokes nothing: they sign in
    /// through their home tenant ([`DirectoryUser::is_external`]). Do not claim otherwise.
    pub async fn revoke_sessions(&self, user: &(impl UserAddress + ?Sized)) -> Result<(), Error> {
        let url = self.user_url(false, user, "/revokeSignInSessions");
        self.execute(Method::POST, url, None, OnNotFound::Error)
            .await
            .map(|_| ())
    }

    /// `GET /users/{u}?$select=id,userPrincipalName`: the user's object id and UPN, so a
    /// user requested by one can be matched against a list holding the other. Superseded by
    /// [`GraphClient::resolve_user`].
    pub async fn user_identity(&self, user: &UserRef) -> Result<(String, String), Error> {
        let resolved = self.resolve_user(user).await?;
        Ok((resolved.id.to_string(), resolved.user_principal_name))
    }

    /// Whether `user` holds any directory role, through the role-management API by object id:
    ///
    /// - `GET /beta/roleManagement/directory/transitiveRoleAssignments?$count=true&$filter=principalId eq '{id}'`
    ///   (`ConsistencyLevel: eventual`): active assignments, direct or through a group;
    /// - `GET /v1.0/roleManagement/directory/roleEligibilityScheduleInstances?$filter=principalId eq '{id}'`:
    ///   PIM eligibilities (a user can activate one at will, after an MFA prompt that a reset
    ///   would let an attacker answer).
    ///
    /// Any entry makes the user [`Privilege::Privileged`], however little Graph says about it.
    /// Needs `RoleManagement.Read.Directory`.
    ///
    /// **Fail closed**: on `Err` the user must not be reset. A 403 (the app lacks the
    /// permission) is [`Error::Forbidden`] naming it; a retryable error may be tried again
    /// later; any other error ends the user untouched, saying the check could not be made.
    pub async fn privilege(&self, user: &DirectoryUser) -> Result<Privilege, Error> {
        let filter = format!("$filter=principalId%20eq%20'{}'", user.id.hyphenated());
        let active_url = format!(
            "{}/roleManagement/directory/transitiveRoleAssignments?$count=true&{filter}",
            self.inner.beta
        );
        let eligible_url = format!(
            "{}/roleManagement/directory/roleEligibilityScheduleInstances?{filter}",
            self.inner.v1
        );
        let named = |e: Error| match e {
            Error::Forbidden { code, message } => Error::Forbidden {
                code,
                message: format!(
                    "{message} (the privilege check needs the application permission {READ_ROLES})"
                ),
            },
            other => other,
        };
        let active = self
            .get_paged_with(active_url, &EVENTUAL)
            .await
            .map_err(named)?;
        let eligible = self
            .get_paged_with(eligible_url, &[])
            .await
            .map_err(named)?;
        let roles: Vec<RoleHeld> = active
            .iter()
            .map(|entry| RoleHeld::from_entry(entry, &user.id, false))
            .chain(
                eligible
                    .iter()
                    .map(|entry| RoleHeld::from_entry(entry, &user.id, true)),
            )
            .collect();
        Ok(if roles.is_empty() {
            Privilege::NotPrivileged
        } else {
            Privilege::Privileged { roles }
        })
    }

    /// Names of the directory roles the user holds actively (transitively): the old check,
    /// which misses PIM-eligible roles. Superseded by [`GraphClient::privilege`].
    ///
    /// A cast on a transitive list is an advanced query (`ConsistencyLevel: eventual`,
    /// `$count=true`). A role the app may not read comes with only its id: it is named by
    /// that id rather than dropped, so the check fails closed.
    pub async fn directory_roles(
        &self,
        user: &(impl UserAddress + ?Sized),
    ) -> Result<Vec<String>, Error> {
        let url = self.user_url(
            false,
            user,
            "/transitiveMemberOf/microsoft.graph.directoryRole?$count=true",
        );
        let items = self.get_paged_with(url, &EVENTUAL).await?;
        Ok(items
            .iter()
            .map(|r| {
                let id = r.get("id").and_then(Value::as_str).unwrap_or("?");
                match r.get("displayName").and_then(Value::as_str) {
                    Some(name) => name.to_string(),
                    None => format!("directory role {id} (its name is not readable by the app)"),
                }
            })
            .collect())
    }

    /// Every member of a group (`transitive`: of its nested groups too), sorted by type:
    /// users are kept, devices, service principals, groups, contacts and anything else are
    /// counted as skipped.
    ///
    /// `GET /groups/{id}/{members|transitiveMembers}?$select=id,userPrincipalName&$top={page_size}&$count=true`
    /// with `ConsistencyLevel: eventual`, following `@odata.nextLink`. No OData cast: a cast
    /// would hide exactly what is reported as skipped, so each member's `@odata.type` decides.
    /// 403: the app lacks `GroupMember.Read.All` ([`Error::App`]).
    pub async fn group_users(&self, group_id: &str, transitive: bool) -> Result<GroupUsers, Error> {
        let kind = if transitive {
            "transitiveMembers"
        } else {
            "members"
        };
        let url = format!(
            "{}/groups/{}/{kind}?$select=id,userPrincipalName&$top={}&$count=true",
            self.inner.v1,
            encode_segment(group_id),
            self.inner.page_size
        );
        let (items, reported_count) = match self.get_paged_counted(url, &EVENTUAL).await {
            Ok(listed) => listed,
            Err(e) => return Err(self.app_wide_if_forbidden(e, READ_GROUP_MEMBERS).await),
        };
        let mut users: Vec<GroupMember> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut skipped = SkippedMembers::default();
        for member in &items {
            let odata_type = member.get("@odata.type").and_then(Value::as_str);
            let id = member.get("id").and_then(Value::as_str);
            match (odata_type.map(|t| t.trim_start_matches('#')), id) {
                (Some("microsoft.graph.user"), Some(id)) => {
                    if seen.insert(id.to_ascii_lowercase()) {
                        users.push(GroupMember {
                            id: id.to_string(),
                            user_principal_name: member
                                .get("userPrincipalName")
                                .and_then(Value::as_str)
                                .map(str::to_string),
                        });
                    }
                }
                _ => skipped.count(odata_type),
            }
        }
        Ok(GroupUsers {
            users,
            skipped,
            reported_count,
        })
    }

    /// The user members of a group (see [`GraphClient::group_users`], which also says what
    /// was skipped).
    pub async fn group_members(
        &self,
        group_id: &str,
        transitive: bool,
    ) -> Result<Vec<GroupMember>, Error> {
        Ok(self.group_users(group_id, transitive).await?.users)
    }

    /// `POST /users/{u}/authentication/phoneMethods` (restore).
    pub async fn create_phone_method(
        &self,
        user: &(impl UserAddress + ?Sized),
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
    pub async fn create_email_method(
        &self,
        user: &(impl UserAddress + ?Sized),
        email: &str,
    ) -> Result<(), Error> {
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
        user: &(impl UserAddress + ?Sized),
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
        self.get_paged_with(url, &[]).await
    }

    /// [`GraphClient::get_paged`] sending `headers` with every page.
    async fn get_paged_with(
        &self,
        url: String,
        headers: &[(&'static str, &'static str)],
    ) -> Result<Vec<Value>, Error> {
        Ok(self.get_paged_counted(url, headers).await?.0)
    }

    /// [`GraphClient::get_paged_with`], and the first page's `@odata.count`.
    async fn get_paged_counted(
        &self,
        url: String,
        headers: &[(&'static str, &'static str)],
    ) -> Result<(Vec<Value>, Option<u64>), Error> {
        let mut items = Vec::new();
        let mut count = None;
        let mut next = Some(url);
        while let Some(url) = next.take() {
            let answer = self
                .execute_with(Method::GET, url, None, OnNotFound::Error, headers)
                .await?;
            let mut body = answer.json()?;
            if count.is_none() {
                count = body.get("@odata.count").and_then(Value::as_u64);
            }
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
        Ok((items, count))
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
