//! The SQL functions users call, one file per kind of thing they manage. Each returns
//! `Result<T, ErrorReport>`: pgrx raises an `ErrorReport` (and only that type) with
//! its SQLSTATE and hint, so it is returned unboxed whatever its size.
#![allow(clippy::result_large_err)]

mod delivery;
mod destinations;
mod monitoring;
mod running;
mod scheduling;
mod syncs;
mod watches;
