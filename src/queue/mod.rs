//! The record queue: the only code that reads or writes `vitally.record` and
//! `vitally.sync_run`, and the only code that writes `vitally.delivery_state` (what was
//! delivered, which planning reads to find what changed).
//!
//! A record's life:
//!
//! ```text
//!  planning ──Staged──▶ enqueue ──▶ invalid (final)
//!                          │
//!                          ▼           claim           record_outcomes
//!                       pending ──────────────▶ sent ───────────────▶ delivered | skipped | failed
//!                        ▲  │ a newer change:     │ (in the worker's    │
//!                        │  └ same row, version+1 │  memory only; a     │
//!                        │                        │  crash: still       │
//!                        │                        ▼  pending)           │
//!                        │                      pending (retry later)   │
//!                        └──────────── requeue_failed ◀─────────────────┘ (failed only)
//! ```
//!
//! A run (`vitally.sync_run`) is started before planning, counts what its records
//! became and how many are still pending (every transition keeps `records_pending`), and
//! is finished once that count is 0. `prune` removes what
//! retention no longer keeps; `forget_syncs` everything of dropped syncs.
//!
//! Every function takes the SPI client of a transaction its caller opened (a SQL
//! function's, or the worker's), and runs as whoever the caller is: the extension's
//! owner or the worker. Nothing here runs a user's SQL.

mod claim;
mod enqueue;
pub mod kept;
mod outcomes;
mod prune;
mod runs;
pub mod statements;

pub use claim::{claim, next_due, Cursors, JobKey, JobSizes, Sent};
pub use enqueue::{enqueue, forget_delivered, forget_syncs, preview, requeue_failed, Staged};
pub use outcomes::{record_outcomes, JobResult};
pub use prune::prune;
pub use runs::{finish_if_done, recount_pending, run_status, start_run, RunError};
