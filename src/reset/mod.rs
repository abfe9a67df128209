//! The per-user reset: which methods to delete, in which order, and what the outcome is.
//!
//! Order matters because of Graph's default-method rule: "Cannot delete default method with
//! other methods configured" (graph-api.md). Microsoft's own scripts delete everything else
//! first and the default last. We learn the default with one read (beta
//! `signInPreferences`) only when more than one method could be it; when that read is not
//! allowed, a refused DELETE is retried after the others (the two-pass way).

use std::collections::HashSet;
use std::time::Duration;

use crate::config::{MethodSelection, ResetSettings};
use crate::domain::{MethodRecord, ResetRequest, Status, UserRef};
use crate::graph::{self, AuthMethod, GraphClient};

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
    /// The error that stopped it.
    pub error: graph::Error,
    /// Methods already removed in this attempt.
    pub removed: Vec<MethodRecord>,
    /// Sessions already revoked.
    pub sessions_revoked: bool,
}

/// Which method stems are in scope.
#[derive(Debug, Clone)]
pub struct Scope(HashSet<String>);

impl Scope {
    /// From `reset.methods`. Unknown names are an error naming the accepted ones.
    pub fn from_settings(sel: &MethodSelection) -> anyhow::Result<Scope> {
        let names: Vec<String> = match sel {
            MethodSelection::Preset(p) if p == "all" => AuthMethod::REMOVABLE_STEMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            MethodSelection::Preset(p) if p == "portal" => AuthMethod::PORTAL_STEMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            MethodSelection::Preset(p) => anyhow::bail!(
                "reset.methods = {p:?}: use \"all\", \"portal\" or a list of method types ({})",
                AuthMethod::REMOVABLE_STEMS.join(", ")
            ),
            MethodSelection::List(list) => {
                for name in list {
                    anyhow::ensure!(
                        AuthMethod::REMOVABLE_STEMS.contains(&name.as_str()),
                        "reset.methods: {name:?} is not a removable method type; use one of {}",
                        AuthMethod::REMOVABLE_STEMS.join(", ")
                    );
                }
                list.clone()
            }
        };
        Ok(Scope(names.into_iter().collect()))
    }

    /// Is this method to be removed?
    pub fn contains(&self, m: &AuthMethod) -> bool {
        m.is_removable() && self.0.contains(m.stem())
    }
}

/// Is `user` listed in `reset.protected_users`?
pub fn is_protected(settings: &ResetSettings, user: &UserRef) -> bool {
    let key = user.key();
    settings
        .protected_users
        .iter()
        .any(|p| p.trim().to_lowercase() == key)
}

/// Reset one user. `carried` holds what an earlier attempt of the same request removed.
pub async fn execute(
    graph: &GraphClient,
    req: &ResetRequest,
    settings: &ResetSettings,
    scope: &Scope,
    carried: Vec<MethodRecord>,
    carried_revoked: bool,
) -> Result<Executed, RetryLater> {
    let mut run = Run {
        graph,
        user: &req.user,
        backup: settings.backup,
        removed: carried,
        sessions_revoked: carried_revoked,
        calls: 0,
    };
    match run.reset(req, settings, scope).await {
        Ok(done) => Ok(done),
        Err(error) if error.is_retryable() => Err(RetryLater {
            error,
            removed: run.removed,
            sessions_revoked: run.sessions_revoked,
        }),
        Err(error) => {
            // Permanent: failed if nothing was removed, partial otherwise.
            let status = if run.removed.is_empty() {
                Status::Failed
            } else {
                Status::Partial
            };
            Ok(Executed {
                status,
                removed: run.removed,
                remaining: Vec::new(),
                sessions_revoked: run.sessions_revoked,
                error: Some((error.code(), error.to_string())),
                graph_calls: run.calls,
            })
        }
    }
}

fn is_mobile(m: &AuthMethod) -> bool {
    matches!(m, AuthMethod::Phone { phone_type, .. } if phone_type == "mobile")
}

struct Run<'a> {
    graph: &'a GraphClient,
    user: &'a UserRef,
    backup: bool,
    removed: Vec<MethodRecord>,
    sessions_revoked: bool,
    calls: u32,
}

