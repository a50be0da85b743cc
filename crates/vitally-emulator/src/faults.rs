//! Faults to inject, settable at start and at run time: latency, a share of 5xx,
//! bursts of 429, dropped connections, blocked message types.

use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// How long after it arrived every API request is answered: its response time, the
    /// emulator's own work on it included (so that 20 ms here is 20 ms a request, as the
    /// bench's latency bound assumes). The request is applied on arrival, as a server
    /// that answers late has already applied it: a client that times out must resend
    /// under the same messageIds.
    pub latency_ms: u64,
    /// Share (0 to 1) of API requests answered 503.
    pub error_rate: f64,
    /// The next this-many API requests are answered 429.
    pub burst_429: u32,
    /// The next this-many API requests are answered 503 (a storm that surely hits).
    pub fail_next: u32,
    /// Seconds a fault 429 tells the client to wait (RateLimit-Reset).
    pub reset_secs: u64,
    /// Share (0 to 1) of API requests whose connection drops after the status line.
    pub drop_rate: f64,
    /// Analytics message types answered 400, as when Vitally blocks a type for a workspace.
    pub blocked_types: Vec<String>,
    /// Refuse connections' requests entirely with 503 (the service is down).
    pub down: bool,
    /// Answer every API request with `307 Temporary Redirect` to this base URL plus the
    /// request's path (a URL that bounces requests elsewhere), and an error body that
    /// must not reach users.
    pub redirect_to: Option<String>,
    /// Answer every API request with this status and a long body that is not
    /// Vitally's (a URL pointed at some other service).
    pub foreign_status: Option<u16>,
    /// Answer REST lookups (get one, user search) 200 with this body instead, as a
    /// proxy or an API change might: no `id`, or an `error` key.
    pub lookup_body: Option<serde_json::Value>,
}

/// Applies the faults to every request except the inspection API.
pub async fn inject(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/_emulator") {
        return next.run(request).await;
    }
    {
        let mut state = shared.state.lock().unwrap();
        state.counters.in_flight += 1;
        state.counters.max_in_flight = state.counters.max_in_flight.max(state.counters.in_flight);
    }
    let response = serve(&shared, request, next).await;
    let mut state = shared.state.lock().unwrap();
    // saturating: a reset during the request zeroed the gauge.
    state.counters.in_flight = state.counters.in_flight.saturating_sub(1);
    drop(state);
    response
}

async fn serve(shared: &AppState, request: Request, next: Next) -> Response {
    let arrived = tokio::time::Instant::now();
    let faults = shared.config.lock().unwrap().faults.clone();
    let response = answer(shared, &faults, request, next).await;
    if faults.latency_ms > 0 {
        tokio::time::sleep_until(arrived + Duration::from_millis(faults.latency_ms)).await;
    }
    response
}

async fn answer(shared: &AppState, faults: &Faults, request: Request, next: Next) -> Response {
    let refusal = (|| {
        let mut state = shared.state.lock().unwrap();
        state.counters.requests += 1;
        if let Some(base) = &faults.redirect_to {
            let target = format!("{}{}", base.trim_end_matches('/'), request.uri().path());
            let mut response = (StatusCode::TEMPORARY_REDIRECT, "<html>internal: moved</html>").into_response();
            response.headers_mut().insert("location", HeaderValue::from_str(&target).unwrap());
            return Some(response);
        }
        if let Some(status) = faults.foreign_status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            return Some((status, format!("<html>other service: internal-token=s3cr3t {}</html>", "x".repeat(2000))).into_response());
        }
        if faults.down {
            state.counters.responses_5xx += 1;
            return Some((StatusCode::SERVICE_UNAVAILABLE, "emulator is down").into_response());
        }
        if faults.drop_rate > 0.0 && fastrand::f64() < faults.drop_rate {
            state.counters.dropped += 1;
            // Headers go out, then the body fails: the client sees the connection die mid-response.
            let body = Body::from_stream(futures_util::stream::once(async {
                Err::<bytes::Bytes, std::io::Error>(std::io::Error::other("dropped by the emulator"))
            }));
            return Some(Response::builder().status(StatusCode::OK).body(body).unwrap());
        }
        if faults.burst_429 > 0 {
            let mut config = shared.config.lock().unwrap();
            if config.faults.burst_429 > 0 {
                config.faults.burst_429 -= 1;
                state.counters.responses_429 += 1;
                let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(serde_json::json!({"error": "Rate limit exceeded"}))).into_response();
                // Vitally documents RateLimit-Reset on a 429, and no Retry-After.
                response.headers_mut().insert("ratelimit-reset", HeaderValue::from(faults.reset_secs.max(1)));
                return Some(response);
            }
        }
        let forced = faults.fail_next > 0 && {
            let mut config = shared.config.lock().unwrap();
            let hit = config.faults.fail_next > 0;
            config.faults.fail_next = config.faults.fail_next.saturating_sub(1);
            hit
        };
        if forced || (faults.error_rate > 0.0 && fastrand::f64() < faults.error_rate) {
            state.counters.responses_5xx += 1;
            return Some((StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"error": "Service Unavailable"}))).into_response());
        }
        None
    })();
    if let Some(response) = refusal {
        return response;
    }
    next.run(request).await
}
