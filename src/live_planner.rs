//! Live planning: what watches marked (`watching.rs`) is planned seconds after commit,
//! in a background session connected as the syncs' owner, never in the superuser
//! delivery worker.
//!
//! The delivery worker of a database looks for marks when a commit rings it (and every
//! second), and starts one planner per owner with marks, unless one runs. The planner
//! connects as that role, so the sync's query runs with that role's rights exactly as
//! in `vitally.sync()` called by it, and our statements switch to the extension's owner
//! as they do there. Once a sync's oldest mark is `vitally.live_delay` old (a burst of
//! changes to one row becomes one record), the planner takes every mark of the sync and
//! plans those keys in one transaction with one run: the marks are deleted in the
//! transaction that queues their records, so a crash loses none. A plan that fails
//! keeps its marks, says why in `vitally.watches`, and is tried again 30 s later. The
//! planner stops after a few idle seconds.

use crate::elevation::as_extension_owner;
use crate::errors::{Result, Row};
use crate::planning::Pass;
use crate::progress::Progress;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{PgMemoryContexts, PgTryBuilder};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// How long a planner with nothing to plan waits for more before it stops.
const IDLE_FOR: Duration = Duration::from_secs(5);
/// How often a planner looks for marks with nothing else to wake it.
const TICK: Duration = Duration::from_millis(100);
/// How often the delivery worker looks for marks no commit rang about.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long after a failed live plan the sync's marks are tried again.
const RETRY_AFTER_SECONDS: i32 = 30;

/// The delivery worker's side: which owners have a planner running.
#[derive(Default)]
pub struct Planners {
    running: HashMap<pg_sys::Oid, DynamicBackgroundWorker>,
    last_look: Option<Instant>,
    warned: std::collections::HashSet<pg_sys::Oid>,
}

impl Planners {
    /// Starts a planner for each owner with marks to plan that has none running. Called
    /// by the delivery worker outside any transaction; `rang`: a commit rang it.
    pub fn tick(&mut self, db: pg_sys::Oid, rang: bool) {
        self.running.retain(|_, handle| matches!(handle.pid(), Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted)));
        if !rang && self.last_look.is_some_and(|t| t.elapsed() < LOOK_EVERY) {
            return;
        }
        self.last_look = Some(Instant::now());
        let owners = BackgroundWorker::transaction(|| {
            Spi::connect(|client| -> Result<Vec<(pg_sys::Oid, bool)>> {
                let mut found = Vec::new();
                for row in client.select(
                    "SELECT s.owner::pg_catalog.oid AS owner, r.rolcanlogin AS login
                       FROM vitally.sync s JOIN pg_catalog.pg_roles r ON r.oid = s.owner
                      WHERE s.enabled AND EXISTS (SELECT FROM vitally.change c WHERE c.sync_id = s.id)
                      GROUP BY 1, 2",
                    None,
                    &[],
                )? {
                    found.push((row.required("owner")?, row.required("login")?));
                }
                Ok(found)
            })
        });
        let owners = match owners {
            Ok(o) => o,
            Err(e) => {
                warning!("vitally_sync worker: could not look for live changes: {e}");
                return;
            }
        };
        for (owner, login) in owners {
            if self.running.contains_key(&owner) {
                continue;
            }
            if !login {
                // vitally.watch() refuses such an owner; it lost LOGIN since.
                if self.warned.insert(owner) {
                    warning!(
                        "vitally_sync worker: the owner (oid {}) of watched syncs cannot log in: their changes wait for vitally.sync()",
                        owner.to_u32()
                    );
                }
                continue;
            }
            self.warned.remove(&owner);
            if let Some(handle) = start(db, owner) {
                self.running.insert(owner, handle);
            }
        }
    }
}

fn start(db: pg_sys::Oid, owner: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    let arg = pg_sys::Datum::from(((db.to_u32() as u64) << 32) | owner.to_u32() as u64);
    let builder = BackgroundWorkerBuilder::new("vitally_sync live planner")
        .set_type("vitally_sync live planner")
        .set_library("vitally_sync")
        .set_function("vitally_sync_live_planner_main")
        .enable_spi_access()
        .enable_shmem_access(None)
        .set_restart_time(None)
        .set_argument(Some(arg))
        .set_notify_pid(unsafe { pg_sys::MyProcPid });
    // The handle outlives every transaction.
    let started = unsafe { PgMemoryContexts::TopMemoryContext.switch_to(|_| builder.load_dynamic()) };
    if started.is_err() {
        warning!("vitally_sync worker: no background worker slot is free for a live planner; changes wait (raise max_worker_processes)");
    }
    started.ok()
}

/// A sync with marks, as the planner sees it.
struct Due {
    id: i64,
    name: String,
    /// Planned now (its oldest mark is old enough), or in this many milliseconds.
    wait_ms: i64,
}

