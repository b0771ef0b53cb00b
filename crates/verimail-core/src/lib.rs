//! Domain types shared by the intake and the worker: the request rules of
//! the send and check endpoints, the CBC error table, the dispatch state machine, the queue
//! message, code secrets, and the broker/database plumbing both sides use.

pub mod amqp;
pub mod batch;
pub mod code;
pub mod db;
pub mod error_code;
pub mod message;
pub mod metrics;
pub mod metrics_server;
pub mod publisher;
pub mod request;
pub mod sdk_signature;
pub mod secrets;
pub mod status;

pub use error_code::ErrorCode;
pub use message::DispatchMessage;
pub use request::{CheckRequest, CodeTtl, Email, Lang, SendRequest};
pub use status::DispatchStatus;
