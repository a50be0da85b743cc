//! The worker's side of the queue: claiming due records with a lease (one short
//! transaction), and recording what became of them (another).

use super::Settings;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use pgrx::JsonB;
use std::collections::BTreeMap;
use std::time::Duration;
use vitally_client::delivery::{Mode, QueuedRecord};
use vitally_client::{Endpoint, Next, ObjectKind, Outcome, RetryPolicy};

/// How long a claim holds records (`lease_until`; a leased record is not due). Only
/// this worker claims, and it releases every lease when it starts, so the lease only
/// has to outlast the longest job.
const LEASE: &str = "10 minutes";

/// One destination API: the unit that has at most one job in flight.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey {
    pub destination_id: i64,
    pub rest: bool,
}

/// A claimed record, with what recording its outcome needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub record: QueuedRecord,
    pub version: i32,
    pub attempts: i32,
    pub hash: Option<i64>,
}

pub struct Job {
    pub key: JobKey,
    /// Where to send, or why nothing can be sent (a key was removed).
    pub endpoint: Result<Endpoint, Outcome>,
    pub records: Vec<Claimed>,
}

pub struct Finished {
    /// The worker's number for the job.
    pub job: u64,
    pub destination_id: i64,
    pub records: Vec<Claimed>,
    pub outcomes: Vec<(i64, Outcome)>,
}

fn internal(e: pgrx::spi::SpiError) -> ! {
    panic!("vitally_sync worker: {e}")
}

/// The worker runs as a superuser: it resolves names in pg_catalog only (multi-array
/// `unnest` cannot be schema-qualified).
pub fn pin_search_path() {
    BackgroundWorker::transaction(|| Spi::run("SET search_path TO pg_catalog, pg_temp").unwrap_or_else(|e| internal(e)));
}

pub fn extension_installed() -> bool {
    BackgroundWorker::transaction(|| {
        Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'vitally_sync')").ok().flatten().unwrap_or(false)
    })
}

/// How the client writes a sync's records, from the planner's one table of pairs;
/// None for a pair that is not valid (never guessed).
fn mode(object: &str, behavior: &str) -> Option<Mode> {
    use vitally_planner::definition::{check_pair, Behavior, Object, Route};
    let route = check_pair(Object::parse(object).ok()?, Behavior::parse(behavior).ok()?).ok()?;
    Some(match route {
        Route::AnalyticsUpsert | Route::AnalyticsAppend => Mode::Analytics,
        Route::RestUpdate => Mode::UpdateOnly,
        Route::RestNps => Mode::NpsResponse,
    })
}

/// Claims due records of every destination API that has no job in flight, one job each.
pub fn claim(busy: &[JobKey], settings: &Settings) -> Vec<Job> {
    BackgroundWorker::transaction(|| {
        Spi::connect_mut(|client| {
            // Syncs with records due, grouped by destination API.
            let mut groups: BTreeMap<JobKey, Vec<(i64, String, String)>> = BTreeMap::new();
            let due = client
                .select(
                    "SELECT s.id, s.destination_id, s.object, s.behavior FROM vitally.sync s
                      WHERE EXISTS (SELECT FROM vitally.record r
                                     WHERE r.sync_id = s.id AND r.status = 'pending' AND r.next_attempt_at <= pg_catalog.now()
                                       AND (r.lease_until IS NULL OR r.lease_until < pg_catalog.now()))",
                    None,
                    &[],
                )
                .unwrap_or_else(|e| internal(e));
            for row in due {
                let sync_id: i64 = row.get(1).ok().flatten().unwrap_or_default();
                let destination_id: i64 = row.get(2).ok().flatten().unwrap_or_default();
                let object: String = row.get(3).ok().flatten().unwrap_or_default();
                let behavior: String = row.get(4).ok().flatten().unwrap_or_default();
                let Some(mode) = mode(&object, &behavior) else { continue };
                let key = JobKey { destination_id, rest: mode != Mode::Analytics };
                if !busy.contains(&key) {
                    groups.entry(key).or_default().push((sync_id, object, behavior));
                }
            }
            let mut jobs = Vec::new();
            for (key, syncs) in groups {
                // Claimed sync by sync, each in the order of its index (sync_id, next_attempt_at),
                // so that a claim reads only the rows it takes, however long the queue.
                let per_sync = (settings.job_size(key.rest) / syncs.len() as i64).max(settings.client.batch_size as i64);
                let mut claimed_rows = Vec::new();
                for (sync_id, _, _) in &syncs {
                    let claimed = client
                        .update(
                            &format!(
                                "WITH due AS (
                                     SELECT r.id FROM vitally.record r
                                      WHERE r.sync_id = $1 AND r.status = 'pending' AND r.next_attempt_at <= pg_catalog.now()
                                        AND (r.lease_until IS NULL OR r.lease_until < pg_catalog.now())
                                      ORDER BY r.next_attempt_at LIMIT $2
                                      FOR UPDATE SKIP LOCKED)
                                 -- Only the lease changes (no indexed column), so the update can stay HOT.
                                 UPDATE vitally.record r SET lease_until = pg_catalog.now() + interval '{LEASE}'
                                   FROM due WHERE r.id = due.id
                                 RETURNING r.id, r.version, r.sync_id, r.sync_key, r.payload, r.payload_hash, r.message_id::text,
                                           r.attempts, pg_catalog.to_char(r.queued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
                            ),
                            None,
                            &[(*sync_id).into(), per_sync.into()],
                        )
                        .unwrap_or_else(|e| internal(e));
                    claimed_rows.extend(claimed.map(|row| claimed_record(&row, &syncs)));
                }
                let records: Vec<Claimed> = claimed_rows.into_iter().flatten().collect();
                if !records.is_empty() {
                    jobs.push(Job { endpoint: endpoint(client, &key), key, records });
                }
            }
            jobs
        })
    })
}

