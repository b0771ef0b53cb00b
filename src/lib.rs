//! The `verimail` binary's pieces: CLI, configuration and telemetry.

pub mod cli;
pub mod config;
pub mod dev_bootstrap;
pub mod telemetry;