fn due_syncs(me: pg_sys::Oid, delay_ms: i32) -> Vec<Due> {
    BackgroundWorker::transaction(|| {
        as_extension_owner(|| {
            Spi::connect(|client| {
                let mut found = Vec::new();
                for row in client.select(
                    "SELECT s.id, s.name,
                            GREATEST(0, pg_catalog.ceil(EXTRACT(epoch FROM pg_catalog.min(c.changed_at) - pg_catalog.clock_timestamp()) * 1000 + $2))::int8 AS wait_ms
                       FROM vitally.sync s JOIN vitally.change c ON c.sync_id = s.id
                      WHERE s.owner = $1::pg_catalog.oid::pg_catalog.regrole AND s.enabled
                        AND NOT EXISTS (SELECT FROM vitally.watch w WHERE w.sync_id = s.id
                                          AND w.failed_at > pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => $3))
                      GROUP BY s.id, s.name",
                    None,
                    &[me.into(), delay_ms.into(), RETRY_AFTER_SECONDS.into()],
                )? {
                    found.push(Due { id: row.required("id")?, name: row.required("name")?, wait_ms: row.required("wait_ms")? });
                }
                Ok(found)
            })
        })
        .unwrap_or_else(|e| {
            warning!("vitally_sync live planner: could not read the marks: {e}");
            Vec::new()
        })
    })
}

/// Plans the marks of one sync in one transaction: the marks taken, their keys planned
/// as `vitally.sync()` plans them, queued, committed together.
fn plan_sync(me: pg_sys::Oid, due: &Due) -> Result<()> {
    let sync = as_extension_owner(|| Spi::connect(|client| crate::catalog::owned_sync(client, &due.name, me, true)))?;
    if sync.id != due.id || !sync.enabled {
        return Ok(());
    }
    let (keys, every, latest): (Vec<String>, bool, Option<pgrx::datum::TimestampWithTimeZone>) = as_extension_owner(|| {
        Spi::connect_mut(|client| {
            let row = client
                .update(
                    "WITH taken AS (DELETE FROM vitally.change WHERE sync_id = $1 RETURNING sync_key, changed_at)
                     SELECT pg_catalog.array_agg(DISTINCT sync_key) FILTER (WHERE sync_key IS NOT NULL) AS keys,
                            pg_catalog.bool_or(sync_key IS NULL) AS every, pg_catalog.max(changed_at) AS latest FROM taken",
                    None,
                    &[sync.id.into()],
                )?
                .first();
            Ok((row.optional("keys")?.unwrap_or_default(), row.optional("every")?.unwrap_or(false), row.optional("latest")?))
        })
    })?;
    if every {
        crate::planning::run(&sync, Pass::Run { full_resync: false }, true, &mut Progress::new(&sync.name))?;
    } else if !keys.is_empty() {
        crate::planning::run(&sync, Pass::Keys(&keys), true, &mut Progress::new(&sync.name))?;
    }
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            client.update(
                "UPDATE vitally.watch SET last_change_at = GREATEST(last_change_at, $2), last_error = NULL, failed_at = NULL WHERE sync_id = $1",
                None,
                &[sync.id.into(), latest.into()],
            )?;
            Ok(())
        })
    })
}

fn record_failure(sync_id: i64, message: &str) {
    BackgroundWorker::transaction(|| {
        let _ = as_extension_owner(|| {
            Spi::connect_mut(|client| {
                client.update(
                    "UPDATE vitally.watch SET last_error = $2, failed_at = pg_catalog.clock_timestamp() WHERE sync_id = $1",
                    None,
                    &[sync_id.into(), message.into()],
                )?;
                Ok(())
            })
        });
    });
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn vitally_sync_live_planner_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let v = arg.value() as u64;
    let (db, me) = (pg_sys::Oid::from((v >> 32) as u32), pg_sys::Oid::from((v & 0xffff_ffff) as u32));
    // As the owner: what runs here has that role's rights, no more.
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), Some(me));
    let mut idle_since = Instant::now();
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if unsafe { pg_sys::ShutdownRequestPending != 0 } {
            break;
        }
        let delay = crate::guc::LIVE_DELAY_MS.get().max(0);
        let due = due_syncs(me, delay);
        if due.is_empty() {
            if idle_since.elapsed() >= IDLE_FOR {
                break;
            }
        } else {
            idle_since = Instant::now();
        }
        let mut next = TICK;
        for d in &due {
            if d.wait_ms > 0 {
                next = next.min(Duration::from_millis(d.wait_ms as u64));
                continue;
            }
            let failed = PgTryBuilder::new(AssertUnwindSafe(|| {
                BackgroundWorker::transaction(|| {
                    // An error value aborts the transaction too: the marks stay.
                    if let Err(e) = plan_sync(me, d) {
                        pgrx::pg_sys::panic::ErrorReport::from(e).report(PgLogLevel::ERROR);
                    }
                });
                None
            }))
            .catch_others(|e| {
                unsafe { pg_sys::AbortCurrentTransaction() };
                Some(crate::errors::caught(&e).message().to_string())
            })
            .execute();
            if let Some(message) = failed {
                warning!("vitally_sync live planner: sync \"{}\": {message}; its changes are tried again in {RETRY_AFTER_SECONDS} s", d.name);
                record_failure(d.id, &message);
            }
            unsafe { pg_sys::pgstat_report_stat(false) };
        }
        if !BackgroundWorker::wait_latch(Some(next.max(Duration::from_millis(5)))) {
            break;
        }
    }
    unsafe { pg_sys::pgstat_report_stat(true) };
    unsafe { pg_sys::proc_exit(0) };
}
