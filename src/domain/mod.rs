//! The domain: who is reset ([`UserRef`]), what was asked ([`ResetRequest`]) and what
//! happened ([`Outcome`]). These are also the wire formats on the broker.

mod outcome;
mod request;
mod user;

pub use outcome::{mask_email, mask_phone, MethodRecord, Outcome, Status};
pub use request::{
    BatchManifest, Carry, ConsoleAction, PlanRecord, Record, ResetRequest, REQUEST_VERSION,
};
pub use user::{UserRef, UserRefError};
