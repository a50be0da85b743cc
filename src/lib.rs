//! vitally_sync: reverse ETL from PostgreSQL to Vitally, inside the database.
//!
//! This crate is only the glue to Postgres. What can be tested without a server
//! lives in `crates/` (the vocabulary, the planner, the Vitally client, the emulator).
//! CONTRIBUTING.md draws the modules and which may call which.

use pgrx::prelude::*;

mod api;
mod catalog;
mod comparison;
mod doorbell;
mod elevation;
mod errors;
mod guc;
mod launcher;
mod live_planner;
mod log_scrub;
mod message_ids;
mod planning;
mod progress;
mod queue;
mod roster;
mod scheduling;
mod schema;
mod utility_hook;
mod watching;
mod worker;

pgrx::pg_module_magic!();

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
    log_scrub::install();
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        roster::init();
        utility_hook::install();
        launcher::register();
    }
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