impl Run<'_> {
    async fn reset(
        &mut self,
        req: &ResetRequest,
        settings: &ResetSettings,
        scope: &Scope,
    ) -> Result<Executed, graph::Error> {
        if settings.skip_admins {
            self.calls += 1;
            let roles = self.graph.directory_roles(self.user).await?;
            if !roles.is_empty() {
                return Ok(Executed {
                    status: Status::SkippedProtected,
                    removed: Vec::new(),
                    remaining: Vec::new(),
                    sessions_revoked: false,
                    error: Some((
                        "directory_role".into(),
                        format!(
                            "holds directory role(s) {}; not touched (reset.skip_admins)",
                            roles.join(", ")
                        ),
                    )),
                    graph_calls: self.calls,
                });
            }
        }

        self.calls += 1;
        let listed = self.graph.list_methods(self.user).await?;
        let unknown: Vec<&AuthMethod> = listed
            .iter()
            .filter(|m| matches!(m, AuthMethod::Unknown { .. }))
            .collect();
        let targets: Vec<AuthMethod> = listed
            .iter()
            .filter(|m| scope.contains(m))
            .cloned()
            .collect();

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

        let ordered = self.order(&targets).await;
        let mut refused: Vec<AuthMethod> = Vec::new();
        for method in ordered {
            match self.delete(&method).await {
                Ok(()) => {}
                // Most likely the default-method rule: try again once the others are gone.
                Err(graph::Error::BadRequest { .. }) if targets.len() > 1 => refused.push(method),
                Err(err) => return Err(err),
            }
        }
        let mut still_refused = Vec::new();
        for method in refused {
            if let Err(err) = self.delete(&method).await {
                if err.is_retryable() {
                    return Err(err);
                }
                still_refused.push((method, err));
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
        let mut remaining_records: Vec<MethodRecord> =
            remaining.iter().map(|m| m.record(false)).collect();
        remaining_records.extend(unknown.iter().map(|m| m.record(false)));

        let status = if !remaining_records.is_empty() {
            Status::Partial
        } else if self.removed.is_empty() {
            Status::AlreadyClean
        } else {
            Status::Reset
        };
        let error = still_refused
            .first()
            .map(|(m, e)| (e.code(), format!("{} {}: {e}", m.stem(), m.id())))
            .or_else(|| {
                (!unknown.is_empty()).then(|| {
                    (
                        "unknown_method_type".to_string(),
                        format!(
                            "method type(s) this build does not know were left in place: {}",
                            unknown
                                .iter()
                                .map(|m| m.stem())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })
            });
        Ok(Executed {
            status,
            removed: std::mem::take(&mut self.removed),
            remaining: remaining_records,
            sessions_revoked: self.sessions_revoked,
            error,
            graph_calls: self.calls,
        })
    }

    /// Non-default candidates first, the default last. One read of the default, and only
    /// when more than one method could be it.
    async fn order(&mut self, targets: &[AuthMethod]) -> Vec<AuthMethod> {
        let (candidates, mut others): (Vec<AuthMethod>, Vec<AuthMethod>) = targets
            .iter()
            .cloned()
            .partition(AuthMethod::can_be_default);
        let mut candidates = candidates;
        // An alternateMobile cannot exist without the mobile: Graph refuses to delete the
        // mobile first, so phones other than the mobile go before it.
        candidates.sort_by_key(is_mobile);
        if candidates.len() > 1 {
            self.calls += 1;
            match self.graph.default_method(self.user).await {
                Ok(Some(preferred)) => {
                    // Stable sort: the default (true) goes after the rest (false).
                    candidates.sort_by_key(|m| (m.matches_default(&preferred), is_mobile(m)));
                }
                Ok(None) => {}
                Err(err) => {
                    // Not fatal: the two-pass fallback handles a refused default.
                    tracing::debug!(user = %self.user, error = %err, "default method unknown; deleting in two passes");
                }
            }
        }
        others.extend(candidates);
        others
    }

    async fn delete(&mut self, method: &AuthMethod) -> Result<(), graph::Error> {
        self.calls += 1;
        match self.graph.delete_method(self.user, method).await {
            Ok(()) => {
                self.removed.push(method.record(self.backup));
                Ok(())
            }
            // Gone before our first try (deleted elsewhere, or by an earlier attempt):
            // nothing to remove, not an error.
            Err(graph::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// List again and report what is still there, tolerating eventual consistency: a method
    /// we deleted (204) that is still listed is re-checked for at most `wait`.
    async fn verify(
        &mut self,
        targets: &[AuthMethod],
        wait: Duration,
        scope: &Scope,
    ) -> Result<Vec<AuthMethod>, graph::Error> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let deleted: HashSet<String> = self.removed.iter().map(|r| r.short()).collect();
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(500);
        loop {
            self.calls += 1;
            let listed = self.graph.list_methods(self.user).await?;
            let in_scope: Vec<AuthMethod> =
                listed.into_iter().filter(|m| scope.contains(m)).collect();
            let lagging = in_scope
                .iter()
                .any(|m| deleted.contains(&format!("{}:{}", m.stem(), m.id())));
            if !lagging || started.elapsed() + pause > wait {
                // After the bound, trust the 204s: a deleted method still listed is lag, not a method.
                let remaining = in_scope
                    .into_iter()
                    .filter(|m| !deleted.contains(&format!("{}:{}", m.stem(), m.id())))
                    .collect::<Vec<_>>();
                return Ok(remaining);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(4));
        }
    }
}
