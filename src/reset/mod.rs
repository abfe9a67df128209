//! The per-user reset: ask Graph, follow the plan, record what happened.
//!
//! The decisions (which methods, in which order, what the outcome is) are pure functions in
//! [`plan`]; this module only calls Graph and feeds the answers to them. The default method
//! is read (beta `signInPreferences`) only when more than one method could be it; when that
//! read is not allowed, a refused DELETE is retried after the others (the two-pass way).
//!
//! # Layout
//! - [`plan`]: [`MethodKind`], [`DefaultMethod`], [`Scope`], [`plan::order`],
//!   [`plan::conclude`]: the rules, without I/O.
//! - `settle`: re-listing while Graph still shows deleted methods (eventual consistency).

pub mod plan;
mod settle;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::ResetSettings;
use crate::domain::{MethodRecord, ResetRequest, Status, UserRef};
use crate::graph::{self, AuthMethod, GraphClient};

pub use plan::{DefaultMethod, MethodKind, MethodType, Scope};

/// What a reset did, before it is wrapped into an `Outcome`.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    /// Final status.
    pub status: Status,
    /// Removed (in a dry run: would be removed).
    pub removed: Vec<MethodRecord>,
    /// In-scope methods still registered, and unknown types.
    pub remaining: Vec<MethodRecord>,
    /// Sessions revoked.
    pub sessions_revoked: bool,
    /// Error code and message when not clean.
    pub error: Option<(String, String)>,
    /// Graph calls made (logical calls; retries inside the client are not counted).
    pub graph_calls: u32,
}

/// A reset that must be tried again later (retryable error after the in-process retries),
/// with what was already removed so the record is not lost.
#[derive(Debug, Clone)]
pub struct RetryLater {
    /// What stopped it.
    pub cause: Interrupted,
    /// Methods already removed in this attempt.
    pub removed: Vec<MethodRecord>,
    /// Sessions already revoked.
    pub sessions_revoked: bool,
}

/// Why a reset stopped before it could conclude.
#[derive(Debug, Clone)]
pub enum Interrupted {
    /// A Graph error (its [`graph::Class`] says what to do next).
    Graph(graph::Error),
    /// The plan could not be recorded before the first DELETE (broker trouble): nothing was
    /// deleted in this attempt.
    Journal(String),
}

impl From<graph::Error> for Interrupted {
    fn from(error: graph::Error) -> Interrupted {
        Interrupted::Graph(error)
    }
}

/// Is `user` listed in `reset.protected_users` as it is written in the request?
/// (Listed by UPN but requested by object id, or the other way round, is caught inside the
/// reset, which can ask Graph for the other identifier.)
pub fn is_protected(settings: &ResetSettings, user: &UserRef) -> bool {
    let key = user.key();
    settings
        .protected_users
        .iter()
        .any(|p| protected_key(p) == key)
}

/// An entry of `reset.protected_users` as a [`UserRef::key`] (object ids in any case or
/// with braces compare equal).
fn protected_key(entry: &str) -> String {
    UserRef::parse(entry)
        .map(|u| u.key())
        .unwrap_or_else(|_| entry.trim().to_lowercase())
}

/// True when the protected list holds identifiers of the other kind than the request's
/// (object ids for a UPN request, or UPNs for an object-id request): only Graph can tell
/// whether the user is one of them.
fn needs_identity(settings: &ResetSettings, user: &UserRef) -> bool {
    settings.protected_users.iter().any(|p| {
        matches!(
            (UserRef::parse(p), user),
            (Ok(UserRef::ObjectId(_)), UserRef::Upn(_))
                | (Ok(UserRef::Upn(_)), UserRef::ObjectId(_))
        )
    })
}

/// Where a reset writes down what it is about to delete, before the first DELETE, so a
/// later attempt can tell what an interrupted one removed.
#[async_trait::async_trait]
pub trait Journal: Send + Sync {
    /// Record the methods about to be deleted; returns once it is durable.
    async fn planned(&self, methods: &[MethodRecord]) -> anyhow::Result<()>;
}

/// A journal that keeps nothing (tools that need no crash recovery).
pub struct NoJournal;

#[async_trait::async_trait]
impl Journal for NoJournal {
    async fn planned(&self, _methods: &[MethodRecord]) -> anyhow::Result<()> {
        Ok(())
    }
}

