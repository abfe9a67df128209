//! The tenant's Temporary Access Pass policy (Graph's
//! `temporaryAccessPassAuthenticationMethodConfiguration`): whether passes may be created,
//! their lifetime bounds and default, one-time use and length; and the passes created, which
//! only `/_sim/users/{user}/tap` shows again (Graph shows a pass once, in the create answer).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The policy, as Graph names its properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TapPolicy {
    /// `enabled` or `disabled`.
    pub state: TapState,
    /// Lifetime of a pass created without `lifetimeInMinutes`.
    pub default_lifetime_in_minutes: u32,
    /// Shortest lifetime allowed (Graph: 10..=43200).
    pub minimum_lifetime_in_minutes: u32,
    /// Longest lifetime allowed (Graph: 10..=43200).
    pub maximum_lifetime_in_minutes: u32,
    /// When true, every pass is one-time use: a request for a reusable one is refused.
    pub is_usable_once: bool,
    /// Characters in a pass (Graph: 8..=48).
    pub default_length: u32,
}

/// `state` of an authentication method configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TapState {
    /// Passes may be created.
    Enabled,
    /// Every create is refused.
    Disabled,
}

impl Default for TapPolicy {
    /// Enabled with Entra's defaults (1 hour, 10 minutes to 30 days, reusable, 8 characters).
    fn default() -> Self {
        Self {
            state: TapState::Enabled,
            default_lifetime_in_minutes: 60,
            minimum_lifetime_in_minutes: 10,
            maximum_lifetime_in_minutes: 43_200,
            is_usable_once: false,
            default_length: 8,
        }
    }
}

/// Body of `POST /_sim/policies/temporaryAccessPass`: any subset of the policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TapPolicyPatch {
    /// See [`TapPolicy::state`].
    pub state: Option<TapState>,
    /// See [`TapPolicy::default_lifetime_in_minutes`].
    pub default_lifetime_in_minutes: Option<u32>,
    /// See [`TapPolicy::minimum_lifetime_in_minutes`].
    pub minimum_lifetime_in_minutes: Option<u32>,
    /// See [`TapPolicy::maximum_lifetime_in_minutes`].
    pub maximum_lifetime_in_minutes: Option<u32>,
    /// See [`TapPolicy::is_usable_once`].
    pub is_usable_once: Option<bool>,
    /// See [`TapPolicy::default_length`].
    pub default_length: Option<u32>,
}

impl TapPolicy {
    /// Apply a patch; refused (the policy unchanged) when the result breaks Graph's bounds.
    pub fn apply(&mut self, patch: TapPolicyPatch) -> Result<(), String> {
        let mut next = self.clone();
        if let Some(v) = patch.state {
            next.state = v;
        }
        if let Some(v) = patch.default_lifetime_in_minutes {
            next.default_lifetime_in_minutes = v;
        }
        if let Some(v) = patch.minimum_lifetime_in_minutes {
            next.minimum_lifetime_in_minutes = v;
        }
        if let Some(v) = patch.maximum_lifetime_in_minutes {
            next.maximum_lifetime_in_minutes = v;
        }
        if let Some(v) = patch.is_usable_once {
            next.is_usable_once = v;
        }
        if let Some(v) = patch.default_length {
            next.default_length = v;
        }
        let bounds = 10..=43_200;
        if !bounds.contains(&next.minimum_lifetime_in_minutes)
            || !bounds.contains(&next.maximum_lifetime_in_minutes)
            || next.minimum_lifetime_in_minutes > next.maximum_lifetime_in_minutes
            || !(next.minimum_lifetime_in_minutes..=next.maximum_lifetime_in_minutes)
                .contains(&next.default_lifetime_in_minutes)
        {
            return Err(
                "lifetimes must satisfy 10 <= minimum <= default <= maximum <= 43200".into(),
            );
        }
        if !(8..=48).contains(&next.default_length) {
            return Err("defaultLength must be 8..48".into());
        }
        *self = next;
        Ok(())
    }
}

/// The policy and the passes created, by user object id (the last one per user).
#[derive(Debug, Default)]
pub(crate) struct Taps {
    pub(crate) policy: TapPolicy,
    pub(crate) issued: HashMap<String, String>,
}
