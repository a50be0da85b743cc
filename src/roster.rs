//! Who serves which database: a table in shared memory with one slot per database the
//! launcher serves or has looked at. The launcher alone assigns and frees slots; the
//! delivery worker of a slot says how it fares; any backend reads its own database's
//! slot (to wake its worker, or to say why nothing delivers) and may ask for a look.
//!
//! Everything is an atomic: a backend rings the doorbell from its commit callback,
//! where taking a lock is best avoided, and a stale read costs at most one more look.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Databases served (or looked at) at once; more are refused with a log line, as when
/// `max_worker_processes` is used up.
pub const SLOTS: usize = 128;

/// What to do when `max_worker_processes` is used up (the launcher's log line and the
/// database's `worker_status` both say it).
pub const RAISE_MAX_WORKER_PROCESSES: &str = "raise max_worker_processes (one per database with the extension, one for the launcher, \
     plus parallel queries and other extensions) and restart the server";

/// What the launcher knows of a slot's worker.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum State {
    /// Not started yet, or stopped for a reason other than the extension's absence:
    /// the launcher starts a worker.
    Wanted = 0,
    /// Registered with the postmaster; the worker has not said more yet.
    Starting = 1,
    /// The worker found the extension (at any version) and runs.
    Serving = 2,
    /// The worker found no extension and stopped; it is looked for again when a
    /// `CREATE EXTENSION` runs in the database, and every few minutes.
    Absent = 3,
    /// `max_worker_processes` was used up (or the roster full) when the launcher tried.
    NoWorkerSlot = 4,
    /// The worker runs, and found the extension at another version than the library's.
    WaitingForUpdate = 5,
}

impl State {
    fn from_u32(v: u32) -> State {
        match v {
            1 => State::Starting,
            2 => State::Serving,
            3 => State::Absent,
            4 => State::NoWorkerSlot,
            5 => State::WaitingForUpdate,
            _ => State::Wanted,
        }
    }
}

pub struct Slot {
    /// The database's oid; 0 while the slot is free. Written by the launcher only.
    database: AtomicU32,
    /// The delivery worker's pid while it runs, else 0.
    pid: AtomicI32,
    state: AtomicU32,
    /// Bumped by every commit that queued records here: the worker tells a commit that
    /// queued records from its own wake-ups (new records may sort before where its
    /// claims resume).
    rings: AtomicU64,
    /// Bumped by commits that marked changes of watched tables (for the live planners),
    /// at most once per `LIVE_RING_EVERY_MS`: a writer committing thousands of times a
    /// second must not make the worker look thousands of times (it looks every second
    /// anyway, and a running planner every 100 ms).
    live_rings: AtomicU64,
    live_rung_at: AtomicU64,
    /// A DROP, RENAME or copy of the database is under way: no worker until then (ms
    /// since the epoch).
    paused_until: AtomicU64,
}

impl Slot {
    // Only to fill the roster's array at startup (each use is a fresh value).
    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: Slot = Slot {
        database: AtomicU32::new(0),
        pid: AtomicI32::new(0),
        state: AtomicU32::new(0),
        rings: AtomicU64::new(0),
        live_rings: AtomicU64::new(0),
        live_rung_at: AtomicU64::new(0),
        paused_until: AtomicU64::new(0),
    };

    pub fn database(&self) -> pg_sys::Oid {
        pg_sys::Oid::from(self.database.load(Ordering::Acquire))
    }
    pub fn state(&self) -> State {
        State::from_u32(self.state.load(Ordering::Acquire))
    }
    pub fn set_state(&self, s: State) {
        self.state.store(s as u32, Ordering::Release);
    }
    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::Acquire)
    }
    pub fn set_pid(&self, pid: i32) {
        self.pid.store(pid, Ordering::Release);
    }
    /// Makes the slot process `pid`'s, unless another live process has it.
    pub fn claim_pid(&self, pid: i32) -> bool {
        loop {
            let old = self.pid();
            // kill(0), not the proc array: a worker still connecting is not in it yet.
            if old > 0 && old != pid && unsafe { libc::kill(old, 0) } == 0 {
                return false;
            }
            if self.pid.compare_exchange(old, pid, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return true;
            }
        }
    }
    /// The worker's pid if that process still runs.
    pub fn live_pid(&self) -> Option<i32> {
        let pid = self.pid();
        (pid > 0 && !unsafe { pg_sys::BackendPidGetProc(pid) }.is_null()).then_some(pid)
    }
    pub fn rings(&self) -> u64 {
        self.rings.load(Ordering::Relaxed)
    }
    pub fn live_rings(&self) -> u64 {
        self.live_rings.load(Ordering::Relaxed)
    }
    pub fn paused(&self) -> bool {
        self.paused_until.load(Ordering::Acquire) > now_ms()
    }
}

/// Looks asked for by `CREATE EXTENSION` and not yet seen by the launcher: a ring of
/// (sequence << 32 | database oid). A database without the extension has no slot, so
/// the ask names it here; asks beyond this many between two ticks are lost, and the
/// launcher's look every few minutes catches those.
pub const ASKS: usize = 16;

pub struct Roster {
    launcher_pid: AtomicI32,
    ask_next: AtomicU32,
    asks: [AtomicU64; ASKS],
    /// Set once the launcher found more databases than slots (it logs why).
    full: AtomicBool,
    slots: [Slot; SLOTS],
}

