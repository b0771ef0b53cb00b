//! verimail's plumbing, shared by the intake and the worker: the Postgres
//! pool and migrations, the AMQP topology and the one publisher, group
//! commit, the metrics recorder and listener, and telemetry (log setup and
//! address redaction). The domain it serves is `verimail-domain`.

pub mod amqp;
pub mod batch;
pub mod db;
pub mod metrics;
pub mod metrics_server;
pub mod publisher;
pub mod store;
pub mod telemetry;
pub mod webhook_endpoint;
