//! The intake: the HTTP API that validates, authenticates, rate-limits and
//! records a dispatch, then hands its id to RabbitMQ.

pub mod accounts;
pub mod auth;
pub mod backlog;
pub mod error;
pub mod first_attempts;
pub mod replays;
pub mod request_id;
pub mod routes;
pub mod serve;
pub mod settings;
pub mod startup;
pub mod state;

pub use settings::{IntakeSettings, RateLimit};
pub use startup::Application;
pub use state::AppState;
