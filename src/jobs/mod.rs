//! The durable job queue: everything that leaves the server on its own (webhooks now,
//! notifications later). A job is accepted once its row is committed; workers claim due jobs
//! under a lease and a token, make the outbound call outside any transaction, and record
//! the outcome only while their token still holds. Every attempt is logged.

pub mod queue;
pub mod retry;
pub mod worker;

pub use queue::{Attempt, AttemptRow, Claimed, JobRow, NewJob, Outcome, Verdict};
pub use worker::{Handler, Workers};
