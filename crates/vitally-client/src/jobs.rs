//! How the worker fills one job (the records it sends to one destination API at a time)
//! from the syncs that share that API: pure, so that plain `cargo test` reaches it.

/// Takes up to about `size` records from `syncs`: first an even share each (at least
/// `at_least`), then what the syncs with less due than their share left, shared among
/// those that filled theirs, and so on. `claim(sync, n)` takes up to `n` of a sync's
/// records (resuming after what it took before) and says how many it took. Returns how
/// many were taken in all.
///
/// Before, each sync got `size / syncs` once, so a job shrank with every idle sync
/// beside the busy one (533 records of 3,200 beside five finished syncs), and with it
/// the requests in flight.
pub fn fill<T: Copy, E>(size: i64, at_least: i64, syncs: &[T], mut claim: impl FnMut(T, i64) -> Result<i64, E>) -> Result<i64, E> {
    let at_least = at_least.max(1);
    let mut wanting: Vec<T> = syncs.to_vec();
    let mut taken = 0;
    while !wanting.is_empty() {
        let left = size - taken;
        if taken > 0 && left < at_least.min(size) {
            break;
        }
        let share = (left / wanting.len() as i64).max(at_least);
        let mut full = Vec::new();
        for sync in wanting {
            let n = claim(sync, share)?;
            taken += n;
            if n >= share {
                full.push(sync);
            }
        }
        wanting = full;
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Fills a job from syncs with `due` records each; returns what each gave, in order.
    fn fill_from(size: i64, at_least: i64, due: &[i64]) -> (i64, Vec<i64>, usize) {
        let mut left: Vec<i64> = due.to_vec();
        let mut given: HashMap<usize, i64> = HashMap::new();
        let mut claims = 0;
        let ids: Vec<usize> = (0..due.len()).collect();
        let taken = fill(size, at_least, &ids, |i, n| -> Result<i64, ()> {
            claims += 1;
            let n = n.min(left[i]);
            left[i] -= n;
            *given.entry(i).or_default() += n;
            Ok(n)
        })
        .unwrap();
        (taken, (0..due.len()).map(|i| given.get(&i).copied().unwrap_or(0)).collect(), claims)
    }

    #[test]
    fn one_busy_sync_beside_idle_ones_fills_the_whole_job() {
        let (taken, given, claims) = fill_from(3200, 100, &[0, 0, 1_000_000, 0, 0, 0]);
        assert_eq!(taken, 3200);
        assert_eq!(given, vec![0, 0, 3200, 0, 0, 0]);
        assert_eq!(claims, 7, "six claims of a share, then one for the rest");
    }

    #[test]
    fn busy_syncs_share_evenly_and_a_small_one_leaves_its_rest_to_them() {
        let (taken, given, _) = fill_from(3000, 100, &[1_000_000, 1_000_000, 50]);
        assert_eq!(taken, 3000);
        assert_eq!(given, vec![1475, 1475, 50]);
    }

    #[test]
    fn less_due_than_a_job_takes_everything_once() {
        let (taken, given, claims) = fill_from(3200, 100, &[700, 20]);
        assert_eq!((taken, given, claims), (720, vec![700, 20], 2));
    }

    #[test]
    fn many_syncs_each_get_at_least_a_batch() {
        let (taken, given, claims) = fill_from(3200, 100, &[1000; 40]);
        assert_eq!(given, vec![100; 40], "each a batch, more than the job's size in all, as before");
        assert_eq!((taken, claims), (4000, 40));
    }

    #[test]
    fn a_job_of_one_request_per_record_shares_its_size_and_no_more() {
        let (taken, given, _) = fill_from(150, 1, &[1000; 5]);
        assert_eq!((taken, given), (150, vec![30; 5]), "REST: the worker asks for at least 1 per sync");
    }

    #[test]
    fn nothing_due_is_one_claim_per_sync() {
        assert_eq!(fill_from(3200, 100, &[0, 0, 0]), (0, vec![0, 0, 0], 3));
    }

    #[test]
    fn a_failed_claim_stops_the_fill() {
        let mut calls = 0;
        let r = fill(3200, 100, &[1, 2, 3], |s, _| {
            calls += 1;
            if s == 2 {
                Err("no")
            } else {
                Ok(0)
            }
        });
        assert_eq!((r, calls), (Err("no"), 2));
    }
}
