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
    /// 404 from the REST API: the record is not in Vitally (update only: skipped).
    NotFound { error: String },
}

/// What the rate-limit headers of an answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Seconds until room frees up.
    pub reset: Option<u64>,
}

/// How long to wait before trying again after a 429 with no usable header.
pub const DEFAULT_429_WAIT: Duration = Duration::from_secs(5);

/// The wait a 429 asks for: `Retry-After` (seconds) if present, else `RateLimit-Reset`.
pub fn rate_limit_wait(retry_after: Option<&str>, limits: &RateLimitHeaders) -> Duration {
    retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(limits.reset)
        .map(|s| Duration::from_secs(s.max(1)))
        .unwrap_or(DEFAULT_429_WAIT)
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

/// Classifies an HTTP answer.
pub fn classify(status: u16, retry_after: Option<&str>, limits: &RateLimitHeaders, body: &str) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        429 => Outcome::RateLimited { wait: rate_limit_wait(retry_after, limits) },
        404 => Outcome::NotFound { error: error_text(body) },
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
        assert!(matches!(classify(307, None, &NONE, ""), Outcome::Rejected { status: 307, .. }));
    }

    #[test]
    fn every_class() {
        assert_eq!(classify(200, None, &NONE, ""), Outcome::Delivered);
        assert!(matches!(classify(503, None, &NONE, ""), Outcome::Retry { status: Some(503), .. }));
        assert!(matches!(classify(400, None, &NONE, r#"{"error":"x"}"#), Outcome::Rejected { status: 400, .. }));
        assert!(matches!(classify(404, None, &NONE, ""), Outcome::NotFound { .. }));
        assert!(matches!(classify(401, None, &NONE, ""), Outcome::Rejected { status: 401, .. }));
    }

    #[test]
    fn a_429_waits_for_retry_after_then_reset_then_a_default() {
        let reset = RateLimitHeaders { reset: Some(7), ..NONE };
        assert_eq!(classify(429, Some("3"), &reset, ""), Outcome::RateLimited { wait: Duration::from_secs(3) });
        assert_eq!(classify(429, None, &reset, ""), Outcome::RateLimited { wait: Duration::from_secs(7) });
        assert_eq!(classify(429, None, &NONE, ""), Outcome::RateLimited { wait: DEFAULT_429_WAIT });
    }
}