/// What earlier attempts of the same request did.
#[derive(Debug, Clone, Default)]
pub struct Earlier {
    /// Removed by attempts that handed the request to a delay tier.
    pub removed: Vec<MethodRecord>,
    /// Sessions already revoked.
    pub sessions_revoked: bool,
    /// Planned by attempts that left no outcome (a worker killed half-way): whatever of it is
    /// no longer listed was removed by them.
    pub planned: Vec<MethodRecord>,
}

/// Reset one user, knowing what `earlier` attempts of the same request did.
pub async fn execute(
    graph: &GraphClient,
    req: &ResetRequest,
    settings: &ResetSettings,
    scope: &Scope,
    earlier: Earlier,
    journal: &dyn Journal,
) -> Result<Executed, RetryLater> {
    let mut run = Run {
        graph,
        user: &req.user,
        backup: settings.backup,
        removed: earlier.removed,
        gone: HashSet::new(),
        sessions_revoked: earlier.sessions_revoked,
        calls: 0,
        planned_earlier: earlier.planned,
        journal,
    };
    match run.reset(req, settings, scope).await {
        Ok(done) => Ok(done),
        Err(Interrupted::Graph(error)) if !error.is_retryable() => {
            // Permanent: what was removed stays on the record.
            Ok(Executed {
                status: plan::stopped(!run.removed.is_empty()),
                removed: run.removed,
                remaining: Vec::new(),
                sessions_revoked: run.sessions_revoked,
                error: Some((error.code(), error.to_string())),
                graph_calls: run.calls,
            })
        }
        Err(cause) => Err(RetryLater {
            cause,
            removed: run.removed,
            sessions_revoked: run.sessions_revoked,
        }),
    }
}

/// `type:id`, as [`MethodRecord::short`] writes it.
fn short(m: &AuthMethod) -> String {
    format!("{}:{}", m.stem(), m.id())
}

struct Run<'a> {
    graph: &'a GraphClient,
    user: &'a UserRef,
    backup: bool,
    removed: Vec<MethodRecord>,
    /// `type:id` of methods whose first DELETE answered 404: already gone (deleted elsewhere
    /// or by an earlier attempt), not removed by us, but no longer there.
    gone: HashSet<String>,
    sessions_revoked: bool,
    calls: u32,
    planned_earlier: Vec<MethodRecord>,
    journal: &'a dyn Journal,
}

