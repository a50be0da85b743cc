//! When to try a record again, and when to give up.

use crate::outcome::Outcome;
use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries per record before it is failed.
    pub max_attempts: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 10, min_delay: Duration::from_secs(1), max_delay: Duration::from_secs(600) }
    }
}

/// What becomes of a record after one try.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Delivered,
    /// Not in Vitally (update only): reported, never created.
    Skipped {
        reason: String,
    },
    /// Try again after `delay`; `counts` says whether this try used up an attempt.
    RetryIn {
        delay: Duration,
        counts: bool,
        status: Option<u16>,
        error: String,
    },
    /// Final: after the last attempt, or a rejection that retrying will not change.
    Failed {
        status: Option<u16>,
        error: String,
    },
}

impl RetryPolicy {
    /// Exponential backoff with jitter for the try after `attempts` tries: about
    /// min_delay · 2^(attempts-1), capped at max_delay, with up to as much again added
    /// at random so that many records failing together do not come back together.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        delays.nth(attempts.saturating_sub(1).min(64) as usize).unwrap_or(self.max_delay)
    }

    /// Decides after a try; `attempts` counts the tries made so far, this one included.
    pub fn next(&self, attempts: u32, outcome: Outcome) -> Next {
        match outcome {
            Outcome::Delivered => Next::Delivered,
            Outcome::NotFound { error } => Next::Skipped { reason: error },
            Outcome::Rejected { status, error } => Next::Failed { status: Some(status), error },
            Outcome::RateLimited { wait } => Next::RetryIn { delay: wait, counts: false, status: Some(429), error: "rate limited".into() },
            Outcome::Retry { status, error } if attempts >= self.max_attempts => {
                Next::Failed { status, error: format!("{error} (gave up after {attempts} attempts)") }
            }
            Outcome::Retry { status, error } => Next::RetryIn { delay: self.backoff(attempts), counts: true, status, error },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stays_under_the_cap() {
        let p = RetryPolicy { max_attempts: 10, min_delay: Duration::from_secs(1), max_delay: Duration::from_secs(60) };
        for _ in 0..50 {
            let first = p.backoff(1);
            assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs(2), "{first:?}");
            let fourth = p.backoff(4);
            assert!(fourth >= Duration::from_secs(8) && fourth <= Duration::from_secs(16), "{fourth:?}");
            assert!(p.backoff(30) <= Duration::from_secs(120));
        }
    }

    #[test]
    fn a_retryable_failure_fails_for_good_on_the_last_attempt() {
        let p = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
        let err = || Outcome::Retry { status: Some(503), error: "down".into() };
        assert!(matches!(p.next(2, err()), Next::RetryIn { counts: true, .. }));
        assert!(matches!(p.next(3, err()), Next::Failed { status: Some(503), .. }));
    }

    #[test]
    fn rate_limits_do_not_use_up_attempts() {
        let p = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
        let next = p.next(5, Outcome::RateLimited { wait: Duration::from_secs(9) });
        assert_eq!(next, Next::RetryIn { delay: Duration::from_secs(9), counts: false, status: Some(429), error: "rate limited".into() });
    }

    #[test]
    fn not_found_is_skipped_and_rejections_are_final() {
        let p = RetryPolicy::default();
        assert!(matches!(p.next(1, Outcome::NotFound { error: "nope".into() }), Next::Skipped { .. }));
        assert!(matches!(p.next(1, Outcome::Rejected { status: 400, error: "bad".into() }), Next::Failed { status: Some(400), .. }));
    }
}
