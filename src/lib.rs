//! The `verimail` binary's pieces: CLI and configuration (telemetry is `verimail_infra::telemetry`).

pub mod cli;
pub mod config;
pub mod dev_bootstrap;