// SAFETY: only atomics, valid when zeroed, shared between processes as they are.
unsafe impl PGRXSharedMemory for Roster {}

static ROSTER: PgAtomic<Roster> = unsafe { PgAtomic::new(c"vitally_sync_roster") };

/// Set in the postmaster when the library is preloaded; every backend inherits it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Called from `_PG_init` while preloading.
pub fn init() {
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(
        ROSTER = Roster {
            launcher_pid: AtomicI32::new(0),
            ask_next: AtomicU32::new(0),
            asks: [const { AtomicU64::new(0) }; ASKS],
            full: AtomicBool::new(false),
            slots: [Slot::FREE; SLOTS],
        }
    );
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

fn roster() -> Option<&'static Roster> {
    preloaded().then(|| ROSTER.get())
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The slot at `index` (the launcher hands it to the worker it starts).
pub fn slot(index: usize) -> &'static Slot {
    &ROSTER.get().slots[index]
}

/// The slot of database `db`, if the launcher gave it one.
pub fn slot_of(db: pg_sys::Oid) -> Option<&'static Slot> {
    roster()?.slots.iter().find(|s| s.database() == db)
}

/// This session's database's slot.
pub fn own_slot() -> Option<&'static Slot> {
    slot_of(unsafe { pg_sys::MyDatabaseId })
}

// ---- the launcher's side ----

pub fn set_launcher_pid(pid: i32) {
    ROSTER.get().launcher_pid.store(pid, Ordering::Release);
}

pub fn set_full(full: bool) {
    ROSTER.get().full.store(full, Ordering::Relaxed);
}

/// Indexes and databases of the slots in use.
pub fn assigned() -> Vec<(usize, pg_sys::Oid)> {
    ROSTER.get().slots.iter().enumerate().filter(|(_, s)| s.database() != pg_sys::InvalidOid).map(|(i, s)| (i, s.database())).collect()
}

/// Gives database `db` a free slot (state Wanted), or None when all are taken.
pub fn assign(db: pg_sys::Oid) -> Option<usize> {
    let slots = &ROSTER.get().slots;
    let index = slots.iter().position(|s| s.database() == pg_sys::InvalidOid)?;
    let s = &slots[index];
    s.set_pid(0);
    s.set_state(State::Wanted);
    s.paused_until.store(0, Ordering::Relaxed);
    s.database.store(db.to_u32(), Ordering::Release);
    Some(index)
}

pub fn free(index: usize) {
    ROSTER.get().slots[index].database.store(0, Ordering::Release);
}

// ---- any backend's side ----

/// Sets the latch of process `pid`, if it runs.
fn set_latch(pid: i32) {
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

/// Wakes the launcher, if it runs.
pub fn wake_launcher() {
    if let Some(r) = roster() {
        set_latch(r.launcher_pid.load(Ordering::Acquire));
    }
}

/// Rings this database's doorbell: its worker (if any) wakes and claims.
pub fn ring() {
    if let Some(s) = own_slot() {
        s.rings.fetch_add(1, Ordering::Relaxed);
        set_latch(s.pid());
    }
}

const LIVE_RING_EVERY_MS: u64 = 100;

/// Wakes this database's worker for marks a commit made, unless another commit did
/// within the last `LIVE_RING_EVERY_MS`.
pub fn ring_live() {
    if let Some(s) = own_slot() {
        let now = now_ms();
        let last = s.live_rung_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < LIVE_RING_EVERY_MS {
            return;
        }
        if s.live_rung_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            s.live_rings.fetch_add(1, Ordering::Relaxed);
            set_latch(s.pid());
        }
    }
}

/// Asks the launcher to look at this database again (an extension was created here).
pub fn ask_for_a_look() {
    if let Some(r) = roster() {
        let n = r.ask_next.fetch_add(1, Ordering::Relaxed);
        r.asks[n as usize % ASKS].store(((n as u64) << 32) | unsafe { pg_sys::MyDatabaseId }.to_u32() as u64, Ordering::Release);
    }
    wake_launcher();
}

/// The ring of asks, as it is now (the launcher compares it with what it saw last).
pub fn asks() -> [u64; ASKS] {
    let r = ROSTER.get();
    std::array::from_fn(|i| r.asks[i].load(Ordering::Acquire))
}

/// Stops the worker of database `db` for `for_ms` and waits (up to `wait_ms`) for it
/// to exit, so that a DROP or RENAME DATABASE finds no other session connected.
pub fn pause(db: pg_sys::Oid, for_ms: u64, wait_ms: u64) {
    let Some(s) = slot_of(db) else { return };
    s.paused_until.store(now_ms() + for_ms, Ordering::Release);
    // A worker that has not claimed the slot yet sees the pause once connected, and leaves.
    let Some(pid) = s.live_pid() else { return };
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = now_ms() + wait_ms;
    while s.live_pid() == Some(pid) && now_ms() < deadline {
        unsafe {
            pg_sys::pg_usleep(10_000);
        }
        pgrx::check_for_interrupts!();
    }
}

/// Ends a pause (its statement failed, or its transaction ended): the launcher starts
/// the worker again.
pub fn resume(db: pg_sys::Oid) {
    if let Some(s) = slot_of(db) {
        s.paused_until.store(0, Ordering::Release);
        wake_launcher();
    }
}

/// Whether the launcher gave up on some database for want of slots in the roster.
pub fn full() -> bool {
    roster().is_some_and(|r| r.full.load(Ordering::Relaxed))
}
