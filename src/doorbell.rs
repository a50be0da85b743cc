//! The doorbell between backends and the delivery workers: a backend that queued
//! records rings its database's worker when its transaction commits, and can tell
//! whether a worker is there to hear it (and if not, why).

use crate::roster::{self, State};
use pgrx::prelude::*;

/// Wakes this database's worker (sets its latch) if it runs; safe from any backend.
pub fn wake() {
    roster::ring();
}

/// Wakes the worker when the current transaction commits (records it queued become
/// visible only then); nothing happens on rollback.
pub fn wake_on_commit() {
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, wake);
}

/// This database's worker's pid when it runs (and this backend can know: the library
/// is preloaded).
pub fn running_pid() -> Option<i32> {
    roster::own_slot().and_then(|s| s.live_pid())
}

/// The name of this session's database, from the catalog cache (nothing the session
/// set can change it); within a transaction.
pub fn this_database() -> String {
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if name.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

/// Whether this database is a template (the launcher serves none: a connected worker
/// would make `CREATE DATABASE ... TEMPLATE` fail).
fn is_template() -> bool {
    unsafe {
        let tuple = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::DATABASEOID as _, pg_sys::Datum::from(pg_sys::MyDatabaseId));
        if tuple.is_null() {
            return false;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
        let template = (*form).datistemplate;
        pg_sys::ReleaseSysCache(tuple);
        template
    }
}

/// Why no worker will deliver what this database queues, with what to do about it;
/// None when one does (or is starting).
pub fn not_delivering() -> Option<String> {
    if !roster::preloaded() {
        return Some(
            "vitally_sync is not in shared_preload_libraries, so no worker delivers the queued records; \
             add it in postgresql.conf and restart the server"
                .into(),
        );
    }
    let here = this_database();
    if let Some(only) = crate::guc::database_filter() {
        if only != here {
            return Some(format!(
                "vitally.database = '{only}', so no worker serves database \"{here}\": records queued here are not delivered; \
                 set vitally.database = '' (every database) or '{here}' in postgresql.conf and reload"
            ));
        }
    }
    if is_template() {
        return Some(format!(
            "database \"{here}\" is a template, and no worker serves a template: records queued here are not delivered; \
             queue them in a database made from it"
        ));
    }
    let no_slot = || {
        let max = unsafe { pg_sys::max_worker_processes };
        format!(
            "no background worker is free to serve database \"{here}\" (max_worker_processes = {max} is used up): \
             records queued here wait; {}",
            roster::RAISE_MAX_WORKER_PROCESSES
        )
    };
    match roster::own_slot() {
        Some(s) if s.state() == State::NoWorkerSlot => Some(no_slot()),
        None if roster::full() => Some(format!(
            "the vitally_sync launcher serves at most {} databases with the extension, and database \"{here}\" may be beyond them: \
             records queued here may wait; drop the extension where it is not used, or narrow with vitally.database",
            roster::SLOTS
        )),
        _ => None,
    }
}

/// What `vitally.metrics.worker_status` says: `running`, `starting`, or why not.
pub fn status() -> String {
    if let Some(why) = not_delivering() {
        return why;
    }
    match roster::own_slot() {
        Some(s) if s.live_pid().is_some() && s.state() == State::WaitingForUpdate => format!(
            "waiting: the library is vitally_sync {}, the extension here another version; run ALTER EXTENSION vitally_sync UPDATE",
            env!("CARGO_PKG_VERSION")
        ),
        Some(s) if s.live_pid().is_some() => "running".into(),
        _ => "starting".into(),
    }
}

/// Tells the caller of `vitally.sync()` when nothing will deliver what it queued.
pub fn warn_if_not_delivering() {
    if let Some(why) = not_delivering() {
        warning!("{why}");
    }
}
