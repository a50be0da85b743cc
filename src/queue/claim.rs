//! Out of the queue: claiming due records, resuming each sync's claims where the last
//! one ended; and when the next record is due.
//!
//! Nothing is written by a claim. Only the worker claims, and it keeps the ids of what it
//! has in flight; a crash leaves the records pending, to be claimed again by the next
//! worker (and sent again under the same messageIds).

use super::statements::{CLAIM, NEXT_DUE, SYNCS};
use crate::errors::{Result, Row};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use vitally_client::delivery::QueuedRecord;
use vitally_model::{parse_pair, Object, Route};

/// One destination API: the unit that has at most a few jobs in flight.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey {
    pub destination_id: i64,
    pub rest: bool,
}

/// A claimed record: what is sent, and what recording its outcome needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub record: QueuedRecord,
    pub sent: Sent,
}

/// What the worker keeps of a record it sent, until its outcome is recorded (the record
/// itself, payload and all, moves into the job that sends it).
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub id: i64,
    pub version: i32,
    pub attempts: i32,
    pub hash: Option<i64>,
}

/// The claimed records of one destination API.
pub struct Job {
    pub key: JobKey,
    pub records: Vec<Claimed>,
}

/// How many records one job of each API may take, and the least per sync.
pub struct JobSizes {
    pub analytics: i64,
    pub rest: i64,
    /// The least an Analytics job takes of each sync (a batch); REST takes at least 1.
    pub per_sync_at_least: i64,
}

/// Where each sync's next claim starts: after the last record claimed, in the order of
/// `(next_attempt_at, id)`, or after the time of a claim that found fewer records than
/// it could take (so a sync with nothing due costs one index descent). Whatever becomes
/// due later sorts after it, except records
/// written with an older time by a transaction that committed late (a long `sync()`),
/// or a newer change to a record that was in flight: for those the worker forgets the
/// cursors (`reset`) when a commit rings the doorbell, when an outcome finds its record
/// replaced, and now and then.
#[derive(Default)]
pub struct Cursors {
    after: HashMap<i64, (TimestampWithTimeZone, i64)>,
    /// Syncs already said to be skipped.
    warned: HashSet<i64>,
}

impl Cursors {
    pub fn reset(&mut self) {
        self.after.clear();
    }
}

/// Claims due records of every destination API not in `busy`, one job each, leaving out
/// the records `in_flight`; syncs share a job's size (`vitally_client::jobs::fill`).
pub fn claim(client: &SpiClient<'_>, busy: &[JobKey], in_flight: &[i64], cursors: &mut Cursors, sizes: &JobSizes) -> Result<Vec<Job>> {
    let mut groups: BTreeMap<JobKey, Vec<(i64, Object, Route)>> = BTreeMap::new();
    for row in super::kept::run(client, SYNCS, false, &[])? {
        let sync_id: i64 = row.required("id")?;
        // A pair changed by hand in the table is skipped (said once), never a stop for all.
        let (object, _, route) = match parse_pair(&row.required::<String>("object")?, &row.required::<String>("behavior")?) {
            Ok(kind) => kind,
            Err(e) => {
                if cursors.warned.insert(sync_id) {
                    pgrx::warning!("vitally_sync worker: sync {sync_id} is not delivered: its stored pair is invalid ({e})");
                }
                continue;
            }
        };
        let key = JobKey { destination_id: row.required("destination_id")?, rest: route.is_rest() };
        if !busy.contains(&key) {
            groups.entry(key).or_default().push((sync_id, object, route));
        }
    }
    // What the claims below call now: a claim that comes up short has seen everything
    // due until then, so the next one starts after it.
    let now: TimestampWithTimeZone = client.select("SELECT pg_catalog.now() AS now", Some(1), &[])?.first().required("now")?;
    let mut jobs = Vec::new();
    for (key, syncs) in groups {
        let size = if key.rest { sizes.rest } else { sizes.analytics };
        // A REST record is a request of its own: no batch to fill, so no least per sync
        // (with a batch as the least, five syncs took 500 records into a job of 150).
        let at_least = if key.rest { 1 } else { sizes.per_sync_at_least };
        let mut records = Vec::new();
        vitally_client::jobs::fill(size, at_least, &syncs, |(sync_id, object, route), per_sync| -> Result<i64> {
            let (at, id) = cursors.after.get(&sync_id).copied().unwrap_or((TimestampWithTimeZone::negative_infinity(), 0));
            let mut last = (now, i64::MAX);
            let mut taken = 0;
            for row in super::kept::run(client, CLAIM, false, &[sync_id.into(), per_sync.into(), at.into(), id.into(), in_flight.to_vec().into()])? {
                let id: i64 = row.required("id")?;
                last = (row.required::<TimestampWithTimeZone>("next_attempt_at")?, id);
                taken += 1;
                // Payload and messageId are nullable (invalid records have none); a pending
                // record without one fails on its own when sent, never stops the worker.
                records.push(Claimed {
                    record: QueuedRecord {
                        id,
                        object,
                        route,
                        sync_key: row.required("sync_key")?,
                        payload: row.optional::<JsonB>("payload")?.map(|j| j.0).unwrap_or_default(),
                        message_id: row.optional("message_id")?.unwrap_or_default(),
                        queued_at: row.required("queued_at")?,
                    },
                    sent: Sent { id, version: row.required("version")?, hash: row.optional("payload_hash")?, attempts: row.required("attempts")? },
                });
            }
            // A full claim resumes after its last record; a short one after `now`. (Those
            // in flight it left out come back, if at all, as retries due later than now.)
            cursors.after.insert(sync_id, if taken < per_sync { (now, i64::MAX) } else { last });
            Ok(taken)
        })?;
        if !records.is_empty() {
            jobs.push(Job { key, records });
        }
    }
    Ok(jobs)
}

/// How long until the next pending record comes due (None: nothing pending).
pub fn next_due(client: &SpiClient<'_>) -> Result<Option<Duration>> {
    let secs: Option<f64> = client.select(NEXT_DUE, Some(1), &[])?.first().optional("secs")?;
    Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
}
