//! The launcher: one background worker, started when the server is ready for writes
//! (never on a standby: it starts at promotion), connected to no database. Every second
//! it reads `pg_database` and keeps one delivery worker per database where the
//! extension is installed: it starts one in each database it has not looked at, starts
//! one again when it stops for any reason but the extension's absence, and looks again
//! at a database without the extension when a `CREATE EXTENSION` runs there (and every
//! few minutes). It never touches a database's tables itself.

use crate::roster::{self, State};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;
use std::collections::HashMap;
use std::ffi::CStr;
use std::time::{Duration, Instant};

/// How often the launcher reads `pg_database` with nothing else to wake it.
const TICK: Duration = Duration::from_secs(1);
/// How long after a worker stopped (an error, a terminate) another is started.
const RESTART_AFTER: Duration = Duration::from_secs(2);
/// How often a database without the extension is looked at again, in case a
/// `CREATE EXTENSION` went unseen (one nested in another extension's, say).
const LOOK_AGAIN: Duration = Duration::from_secs(300);
/// The least time between two looks at a database that a `CREATE EXTENSION` asked for.
const ASKED_LOOKS_APART: Duration = Duration::from_secs(1);
/// How often a database that found no free worker slot tries again.
const RETRY_NO_SLOT: Duration = Duration::from_secs(10);
/// Workers starting at once: a cluster of many databases is looked at a few at a
/// time, so that the looks never take every worker slot.
const STARTING_AT_ONCE: usize = 2;
/// A start older than this no longer counts as starting (a worker may wait long on a
/// lock of its database while connecting, and must not hold up every other start).
const STARTING_FOR_AT_MOST: Duration = Duration::from_secs(10);
/// The longest wait before starting again a worker that keeps failing before it says
/// anything (a database whose settings make every connection fail, say).
const LONGEST_BACKOFF: Duration = Duration::from_secs(300);

/// Called from `_PG_init` while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new("vitally_sync launcher")
        .set_type("vitally_sync launcher")
        .set_library("vitally_sync")
        .set_function("vitally_sync_launcher_main")
        // A connection (to no database) to read pg_database; starts once recovery ends.
        .enable_spi_access()
        .enable_shmem_access(None)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

/// The databases a worker may connect to: not templates (a connected worker would make
/// `CREATE DATABASE ... TEMPLATE` fail), connections allowed, not half-dropped.
fn databases() -> Vec<(pg_sys::Oid, String)> {
    BackgroundWorker::transaction(|| unsafe {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        let mut found = Vec::new();
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            // -2: DATCONNLIMIT_INVALID_DB, a DROP DATABASE that was interrupted.
            if form.datistemplate || !form.datallowconn || form.datconnlimit == -2 {
                continue;
            }
            found.push((form.oid, CStr::from_ptr(form.datname.data.as_ptr()).to_string_lossy().into_owned()));
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, lock);
        found
    })
}

/// What the launcher keeps of a slot between ticks.
struct Kept {
    /// The worker it started (None for one a previous launcher started, watched by pid).
    handle: Option<DynamicBackgroundWorker>,
    stopped_at: Option<Instant>,
    last_start: Option<Instant>,
    warned_no_slot: bool,
    /// Starts in a row that ended before the worker said anything: the wait doubles.
    failures: u32,
}

impl Kept {
    fn new() -> Kept {
        Kept { handle: None, stopped_at: None, last_start: None, warned_no_slot: false, failures: 0 }
    }

    /// Whether the slot's worker runs (or is about to).
    fn running(&mut self, slot: &roster::Slot) -> bool {
        if let Some(handle) = &self.handle {
            match handle.pid() {
                Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => return true,
                Err(_) => self.handle = None,
            }
        }
        slot.live_pid().is_some()
    }

