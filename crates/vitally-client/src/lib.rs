//! Speaks Vitally: everything about Vitally's Analytics and REST APIs that needs no Postgres.
//!
//! The extension crate glues this to the database; tests and benchmarks run it
//! against `vitally-emulator` over loopback HTTP.

pub mod destination;
