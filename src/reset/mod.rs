//! The per-user reset: ask Graph, follow the plan, record what happened.
//!
//! The decisions (which methods, in which order, what the outcome is) are pure functions in
//! [`plan`]; this module only calls Graph and feeds the answers to them. The default method
//! is read (beta `signInPreferences`) only when more than one method could be it; when that
//! read is not allowed, a refused DELETE is retried after the others (the two-pass way).
//!
//! The user is resolved to its object id first and every later call addresses that id; a
//! user listed in `reset.protected_users` ([`ProtectedUsers`], resolved when the worker
//! starts) or holding any directory role, active or PIM-eligible, is not touched, and neither
//! is one whose roles could not be checked. Methods registered after the request was made are
//! kept. The final listing is believed over a DELETE's 204.
//!
//! # Layout
//! - [`plan`]: [`MethodKind`], [`DefaultMethod`], [`Scope`], [`plan::order`],
//!   [`plan::conclude`]: the rules, without I/O.
//! - `protected`: [`ProtectedUsers`], [`protection`]: who is never touched.
//! - `settle`: re-listing while Graph still shows deleted methods (eventual consistency).
//!
//! Why a file of this size: `Run`'s methods are the steps of one user's reset in the order
//! they happen (resolve, protect, list, journal, delete, verify), each a Graph call fed to
//! `plan`'s rules.

pub mod plan;
mod protected;
mod settle;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, Utc};

use crate::backup::{BackupRecipient, Binding};
use crate::config::ResetSettings;
use crate::domain::{MethodRecord, ResetRequest, Status, TapOutcome, TapRequest};
use crate::graph::{self, AuthMethod, DirectoryUser, GraphClient, Listing, Registered};
use crate::tap::TapRecipient;

pub use plan::{DefaultMethod, MethodKind, MethodType, Scope};
pub use protected::{
    is_protected, protected_keys, protection, ProtectedUsers, ProtectedUsersError,
};

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
    /// What a reader should know that is not an error (see `Outcome::notes`).
    pub notes: Vec<String>,
    /// The Temporary Access Pass issued (sealed) after the reset, or why not; `None` when it
    /// was not tried (not asked, or the reset did not end `reset`). Boxed: rarely there,
    /// and it would make every attempt's value large.
    pub tap: Option<Box<TapOutcome>>,
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
    /// The request was taken back from this worker, and a write withheld
    /// ([`graph::Error::Withheld`]): what this attempt removed is on its plan.
    TakenBack,
}

impl From<graph::Error> for Interrupted {
    fn from(error: graph::Error) -> Interrupted {
        match error {
            graph::Error::Withheld => Interrupted::TakenBack,
            error => Interrupted::Graph(error),
        }
    }
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

/// What a worker settled at start and every reset applies: `reset.*` as given, and what was
/// derived from it.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// `[reset]`.
    pub settings: &'a ResetSettings,
    /// `reset.methods`, parsed.
    pub scope: &'a Scope,
    /// `reset.protected_users`, resolved to object ids.
    pub protected: &'a ProtectedUsers,
    /// `reset.backup_recipient` when `reset.backup` is on: removed phone numbers and emails
    /// are kept sealed to it.
    pub backup: Option<&'a BackupRecipient>,
}