    fn stop(&mut self, slot: &roster::Slot) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.terminate();
        } else if let Some(pid) = slot.live_pid() {
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// The delivery worker's argument: its slot and its database in one Datum.
fn worker_argument(slot: usize, db: pg_sys::Oid) -> pg_sys::Datum {
    pg_sys::Datum::from(((slot as u64) << 32) | db.to_u32() as u64)
}

pub fn decode_argument(arg: pg_sys::Datum) -> (usize, pg_sys::Oid) {
    let v = arg.value() as u64;
    ((v >> 32) as usize, pg_sys::Oid::from((v & 0xffff_ffff) as u32))
}

fn start_worker(slot: usize, db: pg_sys::Oid, name: &str) -> Option<DynamicBackgroundWorker> {
    let builder = BackgroundWorkerBuilder::new(&format!("vitally_sync worker for {name}"))
        .set_type("vitally_sync worker")
        .set_library("vitally_sync")
        .set_function("vitally_sync_worker_main")
        .enable_spi_access()
        .enable_shmem_access(None)
        // The launcher starts it again; the postmaster never does.
        .set_restart_time(None)
        .set_argument(Some(worker_argument(slot, db)))
        .set_notify_pid(unsafe { pg_sys::MyProcPid });
    // The handle outlives every transaction.
    unsafe { PgMemoryContexts::TopMemoryContext.switch_to(|_| builder.load_dynamic()) }.ok()
}

struct Launcher {
    /// Slots: databases with the extension (and the few being looked at).
    kept: HashMap<usize, Kept>,
    /// Databases looked at and found without the extension (no slot), and when.
    absent: HashMap<pg_sys::Oid, Instant>,
    /// The ring of asks as last seen, and the databases asked for and not looked at yet.
    asks_seen: [u64; roster::ASKS],
    asked: std::collections::HashSet<pg_sys::Oid>,
}

impl Launcher {
    fn tick(&mut self) {
        let filter = crate::guc::database_filter();
        let wanted: HashMap<pg_sys::Oid, String> =
            databases().into_iter().filter(|(_, name)| filter.as_ref().is_none_or(|only| only == name)).collect();

        let asks = roster::asks();
        for (seen, now) in self.asks_seen.iter_mut().zip(asks) {
            if *seen != now {
                self.asked.insert(pg_sys::Oid::from((now & 0xffff_ffff) as u32));
                *seen = now;
            }
        }
        self.asked.retain(|db| wanted.contains_key(db));
        self.absent.retain(|db, _| wanted.contains_key(db));

        // Dropped, filtered out, made a template: its worker stops, then its slot goes.
        // A database found without the extension gives its slot back too.
        for (index, db) in roster::assigned() {
            let slot = roster::slot(index);
            let kept = self.kept.entry(index).or_insert_with(|| {
                // A slot of the launcher before this one: its worker may run on.
                if let (Some(pid), Some(name)) = (slot.live_pid(), wanted.get(&db)) {
                    log!("vitally_sync launcher: the worker of database \"{name}\" (pid {pid}) runs on");
                }
                Kept::new()
            });
            let absent = slot.state() == State::Absent;
            if !wanted.contains_key(&db) || absent {
                if kept.running(slot) {
                    if !absent {
                        kept.stop(slot);
                    }
                } else {
                    let looked = kept.last_start.unwrap_or_else(Instant::now);
                    roster::free(index);
                    self.kept.remove(&index);
                    if absent && wanted.contains_key(&db) {
                        self.absent.insert(db, looked);
                    }
                }
            }
        }
        // Databases not looked at yet, asked for, or due for another look: a slot each,
        // a few at a time.
        let mut full = false;
        let mut waiting = roster::assigned().iter().filter(|(i, _)| roster::slot(*i).state() == State::Wanted).count();
        for db in wanted.keys() {
            if roster::slot_of(*db).is_some() || waiting >= STARTING_AT_ONCE {
                continue;
            }
            let due = match self.absent.get(db) {
                None => true,
                // Asked or not, at most one look a second: any role may run CREATE EXTENSION.
                Some(t) => (self.asked.contains(db) && t.elapsed() >= ASKED_LOOKS_APART) || t.elapsed() >= LOOK_AGAIN,
            };
            if !due {
                continue;
            }
            match roster::assign(*db) {
                Some(index) => {
                    self.kept.insert(index, Kept::new());
                    self.absent.remove(db);
                    self.asked.remove(db);
                    waiting += 1;
                }
                None => full = true,
            }
        }
        // Said once, when the roster becomes full.
        if full && !roster::full() {
            warning!(
                "vitally_sync launcher: more than {} databases with the extension; the others are not served until some are dropped \
                 (or narrow with vitally.database)",
                roster::SLOTS
            );
        }
        roster::set_full(full);

        // Started lately and not yet saying whether the extension is there.
        let mut starting = 0;
        for (index, _) in roster::assigned() {
            let slot = roster::slot(index);
            let young = |k: &Kept| k.last_start.is_some_and(|t| t.elapsed() < STARTING_FOR_AT_MOST);
            if slot.state() == State::Starting && self.kept.get_mut(&index).is_some_and(|k| young(k) && k.running(slot)) {
                starting += 1;
            }
        }
        for (index, db) in roster::assigned() {
            let Some(name) = wanted.get(&db) else { continue };
            let slot = roster::slot(index);
            let kept = self.kept.get_mut(&index).expect("every assigned slot is kept");
            if kept.running(slot) {
                if slot.state() != State::Starting {
                    kept.failures = 0;
                }
                continue;
            }
            if kept.stopped_at.is_none() && slot.state() == State::Starting && kept.last_start.is_some() {
                // It ended before it said anything: an error at start.
                kept.failures = kept.failures.saturating_add(1);
            }
            let stopped_at = *kept.stopped_at.get_or_insert_with(Instant::now);
            if slot.paused() || starting >= STARTING_AT_ONCE {
                continue;
            }
            let asked = self.asked.contains(&db);
            let since_start = kept.last_start.map_or(Duration::MAX, |t| t.elapsed());
            let due = match slot.state() {
                State::Wanted => true,
                State::Serving | State::WaitingForUpdate => stopped_at.elapsed() >= RESTART_AFTER,
                State::Starting => stopped_at.elapsed() >= (RESTART_AFTER * 2u32.saturating_pow(kept.failures.min(8))).min(LONGEST_BACKOFF),
                // Its slot goes back (above) once the worker is gone.
                State::Absent => false,
                State::NoWorkerSlot => (asked && since_start >= ASKED_LOOKS_APART) || since_start >= RETRY_NO_SLOT,
            };
            if !due {
                continue;
            }
            self.asked.remove(&db);
            kept.last_start = Some(Instant::now());
            // Said before the worker can say otherwise.
            slot.set_state(State::Starting);
            match start_worker(index, db, name) {
                Some(handle) => {
                    kept.handle = Some(handle);
                    kept.stopped_at = None;
                    starting += 1;
                    if std::mem::take(&mut kept.warned_no_slot) {
                        log!("vitally_sync launcher: a worker slot came free for database \"{name}\"");
                    }
                }
                None => {
                    slot.set_state(State::NoWorkerSlot);
                    if !std::mem::replace(&mut kept.warned_no_slot, true) {
                        warning!(
                            "vitally_sync launcher: no background worker slot for database \"{name}\": max_worker_processes = {} is used up; \
                             records queued there wait; {}",
                            unsafe { pg_sys::max_worker_processes },
                            roster::RAISE_MAX_WORKER_PROCESSES
                        );
                    }
                }
            }
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn vitally_sync_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    roster::set_launcher_pid(unsafe { pg_sys::MyProcPid });
    log!("vitally_sync launcher started");
    let mut launcher = Launcher { kept: HashMap::new(), absent: HashMap::new(), asks_seen: roster::asks(), asked: Default::default() };
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        launcher.tick();
        if !BackgroundWorker::wait_latch(Some(TICK)) {
            break;
        }
    }
    roster::set_launcher_pid(0);
    // Exit code 1: started again (after RESTART_AFTER) when only the launcher was told to
    // stop; the workers it started run on, and the next launcher watches them by pid.
    unsafe { pg_sys::proc_exit(1) };
}
