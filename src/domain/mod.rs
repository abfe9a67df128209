//! The domain: who is reset ([`UserRef`]), what was asked ([`ResetRequest`]) and what
//! happened ([`Outcome`]). These are also the wire formats on the broker.

mod outcome;
mod request;
mod restore;
mod user;

pub use outcome::{mask_email, mask_phone, MethodRecord, Outcome, Status, TapOutcome};
pub use request::{
    BatchManifest, Carry, ConsoleAction, PlanRecord, Record, ResetRequest, TapRequest,
    REQUEST_VERSION,
};
pub use restore::{RestoreMethod, RestoreRecord, RestoreResult, RestoreStage, RestoreUser};
pub use user::{UserRef, UserRefError};
