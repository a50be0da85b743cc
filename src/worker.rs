//! The background worker: registered at server start, connected to `vitally.database`.
//!
//! For now it only keeps itself alive and ready: it waits on its latch, reloads
//! settings on SIGHUP, and looks for the extension without ever failing when it is
//! missing (the worker starts before `CREATE EXTENSION`, and outlives `DROP EXTENSION`).

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long the postmaster waits before starting the worker again after it exits.
const RESTART_AFTER: Duration = Duration::from_secs(2);
/// How often the worker wakes with nothing to do, to notice the extension appear.
const IDLE_WAKE: Duration = Duration::from_secs(5);

pub fn register() {
    BackgroundWorkerBuilder::new("vitally_sync worker")
        .set_type("vitally_sync worker")
        .set_library("vitally_sync")
        .set_function("vitally_sync_worker_main")
        .enable_spi_access()
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn vitally_sync_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = crate::guc::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("vitally_sync worker started for database \"{database}\"");

    let mut installed = false;
    while BackgroundWorker::wait_latch(Some(IDLE_WAKE)) {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let now_installed = extension_installed();
        if now_installed != installed {
            log!(
                "vitally_sync worker: extension {} in database \"{database}\"",
                if now_installed { "found" } else { "not installed" }
            );
            installed = now_installed;
        }
    }
    // Exit code 1 asks the postmaster to start the worker again (after RESTART_AFTER)
    // when it was only this process that was told to stop (pg_terminate_backend); at
    // server shutdown the postmaster does not restart anything.
    unsafe { pg_sys::proc_exit(1) };
}

fn extension_installed() -> bool {
    BackgroundWorker::transaction(|| {
        Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'vitally_sync')")
            .ok()
            .flatten()
            .unwrap_or(false)
    })
}

/// Set in the postmaster when the library is preloaded; every backend inherits it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Remembers that the library was preloaded, so a worker exists (called from `_PG_init`).
pub fn mark_preloaded() {
    PRELOADED.store(true, Ordering::Relaxed);
}

/// Tells the caller of `vitally.sync()` when nothing will deliver what it queued.
pub fn warn_if_not_delivering() {
    if !PRELOADED.load(Ordering::Relaxed) {
        warning!(
            "vitally_sync is not in shared_preload_libraries, so no worker delivers the queued records; \
             add it in postgresql.conf and restart the server"
        );
        return;
    }
    let served = crate::guc::database();
    let here = Spi::get_one::<String>("SELECT pg_catalog.current_database()::text").ok().flatten().unwrap_or_default();
    if served != here {
        warning!(
            "the vitally_sync worker serves database \"{served}\", not \"{here}\": records queued here are not delivered; \
             set vitally.database = '{here}' in postgresql.conf and restart the server"
        );
    }
}
