//! The stores: one module per table, owning every statement on it. Static
//! statements are checked against the schema at compile time
//! (`sqlx::query!`, with the offline data in `.sqlx/`; `scripts/sqlx-prepare.sh`
//! regenerates it and CI checks it is current). Dynamic DDL (partitions, in
//! `verimail-worker`'s maintenance) is the one exception.
//!
//! State names and sets are bound from `DispatchStatus`, never spelled in
//! SQL here. Every scan of one recipient's rows bounds `id` as well as
//! `created_at`, so it reads only the partitions its window can touch
//! (`dispatches` is partitioned by UUIDv7 id, one UTC day each).

pub mod access_keys;
pub mod dispatches;
pub mod partners;
pub mod revocations;
pub mod send_replays;
pub mod tokens;
pub mod webhook_events;
pub mod webhooks;
