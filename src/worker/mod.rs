//! The background worker: registered at server start, connected to `vitally.database`,
//! it delivers queued records.
//!
//! The main thread alone touches Postgres (claims, outcomes, settings, signals); HTTP
//! runs as tokio tasks on a current-thread runtime that advances only while the main
//! thread waits in `block_on`. Each destination API has at most one job in flight, so a
//! slow or failing destination never holds up another. No transaction is open while a
//! request is: records are claimed with a lease in one short transaction, and their
//! outcomes recorded in another.

mod queue;
mod retention;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic, PgTryBuilder};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vitally_client::delivery::deliver;
use vitally_client::{ClientConfig, RetryPolicy, VitallyClient};

/// How long the postmaster waits before starting the worker again after it exits.
const RESTART_AFTER: Duration = Duration::from_secs(2);
/// How often the worker wakes with nothing to do, to notice the extension appear.
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// The longest the worker sleeps while records wait for a retry: the fallback timer.
const MAX_SLEEP: Duration = Duration::from_secs(2);
/// How often the worker looks for finished jobs and new work while jobs are in flight.
const BUSY_TICK: Duration = Duration::from_millis(20);
/// Jobs in flight per destination API: a second one is claimed and ready while the
/// first is sent, so database work and HTTP overlap.
const JOBS_PER_API: usize = 2;
/// How often the worker looks for records and runs past their retention when idle.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// ... and while jobs are in flight: HTTP does not advance while a prune runs.
const PRUNE_EVERY_BUSY: Duration = Duration::from_secs(600);
/// How long in-flight jobs may finish after SIGTERM before their records are released.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The worker's pid in shared memory, so that a committing backend can wake it.
static WORKER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"vitally_sync_worker_pid") };

