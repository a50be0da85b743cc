//! What an answer from Vitally means for the records it carried.

use std::time::Duration;

/// The fate of one request (and of every record in it).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx: accepted (Vitally applies it seconds to minutes later).
    Delivered,
    /// Worth trying again: 5xx, a timeout, a connection error. `status` is `None`
    /// when no answer came.
    Retry { status: Option<u16>, error: String },
    /// 429: wait this long; this does not use up an attempt.
    RateLimited { wait: Duration },
    /// A 4xx that will not change by retrying: bad key, bad message, a message type
    /// blocked for the workspace.
    Rejected { status: u16, error: String },
    /// A REST lookup of one record found nothing: the record is not in Vitally
    /// (update only: skipped). No other answer means this.
    NotFound { error: String },
}

/// What a request was for: only a REST lookup of one record may mean "not found".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Analytics,
    RestLookup,
    RestWrite,
}

/// What the rate-limit headers of an answer said. Vitally documents
/// `RateLimit-Limit: 1000, 1000;window=60`, `RateLimit-Remaining`, `RateLimit-Reset`
/// (seconds), and no `Retry-After`: pacing rests on Remaining and Reset alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Seconds until room frees up.
    pub reset: Option<u64>,
}

/// How long to wait before trying again after a 429 with no usable header.
pub const DEFAULT_429_WAIT: Duration = Duration::from_secs(5);

impl RateLimitHeaders {
    /// Reads the headers as they come, leniently: a number is the first integer of the
    /// value (`1000, 1000;window=60` is 1000); anything unreadable counts as absent.
    pub fn parse(limit: Option<&str>, remaining: Option<&str>, reset: Option<&str>) -> RateLimitHeaders {
        let number = |v: Option<&str>| {
            let v = v?.trim_start();
            let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        };
        RateLimitHeaders { limit: number(limit), remaining: number(remaining), reset: number(reset) }
    }
}

/// The wait a 429 asks for: `RateLimit-Reset`, else a default.
pub fn rate_limit_wait(limits: &RateLimitHeaders) -> Duration {
    limits.reset.map(|s| Duration::from_secs(s.max(1))).unwrap_or(DEFAULT_429_WAIT)
}

/// Vitally's error text from a body: `{"error": ...}`, `{"message": ...}` (with or
/// without `statusCode`), or the body itself, shortened.
pub fn error_text(body: &str) -> String {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(body) {
        for field in ["error", "message"] {
            match m.get(field) {
                Some(serde_json::Value::String(s)) => return s.clone(),
                Some(v @ serde_json::Value::Object(_)) => return v.to_string(),
                _ => {}
            }
        }
    }
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return "(empty body)".into();
    }
    let mut text: String = trimmed.chars().take(500).collect();
    if trimmed.chars().count() > 500 {
        text.push('…');
    }
    text
}

/// The longest error text kept from a host that is not Vitally's.
const UNTRUSTED_ERROR_CHARS: usize = 200;

/// What is kept of an error body from a host that is not one of Vitally's (a URL
/// override): only a short `error` or `message` string, never the body itself, so a
/// URL pointed elsewhere cannot show users what some other service answers.
pub fn untrusted_body(body: &str, host: &str) -> String {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(body) {
        for field in ["error", "message"] {
            if let Some(serde_json::Value::String(s)) = m.get(field) {
                let short: String = s.chars().filter(|c| !c.is_control()).take(UNTRUSTED_ERROR_CHARS).collect();
                return serde_json::json!({ "error": short }).to_string();
            }
        }
    }
    serde_json::json!({ "error": format!("(body not shown: {host} is not a Vitally host)") }).to_string()
}

