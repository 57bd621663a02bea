//! The fault suite: each scenario injects a fault or plays a hostile client against real
//! processes, then counts what was accepted against what arrived (or bounds what it cost).
//! The long form of the same scenarios is `scripts/faults.sh`, which writes
//! `docs/reliability.md`.

mod abuse;
mod bodies;
mod frames;
mod notifications;
mod presence_reset;
pub mod raw;
mod redis_restart;
mod tally;
mod webhook_crash;