/// Set in the postmaster when the library is preloaded; every backend inherits it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Called from `_PG_init` while preloading: shared memory and the worker.
pub fn register() {
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(WORKER_PID);
    BackgroundWorkerBuilder::new("vitally_sync worker")
        .set_type("vitally_sync worker")
        .set_library("vitally_sync")
        .set_function("vitally_sync_worker_main")
        .enable_spi_access()
        .enable_shmem_access(None)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

/// Wakes the worker (sets its latch) if it runs; safe from any backend.
pub fn wake() {
    if !PRELOADED.load(Ordering::Relaxed) {
        return;
    }
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

/// The settings the worker works with, read on start and on SIGHUP.
#[derive(Clone)]
pub struct Settings {
    pub client: ClientConfig,
    pub retry: RetryPolicy,
    pub retention_minutes: i32,
}

impl Settings {
    fn read() -> Settings {
        use crate::guc::*;
        Settings {
            client: ClientConfig {
                request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS.get().max(1) as u64),
                max_concurrency: MAX_CONCURRENCY.get().max(1) as usize,
                rest_requests_per_minute: REST_REQUESTS_PER_MINUTE.get().max(1) as u32,
                batch_size: BATCH_SIZE.get().clamp(1, 100) as usize,
            },
            retry: RetryPolicy {
                max_attempts: MAX_ATTEMPTS.get().max(1) as u32,
                min_delay: Duration::from_millis(RETRY_MIN_DELAY_MS.get().max(1) as u64),
                max_delay: Duration::from_millis(RETRY_MAX_DELAY_MS.get().max(RETRY_MIN_DELAY_MS.get()).max(1) as u64),
            },
            retention_minutes: RECORD_RETENTION_MIN.get().max(1),
        }
    }

    /// Records claimed for one job: enough for every slot to send a few requests, or
    /// about ten seconds of REST calls at the configured pace.
    fn job_size(&self, rest: bool) -> i64 {
        if rest {
            (self.client.rest_requests_per_minute as i64 / 6).max(10)
        } else {
            (self.client.batch_size * self.client.max_concurrency * 8) as i64
        }
    }
}

/// Whether the postmaster still runs (a zero-timeout wait that does not touch the latch).
fn postmaster_alive() -> bool {
    let events =
        unsafe { pg_sys::WaitLatch(pg_sys::MyLatch, (pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32, 0, pg_sys::PG_WAIT_EXTENSION) };
    events & pg_sys::WL_POSTMASTER_DEATH as i32 == 0
}

fn shutdown_requested() -> bool {
    unsafe { pg_sys::ShutdownRequestPending != 0 }
}

#[derive(PartialEq)]
enum Round {
    Go,
    Stop,
}

/// What the worker keeps between rounds.
struct Worker {
    database: String,
    settings: Settings,
    client: Arc<VitallyClient>,
    runtime: tokio::runtime::Runtime,
    done_tx: tokio::sync::mpsc::UnboundedSender<queue::Finished>,
    done_rx: tokio::sync::mpsc::UnboundedReceiver<queue::Finished>,
    in_flight: HashMap<u64, (queue::JobKey, Vec<queue::Claimed>)>,
    next_job: u64,
    finished: Vec<queue::Finished>,
    /// Whether the extension is installed, as last seen (None: not looked yet).
    installed: Option<bool>,
    next_prune: Instant,
    last_prune: Instant,
}

impl Worker {
    /// One round: record finished jobs, prune, claim and start new jobs, then wait a little.
    fn round(&mut self) -> Round {
        let now_installed = queue::extension_installed();
        if self.installed != Some(now_installed) {
            log!("vitally_sync worker: extension {} in database \"{}\"", if now_installed { "found" } else { "not installed" }, self.database);
            self.installed = Some(now_installed);
            // Jobs of a dropped extension have nowhere to record their outcomes.
            self.in_flight.clear();
            self.finished.clear();
            if now_installed {
                // Only this worker claims records: a lease still held is one a crash left.
                queue::release_all_leases();
            }
        }
        if !now_installed {
            return if BackgroundWorker::wait_latch(Some(IDLE_WAKE)) { Round::Go } else { Round::Stop };
        }

        while let Ok(f) = self.done_rx.try_recv() {
            self.finished.push(f);
        }
        // A job of before a drop of the extension is no longer in flight: forgotten.
        self.finished.retain(|f| self.in_flight.contains_key(&f.job));
        if !self.finished.is_empty() {
            for f in &self.finished {
                self.in_flight.remove(&f.job);
            }
            queue::record_outcomes(std::mem::take(&mut self.finished), &self.settings.retry);
        }

        let prune_at = if self.in_flight.is_empty() { self.next_prune } else { self.next_prune.max(self.last_prune + PRUNE_EVERY_BUSY) };
        if Instant::now() >= prune_at {
            // Something went: there may be more, so another batch on the next round.
            let removed = retention::prune(self.settings.retention_minutes);
            self.last_prune = Instant::now();
            self.next_prune = self.last_prune + if removed > 0 { Duration::ZERO } else { PRUNE_EVERY };
        }

        let mut per_key: HashMap<&queue::JobKey, usize> = HashMap::new();
        for (key, _) in self.in_flight.values() {
            *per_key.entry(key).or_default() += 1;
        }
        let busy: Vec<queue::JobKey> = per_key.into_iter().filter(|(_, n)| *n >= JOBS_PER_API).map(|(k, _)| k.clone()).collect();
        for job in queue::claim(&busy, &self.settings) {
            self.next_job += 1;
            let id = self.next_job;
            self.in_flight.insert(id, (job.key.clone(), job.records.clone()));
            let (client, tx, destination_id) = (self.client.clone(), self.done_tx.clone(), job.key.destination_id);
            self.runtime.spawn(async move {
                let outcomes = match &job.endpoint {
                    Ok(endpoint) => deliver(&client, endpoint, job.records.iter().map(|c| c.record.clone()).collect()).await,
                    Err(reason) => job.records.iter().map(|c| (c.record.id, reason.clone())).collect(),
                };
                let _ = tx.send(queue::Finished { job: id, destination_id, records: job.records, outcomes });
            });
        }

        if self.in_flight.is_empty() {
            let until_prune = self.next_prune.saturating_duration_since(Instant::now());
            let sleep = queue::next_due().unwrap_or(MAX_SLEEP).min(until_prune).clamp(Duration::from_millis(5), MAX_SLEEP);
            if !BackgroundWorker::wait_latch(Some(sleep)) {
                return Round::Stop;
            }
        } else {
            // HTTP advances only in here.
            let rx = &mut self.done_rx;
            if let Some(f) = self.runtime.block_on(async { tokio::time::timeout(BUSY_TICK, rx.recv()).await.ok().flatten() }) {
                self.finished.push(f);
            }
            unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        }
        Round::Go
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn vitally_sync_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = crate::guc::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    WORKER_PID.get().store(unsafe { pg_sys::MyProcPid }, Ordering::Relaxed);
    queue::pin_search_path();
    log!("vitally_sync worker started for database \"{database}\"");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let settings = Settings::read();
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<queue::Finished>();
    let mut w = Worker {
        database,
        client: Arc::new(VitallyClient::new(settings.client.clone())),
        settings,
        runtime,
        done_tx,
        done_rx,
        in_flight: HashMap::new(),
        next_job: 0,
        finished: Vec::new(),
        installed: None,
        next_prune: Instant::now(),
        last_prune: Instant::now(),
    };

    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            w.settings = Settings::read();
            w.client = Arc::new(VitallyClient::new(w.settings.client.clone()));
            log!("vitally_sync worker: settings reloaded (batch_size {})", w.settings.client.batch_size);
        }
        if shutdown_requested() {
            break;
        }
        if !postmaster_alive() {
            // The postmaster is gone (killed): leave at once; leases are released on restart.
            unsafe { pg_sys::proc_exit(1) };
        }
        // An error ends the worker (it is started again, and releases its leases then),
        // unless it came from the extension being dropped under it: then it waits for
        // the extension as it does at start.
        let round = PgTryBuilder::new(AssertUnwindSafe(|| w.round()))
            .catch_others(|e| {
                unsafe { pg_sys::AbortCurrentTransaction() };
                if queue::extension_installed() {
                    e.rethrow()
                }
                Round::Go
            })
            .execute();
        if round == Round::Stop {
            break;
        }
    }
    let Worker { runtime, mut done_rx, mut in_flight, mut finished, settings, .. } = w;

    // A clean stop: let jobs in flight finish briefly, record what they got, and put
    // back what they did not, so nothing is lost (or sent twice needlessly).
    if !in_flight.is_empty() {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !in_flight.is_empty() {
            match runtime.block_on(async { tokio::time::timeout_at(deadline, done_rx.recv()).await }) {
                Ok(Some(f)) => {
                    in_flight.remove(&f.job);
                    finished.push(f);
                }
                _ => break,
            }
        }
        queue::record_outcomes(std::mem::take(&mut finished), &settings.retry);
        let unfinished: Vec<i64> = in_flight.values().flat_map(|(_, records)| records.iter().map(|c| c.record.id)).collect();
        queue::release(&unfinished);
    }
    WORKER_PID.get().store(0, Ordering::Relaxed);
    log!("vitally_sync worker stopped");
    // Exit code 1 asks the postmaster to start the worker again (after RESTART_AFTER)
    // when only this process was told to stop (pg_terminate_backend); at server
    // shutdown nothing is restarted.
    unsafe { pg_sys::proc_exit(1) };
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
    let here = crate::elevation::with_pinned(|| Spi::get_one::<String>("SELECT pg_catalog.current_database()::pg_catalog.text"))
        .ok()
        .flatten()
        .unwrap_or_default();
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
