//! Recording what became of claimed records, in one transaction per batch of jobs.

use super::claim::Sent;
use super::statements::{KEEP_DELIVERED_OF_REPLACED, RECORD_OUTCOMES, RECORD_OUTCOMES_SETTINGS};
use crate::elevation::with_settings;
use crate::errors::{Result, Row};
use pgrx::spi::SpiClient;
use std::collections::{HashMap, HashSet};
use vitally_client::{Next, Outcome, RetryPolicy};

/// What one job got back: an outcome per record it sent.
pub struct JobResult {
    pub destination_id: i64,
    pub records: Vec<Sent>,
    pub outcomes: Vec<(i64, Outcome)>,
}

/// Errors are kept to a length a status table can show.
fn shorten(text: String) -> String {
    if text.chars().count() > 1000 {
        let mut t: String = text.chars().take(1000).collect();
        t.push('…');
        t
    } else {
        text
    }
}

/// Records the outcomes of finished jobs: each record delivered (and its delivery state
/// advanced, only now), skipped, failed, or back to pending for a retry as `retry`
/// decides; the runs' figures; and the runs that are now over. Returns how many records
/// had been replaced by a newer change while they were in flight.
pub fn record_outcomes(client: &mut SpiClient<'_>, results: &[JobResult], retry: &RetryPolicy) -> Result<usize> {
    let (mut ids, mut versions, mut statuses, mut incs, mut delays, mut https, mut errors, mut destinations) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Per record: whether it was delivered, and the hash it was delivered with.
    let mut sent: HashMap<i64, (bool, Option<i64>)> = HashMap::new();
    for result in results {
        let by_id: HashMap<i64, &Sent> = result.records.iter().map(|c| (c.id, c)).collect();
        for (id, outcome) in &result.outcomes {
            let Some(claimed) = by_id.get(id) else { continue };
            let (status, inc, delay, http, error): (&str, i32, f64, Option<i32>, Option<String>) = match retry
                .next(claimed.attempts as u32 + 1, outcome.clone())
            {
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
            destinations.push(result.destination_id);
        }
    }
    if ids.is_empty() {
        return Ok(0);
    }
    let args = [ids.clone().into(), versions.into(), statuses.into(), incs.into(), delays.into(), https.into(), errors.into(), destinations.into()];
    let updated = with_settings(RECORD_OUTCOMES_SETTINGS, || super::kept::run(client, RECORD_OUTCOMES, true, &args))?;
    let mut runs = Vec::new();
    let mut done = HashSet::new();
    for row in updated {
        done.insert(row.required::<i64>("id")?);
        runs.push(row.required::<i64>("run_id")?);
    }
    // A record replaced by a newer change while it was in flight (or deleted with its
    // sync): the newer copy stays pending; if the older one was delivered, that is what
    // Vitally has now.
    let stale: Vec<i64> = ids.iter().copied().filter(|id| !done.contains(id)).collect();
    let delivered: Vec<i64> = stale.iter().copied().filter(|id| sent.get(id).is_some_and(|s| s.0)).collect();
    if !delivered.is_empty() {
        let hashes: Vec<Option<i64>> = delivered.iter().map(|id| sent[id].1).collect();
        client.update(KEEP_DELIVERED_OF_REPLACED, None, &[delivered.into(), hashes.into()])?;
    }
    runs.sort_unstable();
    runs.dedup();
    super::finish_if_done(client, &runs)?;
    Ok(stale.len())
}
