//! A delivery worker: started by the launcher for one database, it delivers the records
//! queued there, and stops when the extension is dropped.
//!
//! The main thread alone touches Postgres (claims, outcomes, settings, signals); HTTP
//! runs as tokio tasks on one thread of its own, which never touches Postgres and takes
//! no signals, so requests go on while the main thread records and claims. Each
//! destination API has at most two jobs in flight, so a
//! slow or failing destination never holds up another. No transaction is open while a
//! request is: records are claimed in one short transaction (nothing written: the
//! worker keeps what it has in flight in memory), and their outcomes recorded in another.

mod settings;

use crate::errors::{Result, Row};
use crate::queue::{Cursors, JobKey, JobResult, Sent};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys::panic::{ErrorReport, ErrorReportable};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{PgSqlErrorCode, PgTryBuilder};
use settings::Settings;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vitally_client::delivery::deliver;
use vitally_client::{Endpoint, Outcome, VitallyClient};

/// How often the worker looks for `ALTER EXTENSION ... UPDATE` while it waits for one.
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// The longest the worker sleeps while records wait for a retry: the fallback timer.
const MAX_SLEEP: Duration = Duration::from_secs(2);
/// How often the worker looks for finished jobs and new work while jobs are in flight.
const BUSY_TICK: Duration = Duration::from_millis(20);
/// Jobs in flight per destination API: a second one is claimed and waits for request
/// slots while the first is sent, so the slots stay busy while the main thread records
/// the first one's outcomes and claims a third.
const JOBS_PER_API: usize = 2;
/// How often the worker looks for records and runs past their retention when idle.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// ... and while jobs are in flight: a prune holds up recording and claiming.
const PRUNE_EVERY_BUSY: Duration = Duration::from_secs(600);
/// The least sleep when records are due but the claims found none (they start over).
const NOTHING_CLAIMED_PAUSE: Duration = Duration::from_millis(50);
/// How often claims start over from the beginning of each sync's queue, whatever else.
const CURSOR_RESET: Duration = Duration::from_secs(30);
/// The most often the kept plans are forgotten on rings of the doorbell (kept.rs).
const FORGET_PLANS_AT_MOST: Duration = Duration::from_secs(1);
/// How often the worker claims while jobs are in flight and none finished.
const CLAIM_ANYWAY: Duration = Duration::from_secs(1);
/// How long in-flight jobs may finish after SIGTERM (what they do not finish stays pending).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Runs `f` in a transaction of its own. An error ends the worker: it is started
/// again, and claims what it had in flight again.
fn in_transaction<R>(f: impl FnOnce(&mut SpiClient<'_>) -> Result<R>) -> R {
    let result =
        BackgroundWorker::transaction(AssertUnwindSafe(|| Spi::connect_mut(|client| f(client)).map_err(ErrorReport::from).unwrap_or_report()));
    report_stats(false);
    result
}

/// How many times a transaction that lost a deadlock is tried again.
const DEADLOCK_RETRIES: u32 = 5;

/// As `in_transaction`, for the transactions that write (outcomes, prunes): one that
/// deadlocks with a user's (a `sync()` taking over records whose outcomes are being
/// recorded locks the same rows in another order) is tried again. The worker looks for
/// deadlocks sooner than any session (`deadlock_timeout` is 100 ms here), so it is the
/// one that gives way, never the user's statement.
fn in_transaction_retrying<R>(mut f: impl FnMut(&mut SpiClient<'_>) -> Result<R>) -> R {
    for attempt in 1.. {
        let done = PgTryBuilder::new(AssertUnwindSafe(|| Some(in_transaction(&mut f))))
            .catch_when(PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED, |e| {
                if attempt > DEADLOCK_RETRIES {
                    e.rethrow()
                }
                unsafe { pg_sys::AbortCurrentTransaction() };
                None
            })
            .execute();
        if let Some(r) = done {
            return r;
        }
        log!("vitally_sync worker: gave way in a deadlock with another session; trying again ({attempt})");
    }
    unreachable!("the loop returns or rethrows")
}

/// Sends this process's table statistics to the shared ones, as a backend does when it
/// goes idle: a background worker never passes through that loop, and without this
/// autovacuum never saw the queue's churn (n_tup_upd stayed 0 after 320,000 outcomes).
/// Unforced, Postgres does it at most once a second.
fn report_stats(force: bool) {
    unsafe { pg_sys::pgstat_report_stat(force) };
}

/// The worker runs as a superuser: it resolves names in pg_catalog only (multi-array
/// `unnest` cannot be schema-qualified); and it looks for deadlocks before any user's
/// session does (default 1 s), so that it is the one to give way.
fn pin_search_path() {
    in_transaction(|client| {
        client.update("SET search_path TO pg_catalog, pg_temp", None, &[])?;
        Ok(client.update("SET deadlock_timeout = '100ms'", None, &[]).map(|_| ())?)
    })
}

/// The extension in the worker's database, as the worker sees it.
#[derive(Clone, PartialEq, Debug)]
enum Extension {
    Absent,
    /// Installed at another version than this library's: its tables may not be what the
    /// queue's statements expect, so nothing is done until `ALTER EXTENSION ... UPDATE`.
    OtherVersion(String),
    /// Installed at this library's version; its oid tells a re-created one apart.
    Ours(pg_sys::Oid),
}

fn extension() -> Extension {
    in_transaction(|client| {
        let row = client.select("SELECT oid, extversion FROM pg_catalog.pg_extension WHERE extname = 'vitally_sync'", Some(1), &[])?.first();
        if row.is_empty() {
            return Ok(Extension::Absent);
        }
        let version: String = row.required("extversion")?;
        Ok(if version == env!("CARGO_PKG_VERSION") { Extension::Ours(row.required("oid")?) } else { Extension::OtherVersion(version) })
    })
}

/// Whether the extension is still the one with oid `oid` (within a transaction; no SQL).
fn still(oid: pg_sys::Oid) -> bool {
    unsafe { pg_sys::get_extension_oid(c"vitally_sync".as_ptr(), true) == oid }
}

/// Where a job's records go, or the failure every one of them gets (its key is gone, or
/// its URL's host is no longer allowed).
fn endpoint(client: &SpiClient<'_>, key: &JobKey) -> Result<std::result::Result<Endpoint, Outcome>> {
    let Some(found) = crate::catalog::endpoints(client, key.destination_id)? else {
        return Ok(Err(Outcome::Rejected { status: 0, error: "the destination was dropped".into() }));
    };
    let name = &found.name;
    let missing = |which: &str, arg: &str| {
        Outcome::Rejected {
        status: 0,
        error: format!("destination \"{name}\" has no {which} key: set it with vitally.alter_destination('{name}', {arg} => '...') and call vitally.retry_failed()"),
    }
    };
    let blocked = |error: String| Outcome::Rejected { status: 0, error };
    let (found, which, arg) =
        if key.rest { (found.rest, "REST API", "rest_api_key") } else { (found.analytics, "Analytics API", "analytics_api_key") };
    Ok(match found {
        None => Err(missing(which, arg)),
        Some(e) => e.map_err(blocked),
    })
}

/// A job that came back, with the worker's number for it.
struct Finished {
    job: u64,
    result: JobResult,
}

/// Signals are Postgres's, and handled on the main thread only: blocks all but those a
/// fault raises on the thread itself (so that a crash still reports as one). Returns the
/// mask as it was.
fn block_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for fault in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGABRT] {
            libc::sigdelset(&mut set, fault);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

fn restore_signals(old: &libc::sigset_t) {
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
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
    slot: &'static crate::roster::Slot,
    settings: Settings,
    client: Arc<VitallyClient>,
    runtime: tokio::runtime::Runtime,
    done_tx: tokio::sync::mpsc::UnboundedSender<Finished>,
    done_rx: tokio::sync::mpsc::UnboundedReceiver<Finished>,
    /// Jobs sent and not yet recorded, by the worker's number for them.
    in_flight: HashMap<u64, (JobKey, Vec<i64>)>,
    next_job: u64,
    finished: Vec<Finished>,
    /// The extension as last seen (None: not looked yet).
    installed: Option<Extension>,
    next_prune: Instant,
    last_prune: Instant,
    /// Where each sync's claims resume, and when they last started over.
    cursors: Cursors,
    cursors_reset: Instant,
    /// When the kept plans were last forgotten.
    plans_forgotten: Instant,
    /// The doorbell's count as last seen, when records were last claimed, and whether
    /// that claim found any.
    rings: u64,
    /// The slot's live rings last seen (commits that marked watched changes).
    live_rings: u64,
    last_claim: Instant,
    claimed_some: bool,
    /// The live planners this worker started, one per owner of watched syncs with changes.
    planners: crate::live_planner::Planners,
}

impl Worker {
    /// One round: record finished jobs, prune, claim and start new jobs, then wait a little.
    fn round(&mut self) -> Round {
        let now = extension();
        if now == Extension::Absent {
            // The slot goes back to the launcher, which looks again at CREATE EXTENSION.
            if self.installed.is_some() {
                log!("vitally_sync worker: extension dropped in database \"{}\": the worker stops", self.database);
            }
            self.slot.set_state(crate::roster::State::Absent);
            return Round::Stop;
        }
        if self.installed.as_ref() != Some(&now) {
            let waiting = matches!(now, Extension::OtherVersion(_));
            self.slot.set_state(if waiting { crate::roster::State::WaitingForUpdate } else { crate::roster::State::Serving });
            match &now {
                Extension::Ours(_) => log!("vitally_sync worker: extension found in database \"{}\"", self.database),
                Extension::Absent => unreachable!("handled above"),
                Extension::OtherVersion(v) => log!(
                    "vitally_sync worker: extension vitally_sync {v} in database \"{}\", library {}: waiting for ALTER EXTENSION vitally_sync UPDATE",
                    self.database,
                    env!("CARGO_PKG_VERSION")
                ),
            }
            self.installed = Some(now.clone());
            // Jobs of a dropped (or re-created) extension have nowhere to record their outcomes.
            self.in_flight.clear();
            self.finished.clear();
            self.cursors.reset();
            crate::queue::kept::forget();
            if let Extension::Ours(_) = now {
                // Whatever ran on this schema before may not have kept the counts.
                in_transaction(crate::queue::recount_pending);
            }
        }
        let Extension::Ours(oid) = now else {
            return if BackgroundWorker::wait_latch(Some(IDLE_WAKE)) { Round::Go } else { Round::Stop };
        };

        while let Ok(f) = self.done_rx.try_recv() {
            self.finished.push(f);
        }
        // A job of before a drop of the extension is no longer in flight: forgotten.
        self.finished.retain(|f| self.in_flight.contains_key(&f.job));
        let any_finished = !self.finished.is_empty();
        if any_finished {
            for f in &self.finished {
                self.in_flight.remove(&f.job);
            }
            let results: Vec<JobResult> = std::mem::take(&mut self.finished).into_iter().map(|f| f.result).collect();
            // Never into the tables of an extension re-created since the records were claimed.
            let replaced =
                in_transaction_retrying(
                    |client| if still(oid) { crate::queue::record_outcomes(client, &results, &self.settings.retry) } else { Ok(0) },
                );
            if replaced > 0 {
                // Their newer versions may sort before where the claims resume.
                self.cursors.reset();
            }
        }
        // A commit that queued records may have given them an older time than where the
        // claims resume (a long transaction); so may anything, now and then.
        let rings = self.slot.rings();
        let rang = rings != self.rings;
        if rang || self.cursors_reset.elapsed() >= CURSOR_RESET {
            self.rings = rings;
            self.cursors.reset();
            self.cursors_reset = Instant::now();
            // Planned again for the queue as it is now (kept.rs); at most once a second,
            // when commits ring on every round (live syncs).
            if self.plans_forgotten.elapsed() >= FORGET_PLANS_AT_MOST {
                crate::queue::kept::forget();
                self.plans_forgotten = Instant::now();
            }
        }
        let live_rings = self.slot.live_rings();
        let live_rang = live_rings != self.live_rings;
        self.live_rings = live_rings;
        self.planners.tick(unsafe { pg_sys::MyDatabaseId }, live_rang);

        let prune_at = if self.in_flight.is_empty() { self.next_prune } else { self.next_prune.max(self.last_prune + PRUNE_EVERY_BUSY) };
        if Instant::now() >= prune_at {
            // Something went: there may be more, so another batch on the next round.
            let removed = in_transaction_retrying(|client| crate::queue::prune(client, self.settings.retention_minutes));
            self.last_prune = Instant::now();
            self.next_prune = self.last_prune + if removed > 0 { Duration::ZERO } else { PRUNE_EVERY };
        }

        let mut per_key: HashMap<&JobKey, usize> = HashMap::new();
        for (key, _) in self.in_flight.values() {
            *per_key.entry(key).or_default() += 1;
        }
        let busy: Vec<JobKey> = per_key.into_iter().filter(|(_, n)| *n >= JOBS_PER_API).map(|(k, _)| k.clone()).collect();
        // Claims when a slot may have come free or work may have come: not on every tick.
        let claim_now = any_finished || rang || self.claimed_some || self.in_flight.is_empty() || self.last_claim.elapsed() >= CLAIM_ANYWAY;
        let jobs = if claim_now {
            self.last_claim = Instant::now();
            let sizes = self.settings.job_sizes();
            let sent: Vec<i64> = self.in_flight.values().flat_map(|(_, ids)| ids.iter().copied()).collect();
            let cursors = &mut self.cursors;
            in_transaction(|client| {
                if !still(oid) {
                    return Ok(Vec::new());
                }
                let jobs = crate::queue::claim(client, &busy, &sent, cursors, &sizes)?;
                jobs.into_iter().map(|job| Ok((endpoint(client, &job.key)?, job))).collect::<Result<Vec<_>>>()
            })
        } else {
            Vec::new()
        };
        // A claim that found work may find more for a free slot on the next round.
        self.claimed_some = !jobs.is_empty();
        for (endpoint, job) in jobs {
            self.next_job += 1;
            let id = self.next_job;
            self.in_flight.insert(id, (job.key.clone(), job.records.iter().map(|c| c.record.id).collect()));
            let (client, tx, destination_id) = (self.client.clone(), self.done_tx.clone(), job.key.destination_id);
            // The records move into the job, not copied: a job's payloads are its memory.
            let (records, sent): (Vec<_>, Vec<Sent>) = job.records.into_iter().map(|c| (c.record, c.sent)).unzip();
            self.runtime.spawn(async move {
                let outcomes = match endpoint {
                    // In a task of its own: a panic there still brings the job back, its
                    // records to be tried again, instead of keeping them in flight for ever.
                    Ok(endpoint) => match tokio::spawn(async move { deliver(&client, &endpoint, records).await }).await {
                        Ok(outcomes) => outcomes,
                        Err(e) => {
                            let error = format!("vitally_sync worker: the job stopped unexpectedly ({e})");
                            sent.iter().map(|c| (c.id, Outcome::Retry { status: None, error: error.clone() })).collect()
                        }
                    },
                    Err(reason) => sent.iter().map(|c| (c.id, reason.clone())).collect(),
                };
                let _ = tx.send(Finished { job: id, result: JobResult { destination_id, records: sent, outcomes } });
            });
        }

        if self.in_flight.is_empty() {
            let until_prune = self.next_prune.saturating_duration_since(Instant::now());
            let due = in_transaction(|client| crate::queue::next_due(client));
            if due.is_some_and(|d| d.is_zero()) {
                // Something is due and the claims found nothing: it sorts before where they
                // resume (a commit that rang no doorbell, as COMMIT PREPARED): start over.
                self.cursors.reset();
            }
            let sleep = due.unwrap_or(MAX_SLEEP).min(until_prune).clamp(Duration::from_millis(5), MAX_SLEEP);
            let sleep = if due.is_some_and(|d| d.is_zero()) { sleep.max(NOTHING_CLAIMED_PAUSE) } else { sleep };
            // Idle: what the last transactions did shows in pg_stat_user_tables now.
            report_stats(true);
            if !BackgroundWorker::wait_latch(Some(sleep)) {
                return Round::Stop;
            }
        } else {
            // Wait for a job to come back (HTTP goes on on its own thread).
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
pub extern "C-unwind" fn vitally_sync_worker_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let (index, db) = crate::launcher::decode_argument(arg);
    let slot = crate::roster::slot(index);
    // The slot is this worker's before it connects (connecting may wait on a lock of the
    // database): never two workers for one database, which would send records twice.
    if slot.database() != db || !slot.claim_pid(unsafe { pg_sys::MyProcPid }) {
        unsafe { pg_sys::proc_exit(0) };
    }
    unsafe { pg_sys::on_proc_exit(Some(forget_pid), pg_sys::Datum::from(index)) };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    if slot.database() != db || slot.paused() {
        // Given to another database, or a DROP / RENAME of this one began, while connecting.
        unsafe { pg_sys::proc_exit(0) };
    }
    pin_search_path();
    let database = database_name();
    if extension() == Extension::Absent {
        // Looked at by the launcher, and not for us: no log line on every look.
        debug1!("vitally_sync worker: no extension in database \"{database}\"");
        slot.set_state(crate::roster::State::Absent);
        unsafe { pg_sys::proc_exit(0) };
    }
    log!("vitally_sync worker started for database \"{database}\"");

    // HTTP runs on a thread of its own, so requests go on while this thread records
    // outcomes and claims (on one thread the two took turns, and half the time no
    // request was out). That thread never touches Postgres, and takes none of its signals.
    // Threads start with the signals of the thread that makes them blocked, so none is
    // ever taken on theirs; this thread's are restored at once.
    let saved = block_signals();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vitally_sync http")
        .on_thread_start(|| {
            block_signals();
        })
        .enable_all()
        .build()
        .expect("a tokio runtime");
    restore_signals(&saved);
    let settings = Settings::read();
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
    let mut w = Worker {
        database,
        slot,
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
        cursors: Cursors::default(),
        cursors_reset: Instant::now(),
        plans_forgotten: Instant::now(),
        rings: slot.rings(),
        live_rings: slot.live_rings(),
        last_claim: Instant::now(),
        claimed_some: false,
        planners: Default::default(),
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
            // The postmaster is gone (killed): leave at once; what was in flight stays pending.
            unsafe { pg_sys::proc_exit(1) };
        }
        // An error ends the worker (it is started again, and claims its records again),
        // unless it came from the extension being dropped under it: then it waits for
        // the extension as it does at start.
        let round = PgTryBuilder::new(AssertUnwindSafe(|| w.round()))
            .catch_others(|e| {
                unsafe { pg_sys::AbortCurrentTransaction() };
                if extension() != Extension::Absent {
                    e.rethrow()
                }
                Round::Go
            })
            .execute();
        if round == Round::Stop {
            break;
        }
    }
    // The extension whose records are in flight (gone or re-created: nowhere to record them).
    let served = match w.installed {
        Some(Extension::Ours(oid)) => Some(oid),
        _ => None,
    };
    let Worker { database, runtime, mut done_rx, mut in_flight, mut finished, settings, .. } = w;

    // A clean stop: let jobs in flight finish briefly and record what they got, so that
    // little is sent twice; what they did not finish is still pending.
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
        let results: Vec<JobResult> = finished.into_iter().map(|f| f.result).collect();
        in_transaction_retrying(
            |client| {
                if served.is_some_and(still) {
                    crate::queue::record_outcomes(client, &results, &settings.retry)
                } else {
                    Ok(0)
                }
            },
        );
    }
    log!("vitally_sync worker stopped (database \"{database}\")");
    // The launcher starts another unless the extension is gone (or the database).
    unsafe { pg_sys::proc_exit(0) };
}

/// The slot's pid is cleared however the worker exits (an error ends it too).
#[pg_guard]
unsafe extern "C-unwind" fn forget_pid(_code: i32, index: pg_sys::Datum) {
    let slot = crate::roster::slot(index.value());
    if slot.pid() == unsafe { pg_sys::MyProcPid } {
        slot.set_pid(0);
    }
}

/// This worker's database's name, for its log lines.
fn database_name() -> String {
    in_transaction(|_| Ok(crate::doorbell::this_database()))
}