/// Classifies an HTTP answer to a request made for `call`.
pub fn classify(call: Call, status: u16, limits: &RateLimitHeaders, body: &str) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        429 => Outcome::RateLimited { wait: rate_limit_wait(limits) },
        404 if call == Call::RestLookup => Outcome::NotFound { error: error_text(body) },
        // Nothing documents an Analytics 404, and a write's target was just found: the
        // URL is wrong (a base URL without /analytics/v1 would otherwise skip everything).
        404 => Outcome::Rejected {
            status,
            error: format!(
                "{} (404 Not Found: check the destination's {} with vitally.alter_destination)",
                error_text(body),
                if call == Call::Analytics { "analytics_url; it ends in /analytics/v1" } else { "rest_url; it ends in /resources" }
            ),
        },
        // Redirects are never followed: an allowed URL must not bounce a key elsewhere.
        300..=399 => Outcome::Rejected {
            status,
            error: "the destination answered with a redirect, which vitally_sync never follows: set its URL to the final address".into(),
        },
        408 | 500..=599 => Outcome::Retry { status: Some(status), error: error_text(body) },
        401 | 403 => Outcome::Rejected {
            status,
            error: format!("{} (Vitally refused the key: check the destination's keys with vitally.alter_destination)", error_text(body)),
        },
        _ => Outcome::Rejected { status, error: error_text(body) },
    }
}

/// Whether a whole batch refused with this outcome may hide one bad message among
/// good ones, so that splitting it is worth it.
pub fn worth_splitting(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Rejected { status: 400 | 413 | 422, .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: RateLimitHeaders = RateLimitHeaders { limit: None, remaining: None, reset: None };

    #[test]
    fn both_error_body_shapes_are_read() {
        assert_eq!(error_text(r#"{"error":"Invalid accountId"}"#), "Invalid accountId");
        assert_eq!(error_text(r#"{"statusCode":404,"message":"account not found"}"#), "account not found");
        assert_eq!(error_text("<html>bad gateway</html>"), "<html>bad gateway</html>");
    }

    #[test]
    fn only_a_short_error_string_is_kept_from_other_hosts() {
        let long = format!(r#"{{"error":"{}","secret":"s3cr3t"}}"#, "x".repeat(1000));
        let kept = untrusted_body(&long, "127.0.0.1");
        assert_eq!(error_text(&kept).chars().count(), 200);
        assert!(!kept.contains("s3cr3t"));
        assert_eq!(error_text(&untrusted_body("<html>internal admin page</html>", "10.1.2.3")), "(body not shown: 10.1.2.3 is not a Vitally host)");
        assert!(matches!(classify(Call::Analytics, 307, &NONE, ""), Outcome::Rejected { status: 307, .. }));
    }

    #[test]
    fn every_class() {
        assert_eq!(classify(Call::Analytics, 200, &NONE, ""), Outcome::Delivered);
        assert!(matches!(classify(Call::Analytics, 503, &NONE, ""), Outcome::Retry { status: Some(503), .. }));
        assert!(matches!(classify(Call::Analytics, 400, &NONE, r#"{"error":"x"}"#), Outcome::Rejected { status: 400, .. }));
        assert!(matches!(classify(Call::RestLookup, 404, &NONE, ""), Outcome::NotFound { .. }));
        assert!(matches!(classify(Call::Analytics, 401, &NONE, ""), Outcome::Rejected { status: 401, .. }));
    }

    #[test]
    fn only_a_rest_lookup_may_mean_not_found() {
        for (call, hint) in [(Call::Analytics, "analytics_url; it ends in /analytics/v1"), (Call::RestWrite, "rest_url; it ends in /resources")] {
            match classify(call, 404, &NONE, r#"{"error":"Not Found"}"#) {
                Outcome::Rejected { status: 404, error } => assert!(error.contains(hint), "{error}"),
                other => panic!("{call:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_429_waits_for_reset_then_a_default() {
        let reset = RateLimitHeaders { reset: Some(7), ..NONE };
        assert_eq!(classify(Call::RestLookup, 429, &reset, ""), Outcome::RateLimited { wait: Duration::from_secs(7) });
        assert_eq!(classify(Call::RestLookup, 429, &NONE, ""), Outcome::RateLimited { wait: DEFAULT_429_WAIT });
    }

    #[test]
    fn rate_limit_headers_are_read_leniently() {
        let h = RateLimitHeaders::parse(Some("1000, 1000;window=60"), Some(" 998"), Some("12"));
        assert_eq!(h, RateLimitHeaders { limit: Some(1000), remaining: Some(998), reset: Some(12) });
        assert_eq!(RateLimitHeaders::parse(Some("lots"), None, Some("-1")), NONE);
    }
}
