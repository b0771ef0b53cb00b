//! verimail's domain, free of I/O: the request rules of the send and check
//! endpoints, the CBC error table, the dispatch state machine, the queue
//! message, codes and their secrets, Huawei's SDK signature, and webhook
//! secrets, signatures and endpoint rules. Nothing here
//! talks to a network or a database (`verimail-infra` does), so the rules
//! build and test alone, and the fuzz targets compile only this.

pub mod account;
pub mod code;
pub mod error_code;
pub mod message;
pub mod rate_limit;
pub mod request;
pub mod sdk_signature;
pub mod secrets;
pub mod status;
pub mod webhook;

pub use error_code::ErrorCode;
pub use message::DispatchMessage;
pub use rate_limit::RateLimit;
pub use request::{CheckRequest, CodeTtl, Email, Lang, SendRequest};
pub use status::DispatchStatus;
