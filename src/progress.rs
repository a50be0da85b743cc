//! Progress of a long `vitally.sync()`: a NOTICE after each phase once the call has run
//! for more than a second, so that a user in psql sees it is alive. Quick calls (most)
//! say nothing; `client_min_messages = warning` silences it.

use pgrx::prelude::*;
use std::time::{Duration, Instant};

const QUIET_FOR: Duration = Duration::from_secs(1);

pub struct Progress {
    sync: String,
    start: Instant,
    last: Instant,
}

impl Progress {
    pub fn new(sync: &str) -> Progress {
        let now = Instant::now();
        Progress { sync: sync.to_string(), start: now, last: now }
    }

    /// Whether a phase ending now would be told (what it says may cost a query).
    pub fn speaks(&self) -> bool {
        self.start.elapsed() >= QUIET_FOR
    }

    /// A phase ended: `what` says what it did.
    pub fn phase(&mut self, what: impl FnOnce() -> String) {
        let now = Instant::now();
        if now - self.start >= QUIET_FOR {
            notice!("vitally.sync('{}'): {} in {:.1} s", self.sync, what(), (now - self.last).as_secs_f64());
        }
        self.last = now;
    }
}
