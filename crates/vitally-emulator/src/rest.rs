//! The REST API resources vitally_sync uses: get by id, user search, list, update
//! with trait merge, NPS responses; with Vitally's per-key sliding-window rate limit
//! and its `RateLimit-*` headers on every answer.

use crate::state::{merge_traits, Object, Received};
use crate::AppState;
use axum::extract::{Path, Query, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/npsResponses", post(nps_response))
        .route("/users/search", get(search_users))
        .route("/{kind}", get(list))
        .route("/{kind}/{id}", get(get_one).put(update))
}

const KINDS: [&str; 3] = ["accounts", "users", "organizations"];

struct Limit {
    limit: u32,
    remaining: u32,
    reset: u64,
    window: u64,
}

/// Auth, then the rate limit: `Err` is the answer to send instead of serving.
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself, built once per request
fn admit(shared: &AppState, headers: &HeaderMap) -> Result<Limit, Response> {
    let (token, limit, window) = {
        let c = shared.config.lock().unwrap();
        (c.rest_token.clone(), c.rest_limit, c.rest_window)
    };
    let mut state = shared.state.lock().unwrap();
    state.counters.rest_requests += 1;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{token}:")));
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if given != expected {
        state.counters.responses_401 += 1;
        return Err((StatusCode::UNAUTHORIZED, Json(json!({"error": "Unauthorized"}))).into_response());
    }
    let now = Instant::now();
    let times = state.rest_windows.entry(given.to_string()).or_default();
    while times.front().is_some_and(|t| now.duration_since(*t) >= window) {
        times.pop_front();
    }
    let reset_in = |times: &std::collections::VecDeque<Instant>| -> u64 {
        let until = times.front().map(|t| window.saturating_sub(now.duration_since(*t))).unwrap_or(window);
        until.as_secs() + u64::from(until.subsec_nanos() > 0) // whole seconds, rounded up
    };
    if times.len() as u32 >= limit {
        let reset = reset_in(times);
        state.counters.responses_429 += 1;
        state.counters.rate_limited += 1;
        let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": "Rate limit exceeded"}))).into_response();
        // RateLimit-Reset says when; Vitally documents no Retry-After.
        put_limit_headers(&mut response, &Limit { limit, remaining: 0, reset, window: window.as_secs() });
        return Err(response);
    }
    times.push_back(now);
    let remaining = limit - times.len() as u32;
    let reset = reset_in(times);
    Ok(Limit { limit, remaining, reset, window: window.as_secs() })
}

fn put_limit_headers(response: &mut Response, limit: &Limit) {
    let h = response.headers_mut();
    // As documented: the limit, then the policy (`1000, 1000;window=60`).
    h.insert("ratelimit-limit", HeaderValue::from_str(&format!("{}, {};window={}", limit.limit, limit.limit, limit.window)).unwrap());
    h.insert("ratelimit-remaining", HeaderValue::from(limit.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(limit.reset));
}

/// Serves an admitted request, adding the rate-limit headers to whatever it answers.
fn serve(shared: &AppState, headers: &HeaderMap, handle: impl FnOnce(&AppState) -> Response) -> Response {
    match admit(shared, headers) {
        Err(refused) => refused,
        Ok(limit) => {
            let mut response = handle(shared);
            match response.status().as_u16() {
                400 => shared.state.lock().unwrap().counters.responses_400 += 1,
                404 => shared.state.lock().unwrap().counters.responses_404 += 1,
                _ => {}
            }
            put_limit_headers(&mut response, &limit);
            response
        }
    }
}

/// Error bodies as seen live: `{"error": "..."}`. (The not-found status is unverified;
/// 404 is the guess the docs suggest.)
fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": format!("{what} not found")}))).into_response()
}