impl Run<'_> {
    /// Methods an interrupted earlier attempt planned that are no longer listed: it removed them.
    fn adopt_earlier_plan(&mut self, listed: &[AuthMethod]) {
        if self.planned_earlier.is_empty() {
            return;
        }
        let still_there: HashSet<String> = listed.iter().map(short).collect();
        let planned = std::mem::take(&mut self.planned_earlier);
        let gone = plan::removed_earlier(planned, &self.removed, &still_there);
        self.removed.extend(gone);
    }

    /// Not touched: a protected account.
    fn skipped(&self, code: &str, message: String) -> Executed {
        Executed {
            status: Status::SkippedProtected,
            removed: Vec::new(),
            remaining: Vec::new(),
            sessions_revoked: false,
            error: Some((code.to_string(), message)),
            graph_calls: self.calls,
        }
    }

    async fn reset(
        &mut self,
        req: &ResetRequest,
        settings: &ResetSettings,
        scope: &Scope,
    ) -> Result<Executed, Interrupted> {
        if let Some((code, message)) = self.not_to_be_touched(settings).await? {
            return Ok(self.skipped(code, message));
        }

        self.calls += 1;
        let listed = self.graph.list_methods(self.user).await?;
        let unknown: Vec<&AuthMethod> = listed
            .iter()
            .filter(|m| MethodKind::of(m) == MethodKind::Unknown)
            .collect();
        let targets: Vec<AuthMethod> = listed
            .iter()
            .filter(|m| scope.contains(m))
            .cloned()
            .collect();

        self.adopt_earlier_plan(&listed);

        if req.dry_run {
            let mut would = self.removed.clone();
            would.extend(targets.iter().map(|m| m.record(self.backup)));
            return Ok(Executed {
                status: Status::DryRun,
                removed: would,
                remaining: unknown.iter().map(|m| m.record(false)).collect(),
                sessions_revoked: false,
                error: None,
                graph_calls: self.calls,
            });
        }

        if !targets.is_empty() {
            let planned: Vec<MethodRecord> =
                targets.iter().map(|m| m.record(self.backup)).collect();
            self.journal.planned(&planned).await.map_err(|e| {
                Interrupted::Journal(format!("could not record the plan before deleting: {e:#}"))
            })?;
        }
        let default = self.default_method(&targets).await;
        let ordered = plan::order(targets.clone(), MethodKind::of, default);
        let still_refused = self.delete_all(ordered).await?;
        if plan::refused_outright(
            !self.removed.is_empty(),
            !unknown.is_empty(),
            still_refused.len(),
            targets.len(),
        ) {
            if let Some((_, err)) = still_refused.first() {
                return Err(err.clone().into());
            }
        }

        if req.revoke_sessions && !self.sessions_revoked {
            self.calls += 1;
            self.graph.revoke_sessions(self.user).await?;
            self.sessions_revoked = true;
        }

        let remaining = self
            .verify(&targets, settings.consistency_wait, scope)
            .await?;
        let conclusion = plan::conclude(&plan::Tally {
            removed_any: !self.removed.is_empty(),
            remaining: remaining.len(),
            unknown: unknown.iter().map(|m| m.stem().to_string()).collect(),
            // Graph's code when it refused something.
            refusal: still_refused
                .first()
                .map(|(m, e)| (e.code(), format!("{} {}: {e}", m.stem(), m.id()))),
        });
        let mut remaining_records: Vec<MethodRecord> =
            remaining.iter().map(|m| m.record(false)).collect();
        remaining_records.extend(unknown.iter().map(|m| m.record(false)));
        Ok(Executed {
            status: conclusion.status,
            removed: std::mem::take(&mut self.removed),
            remaining: remaining_records,
            sessions_revoked: self.sessions_revoked,
            error: conclusion.error,
            graph_calls: self.calls,
        })
    }

    /// Why the user must not be touched (code, message), if so: listed in
    /// `reset.protected_users` under its other identifier, or holding a directory role.
    async fn not_to_be_touched(
        &mut self,
        settings: &ResetSettings,
    ) -> Result<Option<(&'static str, String)>, graph::Error> {
        if needs_identity(settings, self.user) {
            self.calls += 1;
            let (id, upn) = self.graph.user_identity(self.user).await?;
            let listed = |value: &str| {
                let value = value.to_lowercase();
                !value.is_empty()
                    && settings
                        .protected_users
                        .iter()
                        .any(|p| protected_key(p) == value)
            };
            if listed(&id) || listed(&upn) {
                return Ok(Some((
                    "protected_user",
                    format!("listed in reset.protected_users (as {upn} / {id}); not touched"),
                )));
            }
        }
        if settings.skip_admins {
            self.calls += 1;
            let roles = self.graph.directory_roles(self.user).await?;
            if !roles.is_empty() {
                return Ok(Some((
                    "directory_role",
                    format!(
                        "holds directory role(s) {}; not touched (reset.skip_admins)",
                        roles.join(", ")
                    ),
                )));
            }
        }
        Ok(None)
    }

    /// The user's default method, read only when more than one target could be it; when the
    /// plan needs it, first moved from the alternate mobile to the mobile. `None` when
    /// unknown: the two-pass fallback then handles a refused default.
    async fn default_method(&mut self, targets: &[AuthMethod]) -> Option<DefaultMethod> {
        let kinds: Vec<MethodKind> = targets.iter().map(MethodKind::of).collect();
        if !plan::needs_default_read(&kinds) {
            return None;
        }
        self.calls += 1;
        let default = match self.graph.default_method(self.user).await {
            Ok(preferred) => preferred.as_deref().and_then(DefaultMethod::parse),
            Err(err) => {
                tracing::debug!(user = %self.user, error = %err, "default method unknown; deleting in two passes");
                return None;
            }
        };
        if !plan::must_move_default_to_mobile(&kinds, default) {
            return default;
        }
        self.calls += 1;
        let mobile = DefaultMethod::VoiceMobile;
        match self
            .graph
            .set_default_method(self.user, mobile.as_str())
            .await
        {
            Ok(()) => Some(mobile),
            Err(err) => {
                tracing::debug!(user = %self.user, error = %err, "could not move the default to the mobile");
                default
            }
        }
    }

    /// Delete `ordered`, then once more each DELETE Graph refused (400: most likely the
    /// default-method rule) now that the others are gone. Returns the refusals that stayed:
    /// reported as remaining, never guessed around.
    async fn delete_all(
        &mut self,
        ordered: Vec<AuthMethod>,
    ) -> Result<Vec<(AuthMethod, graph::Error)>, Interrupted> {
        let targets = ordered.len();
        let mut refused: Vec<(AuthMethod, graph::Error)> = Vec::new();
        for method in ordered {
            match self.delete(&method).await {
                Ok(()) => {}
                Err(err @ graph::Error::BadRequest { .. }) => refused.push((method, err)),
                Err(err) => return Err(err.into()),
            }
        }
        if !plan::ask_again_after_the_others(targets) {
            return Ok(refused);
        }
        let mut still_refused = Vec::new();
        for (method, _) in refused {
            if let Err(err) = self.delete(&method).await {
                if err.is_retryable() {
                    return Err(err.into());
                }
                still_refused.push((method, err));
            }
        }
        Ok(still_refused)
    }

    async fn delete(&mut self, method: &AuthMethod) -> Result<(), graph::Error> {
        self.calls += 1;
        match self.graph.delete_method(self.user, method).await {
            Ok(()) => {
                self.removed.push(method.record(self.backup));
                Ok(())
            }
            // Gone before our first try (deleted elsewhere, or by an earlier attempt):
            // nothing to remove, not an error, and not ours to report as removed.
            Err(graph::Error::NotFound { .. }) => {
                self.gone.insert(short(method));
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// List again and report what is still there, tolerating eventual consistency: a method
    /// we deleted (204) that is still listed is re-checked for at most `wait`, after which
    /// the 204s are trusted (a deleted method still listed is lag, not a method).
    async fn verify(
        &mut self,
        targets: &[AuthMethod],
        wait: std::time::Duration,
        scope: &Scope,
    ) -> Result<Vec<AuthMethod>, graph::Error> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let deleted: HashSet<String> = self
            .removed
            .iter()
            .map(|r| r.short())
            .chain(self.gone.iter().cloned())
            .collect();
        // Counted across awaits of a Send future: an atomic, not a Cell.
        let lists = AtomicU32::new(0);
        let (graph, user) = (self.graph, self.user);
        let listed = settle::until_settled(
            wait,
            || {
                lists.fetch_add(1, Ordering::Relaxed);
                graph.list_methods(user)
            },
            |listed: &Vec<AuthMethod>| {
                listed
                    .iter()
                    .any(|m| scope.contains(m) && deleted.contains(&short(m)))
            },
        )
        .await;
        self.calls += lists.into_inner();
        Ok(listed?
            .into_iter()
            .filter(|m| scope.contains(m) && !deleted.contains(&short(m)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(protected: &[&str]) -> ResetSettings {
        ResetSettings {
            protected_users: protected.iter().map(|p| p.to_string()).collect(),
            ..ResetSettings::default()
        }
    }

    #[test]
    fn protected_users_match_in_any_case_and_object_id_form() {
        let s = settings(&[
            " BreakGlass@Contoso.com ",
            "{6F9619FF-8B86-D011-B42D-00C04FC964FF}",
        ]);
        let upn = UserRef::parse("breakglass@contoso.com").unwrap();
        let id = UserRef::parse("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
        assert!(is_protected(&s, &upn));
        assert!(is_protected(&s, &id));
        assert!(!is_protected(
            &s,
            &UserRef::parse("alice@contoso.com").unwrap()
        ));
    }

    #[test]
    fn graph_is_asked_only_when_the_list_holds_the_other_kind_of_identifier() {
        let upn = UserRef::parse("alice@contoso.com").unwrap();
        let id = UserRef::parse("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
        let by_upn = settings(&["breakglass@contoso.com"]);
        assert!(!needs_identity(&by_upn, &upn));
        assert!(needs_identity(&by_upn, &id));
        let by_id = settings(&["6f9619ff-8b86-d011-b42d-00c04fc964ff"]);
        assert!(needs_identity(&by_id, &upn));
        assert!(!needs_identity(&settings(&[]), &upn));
    }
}
