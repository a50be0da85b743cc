//! The `messageId` of a queued change: `vitally.new_message_id()`, called once per
//! record queued. Vitally needs only that a change's id is new and is kept across its
//! retries; `gen_random_uuid()` read the kernel's random source for each of a million
//! records (1.3 s of a first run), where this costs an addition.
//!
//! Each backend draws 16 random bytes once (Postgres's strong random source) and then
//! counts: an id is a random prefix (60 bits once shaped as a version-4 UUID) and a
//! 62-bit counter from a random start. Two backends share ids only if their prefixes
//! collide. The ids are unique, not secret: a session can tell its next one.

use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// (the process that drew them, prefix, counter): redrawn in a new process, so a
    /// backend forked from a postmaster that had called this never repeats its ids.
    static STATE: Cell<(i32, u64, u64)> = const { Cell::new((0, 0, 0)) };
}

/// The next id of this backend.
pub fn next() -> pgrx::Uuid {
    // Postgres's own copy of the pid: std::process::id() is a system call per id.
    let pid = unsafe { pg_sys::MyProcPid };
    let (owner, prefix, counter) = STATE.get();
    let (prefix, counter) = if owner == pid { (prefix, counter.wrapping_add(1)) } else { draw() };
    STATE.set((pid, prefix, counter));
    pgrx::Uuid::from_bytes(shape(prefix, counter))
}

fn draw() -> (u64, u64) {
    let mut bytes = [0u8; 16];
    if !unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) } {
        error!("vitally_sync: could not read random bytes for a messageId");
    }
    let (a, b) = bytes.split_at(8);
    (u64::from_le_bytes(a.try_into().unwrap()), u64::from_le_bytes(b.try_into().unwrap()))
}

/// The 16 bytes of an id, with the version (4) and variant bits of RFC 9562.
fn shape(prefix: u64, counter: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&prefix.to_be_bytes());
    b[8..].copy_from_slice(&counter.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

#[pg_schema]
mod vitally {
    use pgrx::prelude::*;

    /// A new messageId for a queued change (see the module's note). Internal: only the
    /// queue calls it.
    #[pg_extern(volatile, parallel_unsafe)]
    fn new_message_id() -> pgrx::Uuid {
        super::next()
    }
}
