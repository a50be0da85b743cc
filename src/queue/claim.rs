//! Out of the queue: claiming due records with a lease, putting them back, and when the
//! next one is due.

use super::statements::{CLAIM, DUE_SYNCS, NEXT_DUE, RELEASE, RELEASE_ALL};
use crate::errors::{Internal, Result, Row};
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use std::collections::BTreeMap;
use std::time::Duration;
use vitally_client::delivery::QueuedRecord;
use vitally_model::{parse_pair, Object, Route};

/// One destination API: the unit that has at most a few jobs in flight.
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

/// The claimed records of one destination API.
pub struct Job {
    pub key: JobKey,
    pub records: Vec<Claimed>,
}

/// How many records one job of each API may take, and the least per sync.
pub struct JobSizes {
    pub analytics: i64,
    pub rest: i64,
    pub per_sync_at_least: i64,
}

/// Claims due records of every destination API not in `busy`, one job each; syncs
/// share a job's size evenly.
pub fn claim(client: &mut SpiClient<'_>, busy: &[JobKey], sizes: &JobSizes) -> Result<Vec<Job>> {
    let mut groups: BTreeMap<JobKey, Vec<(i64, Object, Route)>> = BTreeMap::new();
    for row in client.select(DUE_SYNCS, None, &[])? {
        let sync_id: i64 = row.required("id")?;
        let (object, _, route) = parse_pair(&row.required::<String>("object")?, &row.required::<String>("behavior")?)
            .map_err(|e| Internal::Broken(format!("sync {sync_id} as stored: {e}")))?;
        let key = JobKey { destination_id: row.required("destination_id")?, rest: route.is_rest() };
        if !busy.contains(&key) {
            groups.entry(key).or_default().push((sync_id, object, route));
        }
    }
    let mut jobs = Vec::new();
    for (key, syncs) in groups {
        let size = if key.rest { sizes.rest } else { sizes.analytics };
        let per_sync = (size / syncs.len() as i64).max(sizes.per_sync_at_least);
        let mut records = Vec::new();
        for &(sync_id, object, route) in &syncs {
            for row in client.update(CLAIM, None, &[sync_id.into(), per_sync.into()])? {
                // Payload and messageId are nullable (invalid records have none); a pending
                // record without one fails on its own when sent, never stops the worker.
                records.push(Claimed {
                    record: QueuedRecord {
                        id: row.required("id")?,
                        object,
                        route,
                        sync_key: row.required("sync_key")?,
                        payload: row.optional::<JsonB>("payload")?.map(|j| j.0).unwrap_or_default(),
                        message_id: row.optional("message_id")?.unwrap_or_default(),
                        queued_at: row.required("queued_at")?,
                    },
                    version: row.required("version")?,
                    hash: row.optional("payload_hash")?,
                    attempts: row.required("attempts")?,
                });
            }
        }
        if !records.is_empty() {
            jobs.push(Job { key, records });
        }
    }
    Ok(jobs)
}

/// Puts claimed records back in the queue, due now.
pub fn release(client: &mut SpiClient<'_>, ids: &[i64]) -> Result<()> {
    if !ids.is_empty() {
        client.update(RELEASE, None, &[ids.to_vec().into()])?;
    }
    Ok(())
}

/// Puts back every leased record: at the worker's start, a lease is one a crash left.
pub fn release_all_leases(client: &mut SpiClient<'_>) -> Result<()> {
    client.update(RELEASE_ALL, None, &[])?;
    Ok(())
}

/// How long until the next pending record comes due (None: nothing pending).
pub fn next_due(client: &SpiClient<'_>) -> Result<Option<Duration>> {
    let secs: Option<f64> = client.select(NEXT_DUE, Some(1), &[])?.first().optional("secs")?;
    Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
}
