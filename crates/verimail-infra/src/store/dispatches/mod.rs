//! Every statement on `dispatches`, by the operation it serves: the intake's
//! record and hand-off (`accept`), the status read (`view`), the code check
//! (`check`), the worker's claims, lease renewals and outcomes (`claims`,
//! `outcomes`, group-committed by `writes`), the sweeper's pick of overdue
//! rows (`sweep`), erasure (`erase`) and the age of the oldest dispatch
//! waiting for a worker (`waiting`).

pub mod accept;
pub mod awaited;
pub mod check;
pub mod claims;
pub mod erase;
pub mod outcomes;
pub mod partitions;
pub mod report;
pub mod sweep;
pub mod view;
pub mod waiting;
pub mod writes;

pub use accept::{Admission, NewDispatch, Records};
pub use check::{CheckOutcome, MAX_CHECK_FAILURES};
pub use claims::{Claim, ClaimToken, Claimed, TAKEOVER_GRACE};
pub use claims::{claim, claim_many, renew};
pub use outcomes::{Finish, Outcome};
pub use outcomes::{finish, finish_many};
pub use sweep::overdue;
pub use view::DispatchView;
pub use writes::Writes;

/// Requests per group-committed statement at most.
const BATCH_MAX: usize = 64;

/// How far an id's time may be from Postgres' clock (`accept_dispatch`
/// refuses ids further off): the margin every id bound of a recipient scan
/// adds to its window, so pruning never drops a row the window holds, and
/// that maintenance adds before it drops a partition.
pub const ID_CLOCK_MARGIN: std::time::Duration = std::time::Duration::from_secs(300);

const ID_CLOCK_MARGIN_SECS: f64 = ID_CLOCK_MARGIN.as_secs() as f64;
