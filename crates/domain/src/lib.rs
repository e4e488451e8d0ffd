//! GatheRing domain: pure types and ports (repository and service traits).
//!
//! No I/O lives here. Every engine crate depends on these traits; `gathering-store`
//! implements the repository traits on PostgreSQL; tests implement them in memory.

pub mod agents;
pub mod auth;
pub mod clock;
pub mod codes;
pub mod error;
pub mod events;
pub mod notifications;
#[cfg(any(test, feature = "test-support"))]
pub mod notifications_contract;
pub mod notify;
pub mod page;
pub mod pipeline;
pub mod projects;
pub mod quotas;
pub mod scheduler;
pub mod tools;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ErrorCode, ErrorKind, FieldProblem, RepoError};
pub use page::{Page, PageRequest};