/// A claimed row as the job needs it (None for a sync whose object is unknown).
fn claimed_record(row: &pgrx::spi::SpiHeapTupleData<'_>, syncs: &[(i64, String, String)]) -> Option<Claimed> {
    let sync_id: i64 = row.get(3).ok().flatten().unwrap_or_default();
    let (_, object, behavior) = syncs.iter().find(|s| s.0 == sync_id).cloned().unwrap_or_default();
    let kind = ObjectKind::parse(&object)?;
    let mode = mode(&object, &behavior)?;
    Some(Claimed {
        record: QueuedRecord {
            id: row.get(1).ok().flatten().unwrap_or_default(),
            kind,
            mode,
            sync_key: row.get(4).ok().flatten().unwrap_or_default(),
            payload: row.get::<JsonB>(5).ok().flatten().map(|j| j.0).unwrap_or_default(),
            message_id: row.get(7).ok().flatten().unwrap_or_default(),
            queued_at: row.get(9).ok().flatten().unwrap_or_default(),
        },
        version: row.get(2).ok().flatten().unwrap_or(1),
        hash: row.get(6).ok().flatten(),
        attempts: row.get(8).ok().flatten().unwrap_or(0),
    })
}

/// The endpoint of a destination API, or the failure every record gets when its key is gone.
fn endpoint(client: &pgrx::spi::SpiClient<'_>, key: &JobKey) -> Result<Endpoint, Outcome> {
    let found = crate::catalog::endpoints(client, key.destination_id);
    let name = &found.name;
    let missing = |which: &str, arg: &str| {
        Outcome::Rejected {
        status: 0,
        error: format!("destination \"{name}\" has no {which} key: set it with vitally.alter_destination('{name}', {arg} => '...') and call vitally.retry_failed()"),
    }
    };
    let blocked = |error: String| Outcome::Rejected { status: 0, error };
    if key.rest {
        found.rest.ok_or_else(|| missing("REST API", "rest_api_key"))?.map_err(blocked)
    } else {
        found.analytics.ok_or_else(|| missing("Analytics API", "analytics_api_key"))?.map_err(blocked)
    }
}

fn shorten(text: String) -> String {
    if text.chars().count() > 1000 {
        let mut t: String = text.chars().take(1000).collect();
        t.push('…');
        t
    } else {
        text
    }
}

