//! Speaks Vitally: everything about Vitally's Analytics and REST APIs that needs no Postgres
//! (and how the worker fills a job of records for one of them, `jobs`).
//!
//! The extension crate glues this to the database; tests and benchmarks run it
//! against `vitally-emulator` over loopback HTTP.

pub mod auth;
pub mod client;
pub mod delivery;
pub mod destination;
pub mod jobs;
pub mod message;
pub mod outcome;
pub mod ratelimit;
pub mod retry;

pub use client::{ClientConfig, Endpoint, KeyCheck, Lookup, VitallyClient, MAX_BATCH};
pub use outcome::Outcome;
pub use retry::{Next, RetryPolicy};
pub use vitally_model::{Object, Route};