/// Reset one user, knowing what `earlier` attempts of the same request did.
///
/// The user is resolved to its object id first, and every later call addresses that id:
/// a rename between the checks and the deletes cannot redirect them to another account.
///
/// When the request asks for a Temporary Access Pass and the reset ends `reset`, the pass
/// is created last and sealed to `tap` (the helpdesk key) at once; a pass Graph refuses is
/// reported on the outcome with Graph's code and leaves the reset as it is.
#[allow(clippy::too_many_arguments)] // Each is a separate, borrowed part of the worker.
pub async fn execute(
    graph: &GraphClient,
    req: &ResetRequest,
    policy: Policy<'_>,
    earlier: Earlier,
    journal: &dyn Journal,
    tap: Option<&TapRecipient>,
) -> Result<Executed, RetryLater> {
    let Policy {
        settings,
        scope,
        protected,
        backup,
    } = policy;
    let mut run = Run {
        graph,
        requested_at: req.requested_at,
        backup: backup.map(|recipient| (recipient, req.user.to_string())),
        removed: earlier.removed,
        gone: HashSet::new(),
        planned_listed: HashMap::new(),
        sessions_revoked: earlier.sessions_revoked,
        calls: 0,
        planned_earlier: earlier.planned,
        journal,
        notes: Vec::new(),
        listing: listing_for(scope),
        tap,
    };
    match run.reset(req, settings, scope, protected).await {
        Ok(done) => Ok(done),
        Err(Interrupted::Graph(error)) if !error.is_retryable() && !error.halts() => {
            // Permanent: what was removed stays on the record.
            Ok(Executed {
                status: plan::stopped(!run.removed.is_empty()),
                removed: run.removed,
                remaining: Vec::new(),
                sessions_revoked: run.sessions_revoked,
                error: Some((error.code(), error.to_string())),
                graph_calls: run.calls,
                notes: run.notes,
                tap: None,
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

/// The listing a scope needs: beta's hardware OATH collection only when the scope removes them.
fn listing_for(scope: &Scope) -> Listing {
    if scope.includes(MethodKind::HardwareOath) {
        Listing::WithHardwareOath
    } else {
        Listing::Supported
    }
}

struct Run<'a> {
    graph: &'a GraphClient,
    /// When the request was made: methods registered after it are the user's new ones.
    requested_at: DateTime<Utc>,
    /// With `reset.backup`: the restore key, and the user as requested (what each sealed
    /// value is bound to).
    backup: Option<(&'a BackupRecipient, String)>,
    removed: Vec<MethodRecord>,
    /// `type:id` of methods whose first DELETE answered 404: already gone (deleted elsewhere),
    /// not removed by us, but no longer there.
    gone: HashSet<String>,
    /// Methods an interrupted earlier attempt planned that were still listed (`type:id`):
    /// a 404 on one of them is that attempt's DELETE landing after our listing, so the
    /// method goes on the record as removed (its plan's record), not as gone.
    planned_listed: HashMap<String, MethodRecord>,
    sessions_revoked: bool,
    calls: u32,
    planned_earlier: Vec<MethodRecord>,
    journal: &'a dyn Journal,
    notes: Vec<String>,
    /// How methods are listed (v1.0, plus beta's hardware OATH collection when in scope).
    listing: Listing,
    /// The helpdesk key a Temporary Access Pass is sealed to (`tap.recipient`).
    tap: Option<&'a TapRecipient>,
}

impl Run<'_> {
    /// The record of `method` as removed: masked, and with `reset.backup` its full value
    /// sealed to the restore key (never in clear: records go on the stream and the queues).
    fn removed_record(&self, method: &AuthMethod) -> MethodRecord {
        let mut record = method.record();
        if let (Some((recipient, user)), Some(value)) = (&self.backup, method.backup_value()) {
            let bound = Binding {
                user,
                kind: &record.kind,
                id: &record.id,
            };
            record.backup_sealed = Some(recipient.seal(bound, value));
        }
        record
    }

    /// Methods an interrupted earlier attempt planned that are no longer listed: it removed
    /// them. Those still listed are remembered, in case its DELETE lands after our listing.
    fn adopt_earlier_plan(&mut self, listed: &[AuthMethod]) {
        if self.planned_earlier.is_empty() {
            return;
        }
        let still_there: HashSet<String> = listed.iter().map(short).collect();
        let planned = std::mem::take(&mut self.planned_earlier);
        let (gone, still_listed) = plan::removed_earlier(planned, &self.removed, &still_there);
        self.planned_listed = still_listed.into_iter().map(|m| (m.short(), m)).collect();
        self.removed.extend(gone);
    }

    /// Not touched: a protected account, or one whose privileges could not be checked.
    fn skipped(&mut self, code: &str, message: String) -> Executed {
        Executed {
            status: Status::SkippedProtected,
            removed: Vec::new(),
            remaining: Vec::new(),
            sessions_revoked: false,
            error: Some((code.to_string(), message)),
            graph_calls: self.calls,
            notes: std::mem::take(&mut self.notes),
            tap: None,
        }
    }

    /// Is this method the user's own new one, registered after the request was made?
    fn registered_after_request(&self, registered: &Registered) -> bool {
        plan::registered_after(registered.created, self.requested_at)
    }

    async fn reset(
        &mut self,
        req: &ResetRequest,
        settings: &ResetSettings,
        scope: &Scope,
        protected: &ProtectedUsers,
    ) -> Result<Executed, Interrupted> {
        self.calls += 1;
        let user = self.graph.resolve_user(&req.user).await?;
        if let Some((code, message)) = self.not_to_be_touched(&user, settings, protected).await? {
            return Ok(self.skipped(code, message));
        }

        let registered = self.list(&user).await?;
        let listed: Vec<AuthMethod> = registered.iter().map(|r| r.method.clone()).collect();
        let unknown: Vec<&AuthMethod> = listed
            .iter()
            .filter(|m| MethodKind::of(m) == MethodKind::Unknown)
            .collect();
        let (newer, targets): (Vec<&Registered>, Vec<&Registered>) = registered
            .iter()
            .filter(|r| scope.contains(&r.method))
            .partition(|r| self.registered_after_request(r));
        let targets: Vec<AuthMethod> = targets.into_iter().map(|r| r.method.clone()).collect();
        for kept in &newer {
            self.notes.push(format!(
                "kept {}: registered at {}, after the request was made ({}); a method the user registered since is theirs",
                short(&kept.method),
                kept.created.map(|c| c.to_rfc3339()).unwrap_or_default(),
                self.requested_at.to_rfc3339(),
            ));
        }

        self.adopt_earlier_plan(&listed);

        if req.dry_run {
            let mut would = self.removed.clone();
            // Nothing is removed, so nothing is backed up: masked values only.
            would.extend(targets.iter().map(AuthMethod::record));
            return Ok(Executed {
                status: Status::DryRun,
                removed: would,
                remaining: unknown.iter().map(|m| m.record()).collect(),
                sessions_revoked: false,
                error: None,
                graph_calls: self.calls,
                notes: std::mem::take(&mut self.notes),
                tap: None,
            });
        }

        if !targets.is_empty() {
            let planned: Vec<MethodRecord> =
                targets.iter().map(|m| self.removed_record(m)).collect();
            self.journal.planned(&planned).await.map_err(|e| {
                Interrupted::Journal(format!("could not record the plan before deleting: {e:#}"))
            })?;
        }
        let default = self.default_method(&user, &targets).await;
        let ordered = plan::order(targets.clone(), MethodKind::of, default);
        // A refusal that stays (the default, with something out of scope still registered) is
        // reported as remaining with Graph's code: the outcome is `partial`, never guessed around.
        let still_refused = self.delete_all(&user, ordered).await?;

        if req.revoke_sessions && !self.sessions_revoked {
            self.revoke_sessions(&user).await?;
        }

        let (remaining, lingering) = self
            .verify(&user, &targets, settings.consistency_wait, scope)
            .await?;
        let conclusion = plan::conclude(&plan::Tally {
            removed_any: !self.removed.is_empty(),
            remaining: remaining.len(),
            unknown: unknown.iter().map(|m| m.stem().to_string()).collect(),
            // Graph's code when it refused something.
            refusal: still_refused
                .first()
                .map(|(m, e)| (e.code(), format!("{} {}: {e}", m.stem(), m.id()))),
            lingering,
        });
        let mut remaining_records: Vec<MethodRecord> =
            remaining.iter().map(|m| m.record()).collect();
        remaining_records.extend(unknown.iter().map(|m| m.record()));
        // Last, once the listing shows the methods gone: a pass before that would be removed
        // with them, or sit beside a method the user still has.
        let tap = match req.tap {
            Some(asked) if conclusion.status == Status::Reset => {
                Some(Box::new(self.issue_tap(&user, asked).await?))
            }
            _ => None,
        };
        Ok(Executed {
            status: conclusion.status,
            removed: std::mem::take(&mut self.removed),
            remaining: remaining_records,
            sessions_revoked: self.sessions_revoked,
            error: conclusion.error,
            graph_calls: self.calls,
            notes: std::mem::take(&mut self.notes),
            tap,
        })
    }

    /// Create the Temporary Access Pass and seal it to the helpdesk key before anything
    /// else sees it. Every failure is reported (Graph's code), none fails the reset; the
    /// pass itself is never logged, and dropped (zeroised) here once sealed. Only a pass
    /// withheld because the request was taken back stops the reset.
    async fn issue_tap(
        &mut self,
        user: &DirectoryUser,
        asked: TapRequest,
    ) -> Result<TapOutcome, Interrupted> {
        let not_issued = |code: String, message: String| TapOutcome {
            issued: false,
            lifetime_minutes: asked.lifetime_minutes,
            usable_once: asked.usable_once,
            error_code: Some(code),
            error_message: Some(message),
            ..TapOutcome::default()
        };
        let Some(recipient) = self.tap else {
            return Ok(not_issued(
                "tap_no_recipient".into(),
                "tap.recipient is not set on this worker: a pass is only issued encrypted to \
                 the helpdesk's age key; none was created"
                    .into(),
            ));
        };
        self.calls += 1;
        let created = self
            .graph
            .create_temporary_access_pass(user, asked.lifetime_minutes, asked.usable_once)
            .await;
        let pass = match created {
            Ok(pass) => pass,
            Err(graph::Error::Withheld) => return Err(Interrupted::TakenBack),
            Err(error) => {
                tracing::info!(user = %user, code = %error.code(), "Graph did not create the Temporary Access Pass");
                return Ok(not_issued(error.code(), error.to_string()));
            }
        };
        Ok(match recipient.seal(&pass.pass) {
            Ok(sealed) => TapOutcome {
                issued: true,
                lifetime_minutes: pass.lifetime_in_minutes,
                usable_once: pass.is_usable_once,
                method_id: Some(pass.id).filter(|id| !id.is_empty()),
                start: pass.start_date_time,
                sealed: Some(sealed),
                error_code: None,
                error_message: None,
            },
            Err(error) => not_issued("tap_seal_failed".into(), error.to_string()),
        })
    }

    /// The user's methods. When beta's hardware OATH collection cannot be read (a permanent
    /// error: beta out of reach for this app), v1.0 alone, and the outcome says so: hardware
    /// tokens are then left in place rather than the whole reset failing.
    async fn list(&mut self, user: &DirectoryUser) -> Result<Vec<Registered>, graph::Error> {
        self.calls += self.graph.listing_requests(self.listing);
        match self.graph.list_registered(user, self.listing).await {
            Err(error)
                if self.listing == Listing::WithHardwareOath
                    && !error.is_retryable()
                    && !error.halts() =>
            {
                self.notes.push(format!(
                    "hardware OATH tokens could not be listed from beta ({error}); any the user has were left in place"
                ));
                self.listing = Listing::Supported;
                self.calls += self.graph.listing_requests(self.listing);
                self.graph.list_registered(user, self.listing).await
            }
            other => other,
        }
    }

    /// Revoke the user's sign-in sessions, unless the user is external: Graph answers success
    /// for a guest but does not revoke their sessions (they sign in through their home
    /// tenant), so the outcome must not claim it did.
    async fn revoke_sessions(&mut self, user: &DirectoryUser) -> Result<(), graph::Error> {
        if user.is_external() || user.is_guest() {
            self.notes.push(
                "sessions not revoked: Graph does not revoke the sign-in sessions of external \
                 (guest) users; revoke them in the user's home tenant, or block the guest's \
                 sign-in here"
                    .to_string(),
            );
            return Ok(());
        }
        self.calls += 1;
        self.graph.revoke_sessions(user).await?;
        self.sessions_revoked = true;
        Ok(())
    }

    /// Why the user must not be touched (code, message), if so: listed in
    /// `reset.protected_users` (compared by object id), holding or eligible for a directory
    /// role, or a privilege check that could not be made (fail closed).
    async fn not_to_be_touched(
        &mut self,
        user: &DirectoryUser,
        settings: &ResetSettings,
        protected: &ProtectedUsers,
    ) -> Result<Option<(&'static str, String)>, graph::Error> {
        if protected.entry_for(&user.id).is_none() && settings.skip_admins {
            self.calls += 1;
        }
        protection(self.graph, user, settings, protected).await
    }

    /// The user's default method, read only when more than one target could be it; when the
    /// plan needs it, first moved from the alternate mobile to the mobile. `None` when
    /// unknown: the two-pass fallback then handles a refused default.
    async fn default_method(
        &mut self,
        user: &DirectoryUser,
        targets: &[AuthMethod],
    ) -> Option<DefaultMethod> {
        let kinds: Vec<MethodKind> = targets.iter().map(MethodKind::of).collect();
        if !plan::needs_default_read(&kinds) {
            return None;
        }
        self.calls += 1;
        let default = match self.graph.default_method(user).await {
            Ok(preferred) => preferred.as_deref().and_then(DefaultMethod::parse),
            Err(err) => {
                tracing::debug!(user = %user, error = %err, "default method unknown; deleting in two passes");
                return None;
            }
        };
        if !plan::must_move_default_to_mobile(&kinds, default) {
            return default;
        }
        self.calls += 1;
        let mobile = DefaultMethod::VoiceMobile;
        match self.graph.set_default_method(user, mobile.as_str()).await {
            Ok(()) => Some(mobile),
            Err(err) => {
                tracing::debug!(user = %user, error = %err, "could not move the default to the mobile");
                default
            }
        }
    }

    /// Delete `ordered`, then once more each DELETE Graph refused (400: most likely the
    /// default-method rule) now that the others are gone. Returns the refusals that stayed:
    /// reported as remaining, never guessed around.
    async fn delete_all(
        &mut self,
        user: &DirectoryUser,
        ordered: Vec<AuthMethod>,
    ) -> Result<Vec<(AuthMethod, graph::Error)>, Interrupted> {
        let targets = ordered.len();
        let mut refused: Vec<(AuthMethod, graph::Error)> = Vec::new();
        for method in ordered {
            match self.delete(user, &method).await {
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
            if let Err(err) = self.delete(user, &method).await {
                if err.is_retryable() || err.halts() || matches!(err, graph::Error::Withheld) {
                    return Err(err.into());
                }
                still_refused.push((method, err));
            }
        }
        Ok(still_refused)
    }

    async fn delete(
        &mut self,
        user: &DirectoryUser,
        method: &AuthMethod,
    ) -> Result<(), graph::Error> {
        self.calls += 1;
        match self.graph.delete_method(user, method).await {
            Ok(()) => {
                let record = self.removed_record(method);
                self.removed.push(record);
                Ok(())
            }
            // Gone, though our listing showed it: an interrupted earlier attempt's DELETE of
            // it landed since (it is on that attempt's plan), or someone deleted it elsewhere
            // (nothing to remove, not an error, and not ours to report as removed).
            Err(graph::Error::NotFound { .. }) => {
                match self.planned_listed.remove(&short(method)) {
                    Some(planned) => self.removed.push(planned),
                    None => {
                        self.gone.insert(short(method));
                    }
                }
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// List again and report what is still there. A method deleted with a 204 may still be
    /// listed for a while (eventual consistency), so the listing is repeated for at most
    /// `wait`; what is *still* listed then is believed over the 204: it is remaining, taken
    /// off `removed`, and named in the second list (`type:id`). Methods the user registered
    /// after the request are not counted.
    async fn verify(
        &mut self,
        user: &DirectoryUser,
        targets: &[AuthMethod],
        wait: std::time::Duration,
        scope: &Scope,
    ) -> Result<(Vec<AuthMethod>, Vec<String>), graph::Error> {
        if targets.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let deleted: HashSet<String> = self
            .removed
            .iter()
            .map(|r| r.short())
            .chain(self.gone.iter().cloned())
            .collect();
        // Counted across awaits of a Send future: an atomic, not a Cell.
        let lists = AtomicU32::new(0);
        let (graph, listing) = (self.graph, self.listing);
        let listed = settle::until_settled(
            wait,
            || {
                lists.fetch_add(1, Ordering::Relaxed);
                graph.list_registered(user, listing)
            },
            |listed: &Vec<Registered>| {
                listed
                    .iter()
                    .any(|r| scope.contains(&r.method) && deleted.contains(&short(&r.method)))
            },
        )
        .await;
        self.calls += lists.into_inner() * graph.listing_requests(listing);
        let remaining: Vec<AuthMethod> = listed?
            .into_iter()
            .filter(|r| scope.contains(&r.method) && !self.registered_after_request(r))
            .map(|r| r.method)
            .collect();
        let lingering: Vec<String> = remaining
            .iter()
            .map(short)
            .filter(|key| deleted.contains(key))
            .collect();
        self.removed.retain(|r| !lingering.contains(&r.short()));
        Ok((remaining, lingering))
    }
}