/// Records the outcomes of finished jobs: each record delivered (and its delivery
/// state advanced, only now), skipped, failed, or back to pending for a retry; the
/// runs' figures; and the runs that are now over.
pub fn record_outcomes(finished: Vec<Finished>, retry: &RetryPolicy) {
    if finished.is_empty() {
        return;
    }
    let (mut ids, mut versions, mut statuses, mut incs, mut delays, mut https, mut errors, mut destinations) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut sent: std::collections::HashMap<i64, (bool, Option<i64>)> = std::collections::HashMap::new();
    for f in &finished {
        let by_id: std::collections::HashMap<i64, &Claimed> = f.records.iter().map(|c| (c.record.id, c)).collect();
        for (id, outcome) in &f.outcomes {
            let Some(claimed) = by_id.get(id) else { continue };
            let next = retry.next(claimed.attempts as u32 + 1, outcome.clone());
            let (status, inc, delay, http, error): (&str, i32, f64, Option<i32>, Option<String>) = match next {
                Next::Delivered => ("delivered", 1, 0.0, Some(200), None),
                Next::Skipped { reason } => ("skipped", 1, 0.0, Some(404), Some(reason)),
                Next::RetryIn { delay, counts, status, error } => ("pending", counts as i32, delay.as_secs_f64(), status.map(i32::from), Some(error)),
                Next::Failed { status, error } => ("failed", 1, 0.0, status.filter(|s| *s > 0).map(i32::from), Some(error)),
            };
            sent.insert(*id, (status == "delivered", claimed.hash));
            ids.push(*id);
            versions.push(claimed.version);
            statuses.push(status.to_string());
            incs.push(inc);
            delays.push(delay);
            https.push(http);
            errors.push(error.map(shorten));
            destinations.push(f.destination_id);
        }
    }
    BackgroundWorker::transaction(|| {
        Spi::connect_mut(|client| {
            let updated = client
                .update(
                    "WITH o AS (
                         SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::float8[], $6::int[], $7::text[], $8::bigint[])
                                AS o(id, version, status, inc, delay, http, error, destination_id)),
                     -- What Vitally answered, per destination and minute (vitally.metrics).
                     stats AS (
                         INSERT INTO vitally.delivery_stats AS t (destination_id, minute, delivered, skipped, failed, retried, rate_limited)
                         SELECT destination_id, pg_catalog.date_trunc('minute', pg_catalog.now()),
                                pg_catalog.count(*) FILTER (WHERE status = 'delivered'),
                                pg_catalog.count(*) FILTER (WHERE status = 'skipped'),
                                pg_catalog.count(*) FILTER (WHERE status = 'failed'),
                                pg_catalog.count(*) FILTER (WHERE status = 'pending' AND inc > 0),
                                pg_catalog.count(*) FILTER (WHERE status = 'pending' AND inc = 0)
                           FROM o GROUP BY destination_id
                         ON CONFLICT (destination_id, minute) DO UPDATE
                            SET delivered = t.delivered + EXCLUDED.delivered, skipped = t.skipped + EXCLUDED.skipped,
                                failed = t.failed + EXCLUDED.failed, retried = t.retried + EXCLUDED.retried,
                                rate_limited = t.rate_limited + EXCLUDED.rate_limited),
                     upd AS (
                         UPDATE vitally.record r
                            SET status = o.status,
                                attempts = r.attempts + o.inc,
                                next_attempt_at = CASE WHEN o.status = 'pending'
                                                       THEN pg_catalog.now() + pg_catalog.make_interval(secs => o.delay)
                                                       ELSE r.next_attempt_at END,
                                lease_until = NULL,
                                http_status = o.http,
                                error = o.error,
                                delivered_at = CASE WHEN o.status = 'delivered' THEN pg_catalog.now() END
                           FROM o
                          WHERE r.id = o.id AND r.version = o.version AND r.status = 'pending'
                         RETURNING r.id, r.sync_id, r.sync_key, r.payload_hash, r.run_id, o.status,
                                   CASE WHEN pg_catalog.jsonb_typeof(r.payload->'accountIds') = 'array' THEN r.payload->'accountIds' END AS account_ids),
                     state AS (
                         INSERT INTO vitally.delivery_state (sync_id, sync_key, payload_hash, account_ids, delivered_at)
                         SELECT sync_id, sync_key, payload_hash, account_ids, pg_catalog.now() FROM upd WHERE status = 'delivered'
                         ON CONFLICT (sync_id, sync_key) DO UPDATE
                            SET payload_hash = EXCLUDED.payload_hash, account_ids = EXCLUDED.account_ids,
                                delivered_at = EXCLUDED.delivered_at),
                     counts AS (
                         UPDATE vitally.sync_run sr
                            SET records_delivered = sr.records_delivered + c.delivered,
                                records_skipped = sr.records_skipped + c.skipped,
                                records_failed = sr.records_failed + c.failed
                           FROM (SELECT run_id,
                                        pg_catalog.count(*) FILTER (WHERE status = 'delivered') AS delivered,
                                        pg_catalog.count(*) FILTER (WHERE status = 'skipped') AS skipped,
                                        pg_catalog.count(*) FILTER (WHERE status = 'failed') AS failed
                                   FROM upd GROUP BY run_id) c
                          WHERE sr.id = c.run_id)
                     SELECT id, run_id FROM upd",
                    None,
                    &[
                        ids.clone().into(),
                        versions.into(),
                        statuses.into(),
                        incs.into(),
                        delays.into(),
                        https.into(),
                        errors.into(),
                        destinations.into(),
                    ],
                )
                .unwrap_or_else(|e| internal(e));
            let mut runs = Vec::new();
            let mut done = std::collections::HashSet::new();
            for row in updated {
                done.insert(row.get::<i64>(1).ok().flatten().unwrap_or_default());
                runs.push(row.get::<i64>(2).ok().flatten().unwrap_or_default());
            }
            // A record replaced by a newer change while it was in flight (or deleted with
            // its sync): the newer copy stays pending; if the older one was delivered,
            // that is what Vitally has now.
            let stale: Vec<i64> = ids.iter().copied().filter(|id| !done.contains(id)).collect();
            if !stale.is_empty() {
                let delivered: Vec<i64> = stale.iter().copied().filter(|id| sent.get(id).is_some_and(|s| s.0)).collect();
                let hashes: Vec<Option<i64>> = delivered.iter().map(|id| sent[id].1).collect();
                client
                    .update(
                        "WITH d AS (SELECT * FROM unnest($2::bigint[], $3::bigint[]) AS d(id, hash))
                         INSERT INTO vitally.delivery_state (sync_id, sync_key, payload_hash)
                         SELECT r.sync_id, r.sync_key, d.hash FROM d JOIN vitally.record r ON r.id = d.id WHERE d.hash IS NOT NULL
                         ON CONFLICT (sync_id, sync_key) DO UPDATE SET payload_hash = EXCLUDED.payload_hash, delivered_at = pg_catalog.now()",
                        None,
                        &[stale.clone().into(), delivered.into(), hashes.into()],
                    )
                    .unwrap_or_else(|e| internal(e));
                release_in(client, &stale);
            }
            runs.sort_unstable();
            runs.dedup();
            crate::runs::finish_if_done(client, &runs);
        })
    });
}

