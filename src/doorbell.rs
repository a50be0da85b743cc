//! The doorbell between backends and the worker: a backend that queued records rings
//! it when its transaction commits (the worker's latch, found by the pid the worker
//! keeps in shared memory), and can tell whether a worker is there to hear it.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// The worker's pid in shared memory, so that a committing backend can wake it.
static WORKER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"vitally_sync_worker_pid") };

/// How often the doorbell rang: the worker tells a commit that queued records from its
/// own wake-ups (new records may sort before where its claims resume).
static RINGS: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"vitally_sync_rings") };

/// Set in the postmaster when the library is preloaded; every backend inherits it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Called from `_PG_init` while preloading: the shared memory the doorbell needs.
pub fn init() {
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(WORKER_PID);
    pg_shmem_init!(RINGS);
}

/// How many times the doorbell has rung since the server started.
pub fn rings() -> u64 {
    RINGS.get().load(Ordering::Relaxed)
}

/// The worker says where it is (0 when it stops).
pub fn set_worker_pid(pid: i32) {
    WORKER_PID.get().store(pid, Ordering::Relaxed);
}

/// Wakes the worker (sets its latch) if it runs; safe from any backend.
pub fn wake() {
    if !PRELOADED.load(Ordering::Relaxed) {
        return;
    }
    RINGS.get().fetch_add(1, Ordering::Relaxed);
    let pid = WORKER_PID.get().load(Ordering::Relaxed);
    if pid <= 0 {
        return;
    }
    unsafe {
        let proc_ = pg_sys::BackendPidGetProc(pid);
        if !proc_.is_null() {
            pg_sys::SetLatch(&mut (*proc_).procLatch);
        }
    }
}

/// Wakes the worker when the current transaction commits (records it queued become
/// visible only then); nothing happens on rollback.
pub fn wake_on_commit() {
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, wake);
}

/// The worker's pid when it runs (and this backend can know: the library is preloaded).
pub fn running_pid() -> Option<i32> {
    if !PRELOADED.load(Ordering::Relaxed) {
        return None;
    }
    let pid = WORKER_PID.get().load(Ordering::Relaxed);
    (pid > 0 && !unsafe { pg_sys::BackendPidGetProc(pid) }.is_null()).then_some(pid)
}

/// Why no worker will deliver what this database queues, with what to do about it;
/// None when one does.
pub fn not_delivering() -> Option<String> {
    if !PRELOADED.load(Ordering::Relaxed) {
        return Some(
            "vitally_sync is not in shared_preload_libraries, so no worker delivers the queued records; \
             add it in postgresql.conf and restart the server"
                .into(),
        );
    }
    let served = crate::guc::database();
    // The catalog cache, not SQL: nothing the session set can change the answer.
    let here = unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if name.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    };
    (served != here).then(|| {
        format!(
            "the vitally_sync worker serves database \"{served}\", not \"{here}\": records queued here are not delivered; \
             set vitally.database = '{here}' in postgresql.conf and restart the server"
        )
    })
}

/// Tells the caller of `vitally.sync()` when nothing will deliver what it queued.
pub fn warn_if_not_delivering() {
    if let Some(why) = not_delivering() {
        warning!("{why}");
    }
}
