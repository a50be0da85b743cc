//! What an operator watches: `vitally.worker_pid()`, `vitally.worker_status()` (the view `vitally.metrics` is in
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

    /// `running`, `starting`, or why no worker delivers this database's records (with
    /// what to do about it): the library is not preloaded, `vitally.database` names
    /// another database, or `max_worker_processes` is used up.
    #[pg_extern(volatile)]
    fn worker_status() -> String {
        crate::doorbell::status()
    }
}