fn release_in(client: &mut pgrx::spi::SpiClient<'_>, ids: &[i64]) {
    client
        .update(
            "UPDATE vitally.record SET lease_until = NULL, next_attempt_at = pg_catalog.now()
              WHERE id = ANY($1) AND status = 'pending'",
            None,
            &[ids.to_vec().into()],
        )
        .unwrap_or_else(|e| internal(e));
}

/// Puts claimed records back in the queue, due now.
pub fn release(ids: &[i64]) {
    if ids.is_empty() {
        return;
    }
    BackgroundWorker::transaction(|| Spi::connect_mut(|client| release_in(client, ids)));
}

/// Puts back every leased record: at start, any lease is one a crash left behind.
pub fn release_all_leases() {
    BackgroundWorker::transaction(|| {
        Spi::run(
            "UPDATE vitally.record SET lease_until = NULL, next_attempt_at = pg_catalog.now()
              WHERE status = 'pending' AND lease_until IS NOT NULL",
        )
        .unwrap_or_else(|e| internal(e))
    });
}

/// How long until the next pending record comes due (None: nothing pending).
pub fn next_due() -> Option<Duration> {
    BackgroundWorker::transaction(|| {
        Spi::get_one::<f64>(
            "SELECT EXTRACT(epoch FROM pg_catalog.min(x.at) - pg_catalog.now())::float8
               FROM vitally.sync s,
                    LATERAL (SELECT r.next_attempt_at AS at FROM vitally.record r
                              WHERE r.sync_id = s.id AND r.status = 'pending'
                                AND (r.lease_until IS NULL OR r.lease_until < pg_catalog.now())
                              ORDER BY r.next_attempt_at LIMIT 1) x",
        )
        .ok()
        .flatten()
    })
    .map(|secs| Duration::from_secs_f64(secs.max(0.0)))
}
