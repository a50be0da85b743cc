//! What an operator watches: `vitally.worker_pid()` (the view `vitally.metrics` is in
//! finalize.sql and uses it).

use pgrx::prelude::*;

#[pg_schema]
mod vitally {
    use pgrx::prelude::*;

    /// The delivery worker's process id, or NULL when it is not running (or the library
    /// is not preloaded, so there is none).
    #[pg_extern(volatile)]
    fn worker_pid() -> Option<i32> {
        crate::doorbell::running_pid()
    }
}
