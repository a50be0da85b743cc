//! Pacing per key: a steady pace (`vitally.rest_requests_per_minute`, via `governor`)
//! under Vitally's limit, corrected by what Vitally says in its `RateLimit-*`
//! headers, and a pause for everyone on the key after a 429.
//!
//! The headers matter because the same key may be used by other clients, and
//! because a sliding window frees room unevenly: when Vitally says nothing is left,
//! every request on the key waits for `RateLimit-Reset`, then one probe goes first
//! to learn how much room there is now.

use crate::outcome::RateLimitHeaders;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter as Governor};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The longest a server's headers can make a key wait (a larger figure is a broken or
/// hostile server: `Instant + Duration` would overflow on it).
const LONGEST_WAIT: Duration = Duration::from_secs(3600);
/// How long a request waits for a probe's answer before looking again.
const PROBE_WAIT: Duration = Duration::from_millis(20);

pub struct RateLimiter {
    pace: Option<DefaultDirectRateLimiter>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// What Vitally last said is left, less what was sent since.
    remaining: Option<i64>,
    /// When Vitally said room frees up.
    reset_at: Option<Instant>,
    /// Nobody sends before this (after a 429).
    paused_until: Option<Instant>,
    /// Requests sent and not yet answered.
    in_flight: i64,
    /// A probe is out after a reset and nobody else goes until it is answered.
    probing: bool,
}

/// Held while a request is in flight; give it back with [`RateLimiter::answered`].
#[must_use]
pub struct Permit {
    _private: (),
}

enum Decision {
    Go,
    Wait(Duration),
}

impl RateLimiter {
    /// A limiter with a steady pace of `per_minute` requests (None: no pace of its own,
    /// only what Vitally's headers and 429s say, as for the Analytics API).
    pub fn new(per_minute: Option<u32>) -> RateLimiter {
        let pace = per_minute.and_then(NonZeroU32::new).map(|n| {
            // Spread evenly: a burst of one, refilled every 60/n seconds.
            let quota = Quota::with_period(Duration::from_secs(60) / n.get()).expect("non-zero").allow_burst(NonZeroU32::MIN);
            Governor::direct(quota)
        });
        RateLimiter { pace, state: Mutex::new(State::default()) }
    }

    /// Waits until a request may go.
    pub async fn acquire(&self) -> Permit {
        if let Some(pace) = &self.pace {
            pace.until_ready().await;
        }
        loop {
            match self.decide(Instant::now()) {
                Decision::Go => return Permit { _private: () },
                Decision::Wait(d) => tokio::time::sleep(d).await,
            }
        }
    }

    fn decide(&self, now: Instant) -> Decision {
        let mut s = self.state.lock().unwrap();
        if let Some(until) = s.paused_until.filter(|u| *u > now) {
            return Decision::Wait(until - now);
        }
        let exhausted = s.remaining.is_some_and(|r| r <= 0);
        if exhausted {
            if let Some(reset) = s.reset_at.filter(|r| *r > now) {
                return Decision::Wait(reset - now);
            }
            if s.probing {
                return Decision::Wait(PROBE_WAIT);
            }
            s.probing = true;
        }
        if let Some(r) = s.remaining.as_mut() {
            *r -= 1;
        }
        s.in_flight += 1;
        Decision::Go
    }

    /// Records an answer: what its headers said, and whether it was a 429.
    pub fn answered(&self, permit: Permit, status: Option<u16>, headers: &RateLimitHeaders, rate_limit_wait: Option<Duration>) {
        drop(permit);
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        s.in_flight = (s.in_flight - 1).max(0);
        s.probing = false;
        if let Some(remaining) = headers.remaining {
            // Vitally counted this request; the others still in flight are not in its figure yet.
            s.remaining = Some(remaining as i64 - s.in_flight);
            s.reset_at = headers.reset.map(|r| now + Duration::from_secs(r).min(LONGEST_WAIT));
        }
        if status == Some(429) {
            let wait = rate_limit_wait.unwrap_or(crate::outcome::DEFAULT_429_WAIT).min(LONGEST_WAIT);
            s.paused_until = Some(s.paused_until.map_or(now + wait, |p| p.max(now + wait)));
            s.remaining = Some(0);
            s.reset_at = Some(now + wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_reset_or_wait_is_capped_not_a_panic() {
        let limiter = RateLimiter::new(None);
        let headers = RateLimitHeaders { limit: None, remaining: Some(0), reset: Some(u64::MAX) };
        let permit = Permit { _private: () };
        limiter.answered(permit, Some(429), &headers, Some(Duration::MAX));
        let s = limiter.state.lock().unwrap();
        assert!(s.paused_until.unwrap() <= Instant::now() + LONGEST_WAIT);
        assert!(s.reset_at.unwrap() <= Instant::now() + LONGEST_WAIT);
    }

    fn headers(remaining: u64, reset: u64) -> RateLimitHeaders {
        RateLimitHeaders { limit: Some(10), remaining: Some(remaining), reset: Some(reset) }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn waits_for_reset_when_vitally_says_nothing_is_left() {
        let limiter = RateLimiter::new(None);
        let p = limiter.acquire().await;
        limiter.answered(p, Some(200), &headers(0, 3), None);
        let start = tokio::time::Instant::now();
        let p = limiter.acquire().await;
        limiter.answered(p, Some(200), &headers(5, 1), None);
        assert!(start.elapsed() >= Duration::from_secs(3), "{:?}", start.elapsed());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_429_pauses_everyone_on_the_key() {
        let limiter = RateLimiter::new(None);
        let p = limiter.acquire().await;
        limiter.answered(p, Some(429), &RateLimitHeaders { limit: None, remaining: None, reset: None }, Some(Duration::from_secs(4)));
        let start = tokio::time::Instant::now();
        let _p = limiter.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(4));
    }

    #[test]
    fn requests_in_flight_count_against_what_is_left() {
        let limiter = RateLimiter::new(None);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(matches!(limiter.decide(now), Decision::Go));
        }
        // One answer says 2 left; two more are still out, so nothing is left for us.
        limiter.answered(Permit { _private: () }, Some(200), &headers(2, 5), None);
        assert!(matches!(limiter.decide(Instant::now()), Decision::Wait(_)));
    }
}