/// The body a `lookup_body` fault puts in place of a lookup's answer.
fn faked_lookup(shared: &AppState) -> Option<Response> {
    shared.config.lock().unwrap().faults.lookup_body.clone().map(|b| Json(b).into_response())
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

fn show(o: &Object) -> Value {
    serde_json::to_value(o).unwrap()
}

async fn get_one(Extract(shared): Extract<AppState>, Path((kind, id)): Path<(String, String)>, headers: HeaderMap) -> Response {
    serve(&shared, &headers, |shared| {
        if !KINDS.contains(&kind.as_str()) {
            return not_found("resource");
        }
        if let Some(faked) = faked_lookup(shared) {
            return faked;
        }
        let mut state = shared.state.lock().unwrap();
        match state.find_mut(&kind, &id) {
            Some(o) => Json(show(o)).into_response(),
            None => not_found(&kind[..kind.len() - 1]),
        }
    })
}

async fn search_users(Extract(shared): Extract<AppState>, Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    serve(&shared, &headers, |shared| {
        if let Some(faked) = faked_lookup(shared) {
            return faked;
        }
        let state = shared.state.lock().unwrap();
        let results: Vec<Value> = state
            .users
            .values()
            .filter(|u| q.get("externalId").is_some_and(|e| *e == u.external_id) || q.get("email").is_some_and(|e| u.email.as_deref() == Some(e)))
            .map(show)
            .collect();
        Json(json!({ "results": results })).into_response()
    })
}

async fn list(
    Extract(shared): Extract<AppState>,
    Path(kind): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(&shared, &headers, |shared| {
        let mut state = shared.state.lock().unwrap();
        let Some(store) = state.store(&kind) else { return not_found("resource") };
        // Pages of at most 100, and 100 by default.
        let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(100).clamp(1, 100);
        let from = q.get("from").cloned().unwrap_or_default();
        let page: Vec<&Object> =
            store.range::<String, _>((std::ops::Bound::Excluded(from), std::ops::Bound::Unbounded)).map(|(_, o)| o).take(limit + 1).collect();
        let next = (page.len() > limit).then(|| page[limit - 1].external_id.clone());
        let results: Vec<Value> = page.iter().take(limit).map(|o| show(o)).collect();
        Json(json!({ "results": results, "next": next })).into_response()
    })
}

async fn update(Extract(shared): Extract<AppState>, Path((kind, id)): Path<(String, String)>, headers: HeaderMap, body: String) -> Response {
    serve(&shared, &headers, |shared| {
        let Ok(Value::Object(body)) = serde_json::from_str::<Value>(&body) else {
            return bad_request("body must be a JSON object");
        };
        if body.get("traits").is_some_and(|t| !t.is_object()) {
            return bad_request("traits must be an object");
        }
        let record = shared.config.lock().unwrap().record_received;
        let mut state = shared.state.lock().unwrap();
        let Some(object) = state.find_mut(&kind, &id) else { return not_found(kind.trim_end_matches('s')) };
        if let Some(Value::Object(traits)) = body.get("traits") {
            merge_traits(&mut object.traits, traits);
        }
        // A REST record's own fields are top-level: `name`, and for users `email` and
        // `avatar` (a `traits.email` here is only a trait).
        if let Some(Value::String(name)) = body.get("name") {
            object.name = Some(name.clone());
        }
        if kind == "users" {
            for (field, slot) in [("email", &mut object.email), ("avatar", &mut object.avatar)] {
                if let Some(Value::String(v)) = body.get(field) {
                    *slot = Some(v.clone());
                }
            }
        }
        object.updates += 1;
        let shown = show(object);
        if record {
            state.received.push(Received { kind: format!("PUT {kind}"), message_id: None, body: Value::Object(body), applied: true });
        }
        Json(shown).into_response()
    })
}

async fn nps_response(Extract(shared): Extract<AppState>, headers: HeaderMap, body: String) -> Response {
    serve(&shared, &headers, |shared| {
        let Ok(Value::Object(mut body)) = serde_json::from_str::<Value>(&body) else {
            return bad_request("body must be a JSON object");
        };
        let score_ok = body.get("score").and_then(Value::as_i64).is_some_and(|s| (0..=10).contains(&s));
        if !score_ok {
            return bad_request("score must be an integer from 0 to 10");
        }
        let Some(user_id) = body.get("userId").and_then(Value::as_str).map(str::to_string) else {
            return bad_request("userId is required");
        };
        let responded = body.get("respondedAt").and_then(Value::as_str).is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok());
        if !responded {
            return bad_request("respondedAt is required: an ISO-8601 date-time");
        }
        let record = shared.config.lock().unwrap().record_received;
        let mut state = shared.state.lock().unwrap();
        // The REST API takes Vitally's user id here, not yours.
        if !state.users.values().any(|u| u.id == user_id) {
            return not_found("user");
        }
        let external_id = body.get("externalId").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let id = state.nps.get(&external_id).and_then(|r| r.get("id").cloned()).unwrap_or_else(|| Value::String(uuid::Uuid::new_v4().to_string()));
        body.insert("id".into(), id);
        body.insert("externalId".into(), Value::String(external_id.clone()));
        let stored = Value::Object(body);
        state.nps.insert(external_id, stored.clone());
        if record {
            state.received.push(Received { kind: "POST npsResponses".into(), message_id: None, body: stored.clone(), applied: true });
        }
        Json(stored).into_response()
    })
}
