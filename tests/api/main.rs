//! The root package's integration tests, as one test binary: each file
//! beside this one is a module, and `support` is compiled and linked once.
//! Run one file's tests with `cargo test --test api <module>::`, e.g.
//! `cargo test --test api races::`.
//!
//! The tests share one process and run in parallel threads. A test that
//! needs the process to itself (a global recorder or subscriber) reruns
//! itself alone in a child process: `support::run_in_own_process`.

mod support;

mod abuse;
mod alert_signals;
mod backlog;
mod check;
mod compose_consistency;
mod dev_bootstrap;
mod dkim;
mod fault_injection;
mod high_availability;
mod high_availability_run;
mod idempotency;
mod intake_aksk;
mod intake_auth;
mod intake_outages;
mod intake_rate_limit;
mod intake_send;
mod lifecycle;
mod logs_no_secrets;
mod metrics;
mod openapi;
mod partner_senders;
mod pipeline;
mod plans;
mod prefer_wait;
mod races;
mod relays;
mod schema;
mod sweep;
mod trace_export;
mod webhook_delivery;
mod webhooks;
mod worker_core;
