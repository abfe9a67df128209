//! [`GraphClient`]: every Graph call mfa-reset makes. STUB — interface only.

use std::sync::Arc;

use crate::config::{GraphSettings, RateSettings, RetrySettings};
use crate::domain::UserRef;

use super::{AuthMethod, Error, ThrottleStats};

/// A member of a group, as `enqueue --group` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Object id.
    pub id: String,
    /// UPN, when Graph gave one.
    pub user_principal_name: Option<String>,
}

/// The Graph client: one per process, cheap to clone, shares its token cache, budget and pause gate.
#[derive(Clone)]
pub struct GraphClient {
    _inner: Arc<()>,
}

impl GraphClient {
    /// Build a client from settings. Fails when no credential is configured.
    pub fn new(
        _graph: &GraphSettings,
        _rate: &RateSettings,
        _retry: &RetrySettings,
    ) -> anyhow::Result<GraphClient> {
        todo!()
    }

    /// Counters for metrics and benchmarks.
    pub fn stats(&self) -> Arc<ThrottleStats> {
        todo!()
    }

    /// `GET /users/{u}/authentication/methods`.
    pub async fn list_methods(&self, _user: &UserRef) -> Result<Vec<AuthMethod>, Error> {
        todo!()
    }

    /// The DELETE for `method`; a 404 on a retry of it counts as success.
    pub async fn delete_method(&self, _user: &UserRef, _method: &AuthMethod) -> Result<(), Error> {
        todo!()
    }

    /// `GET /beta/users/{u}/authentication/signInPreferences` →
    /// `userPreferredMethodForSecondaryAuthentication` (`push`, `oath`, `sms`, `voiceMobile`, …).
    pub async fn default_method(&self, _user: &UserRef) -> Result<Option<String>, Error> {
        todo!()
    }

    /// `POST /users/{u}/revokeSignInSessions`.
    pub async fn revoke_sessions(&self, _user: &UserRef) -> Result<(), Error> {
        todo!()
    }

    /// Display names of the directory roles the user holds (transitively).
    pub async fn directory_roles(&self, _user: &UserRef) -> Result<Vec<String>, Error> {
        todo!()
    }

    /// Every user member of a group, following `@odata.nextLink`.
    pub async fn group_members(
        &self,
        _group_id: &str,
        _transitive: bool,
    ) -> Result<Vec<GroupMember>, Error> {
        todo!()
    }

    /// `POST /users/{u}/authentication/phoneMethods` (restore).
    pub async fn create_phone_method(
        &self,
        _user: &UserRef,
        _phone_number: &str,
        _phone_type: &str,
    ) -> Result<(), Error> {
        todo!()
    }

    /// `POST /users/{u}/authentication/emailMethods` (restore).
    pub async fn create_email_method(&self, _user: &UserRef, _email: &str) -> Result<(), Error> {
        todo!()
    }
}
