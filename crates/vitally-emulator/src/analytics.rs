//! The Analytics ("HTTPS") API: upserts of accounts, users and organizations, track
//! events, unlink, and `/batch` of at most 100 of those, all-or-nothing.

use crate::state::{Received, State};
use crate::AppState;
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

pub const MAX_BATCH: usize = 100;
const TYPES: [&str; 5] = ["account", "user", "organization", "track", "unlink"];

pub fn routes() -> Router<AppState> {
    Router::new().route("/batch", post(batch)).route("/{kind}", post(single))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn authorized(shared: &AppState, headers: &HeaderMap) -> bool {
    let expected = format!("Basic {}", shared.config.lock().unwrap().analytics_key);
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

async fn single(Extract(shared): Extract<AppState>, Path(kind): Path<String>, headers: HeaderMap, body: String) -> Response {
    if !TYPES.contains(&kind.as_str()) {
        return error(StatusCode::NOT_FOUND, format!("unknown endpoint /{kind}"));
    }
    let message = match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(mut m)) => {
            m.insert("type".into(), Value::String(kind));
            Value::Object(m)
        }
        _ => return answer(&shared, Err((StatusCode::BAD_REQUEST, "body must be a JSON object".into()))),
    };
    let outcome = receive(&shared, &headers, vec![message]);
    answer(&shared, outcome)
}

async fn batch(Extract(shared): Extract<AppState>, headers: HeaderMap, body: String) -> Response {
    let messages = match serde_json::from_str::<Value>(&body) {
        Ok(Value::Array(items)) => items,
        _ => return answer(&shared, Err((StatusCode::BAD_REQUEST, "batch body must be a JSON array of messages".into()))),
    };
    let outcome = receive(&shared, &headers, messages);
    answer(&shared, outcome)
}

fn answer(shared: &AppState, outcome: Result<(), (StatusCode, String)>) -> Response {
    match outcome {
        Ok(()) => Json(json!({ "message": "Success." })).into_response(),
        Err((status, message)) => {
            let mut state = shared.state.lock().unwrap();
            match status.as_u16() {
                400 => state.counters.responses_400 += 1,
                401 => state.counters.responses_401 += 1,
                _ => {}
            }
            error(status, message)
        }
    }
}

/// Checks every message first and applies them only if all are valid.
fn receive(shared: &AppState, headers: &HeaderMap, messages: Vec<Value>) -> Result<(), (StatusCode, String)> {
    shared.state.lock().unwrap().counters.analytics_requests += 1;
    if !authorized(shared, headers) {
        return Err((StatusCode::UNAUTHORIZED, "Unauthorized: invalid API key".into()));
    }
    // Unverified in Vitally; refused here so that no client relies on it being accepted.
    if messages.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "a batch needs at least one message".into()));
    }
    if messages.len() > MAX_BATCH {
        return Err((StatusCode::BAD_REQUEST, format!("a batch holds at most {MAX_BATCH} messages, got {}", messages.len())));
    }
    let (blocked, record) = {
        let config = shared.config.lock().unwrap();
        (config.faults.blocked_types.clone(), config.record_received)
    };
    for (i, message) in messages.iter().enumerate() {
        let kind = message.get("type").and_then(Value::as_str).unwrap_or("");
        if blocked.iter().any(|b| b == kind) {
            return Err((StatusCode::BAD_REQUEST, format!("Message type '{kind}' is blocked for this workspace")));
        }
        if let Err(reason) = validate(message) {
            return Err((StatusCode::BAD_REQUEST, format!("message {i}: {reason}")));
        }
    }
    let mut state = shared.state.lock().unwrap();
    for message in messages {
        apply(&mut state, message, record);
    }
    Ok(())
}

fn text<'a>(m: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    m.get(field).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The rules of `vitally-api.md` for one message.
pub fn validate(message: &Value) -> Result<(), String> {
    let m = message.as_object().ok_or("a message must be a JSON object")?;
    let kind = m.get("type").and_then(Value::as_str).ok_or("missing \"type\"")?;
    if text(m, "messageId").is_none() && text(m, "timestamp").is_none() {
        return Err("a message needs a messageId or a timestamp".into());
    }
    if let Some(ts) = m.get("timestamp") {
        let ok = ts.as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok());
        if !ok {
            return Err(format!("timestamp {ts} is not an ISO-8601 date-time"));
        }
    }
    if let Some(traits) = m.get("traits") {
        if !traits.is_object() {
            return Err("traits must be an object".into());
        }
    }
    let need = |field: &str| text(m, field).map(|_| ()).ok_or(format!("{kind} message without \"{field}\""));
    match kind {
        "account" => need("accountId"),
        "organization" => need("organizationId"),
        "user" => {
            need("userId")?;
            if text(m, "accountId").is_none() && text(m, "organizationId").is_none() {
                return Err("user message without \"accountId\" or \"organizationId\"".into());
            }
            Ok(())
        }
        "track" => {
            need("event")?;
            if !m.get("properties").is_some_and(Value::is_object) {
                return Err("track message without a \"properties\" object".into());
            }
            if ["userId", "accountId", "organizationId"].iter().all(|f| text(m, f).is_none()) {
                return Err("track message without \"userId\", \"accountId\" or \"organizationId\"".into());
            }
            Ok(())
        }
        "unlink" => {
            need("userId")?;
            need("accountId")
        }
        other => Err(format!("unknown message type \"{other}\"")),
    }
}

fn apply(state: &mut State, message: Value, record: bool) {
    state.counters.messages += 1;
    let m = message.as_object().expect("validated");
    let kind = m["type"].as_str().unwrap().to_string();
    let message_id = text(m, "messageId").map(str::to_string);
    let fresh = match &message_id {
        Some(id) => state.message_ids.insert(id.clone()),
        None => true,
    };
    if fresh {
        let traits = m.get("traits").and_then(Value::as_object);
        match kind.as_str() {
            "account" => {
                let org = text(m, "organizationId").map(str::to_string);
                let account = state.upsert("accounts", text(m, "accountId").unwrap(), traits);
                if org.is_some() {
                    account.organization_id = org;
                }
            }
            "organization" => {
                state.upsert("organizations", text(m, "organizationId").unwrap(), traits);
            }
            "user" => {
                let account = text(m, "accountId").map(str::to_string);
                let org = text(m, "organizationId").map(str::to_string);
                let user = state.upsert("users", text(m, "userId").unwrap(), traits);
                // traits.email and traits.avatar are the user's own fields in Analytics.
                if let Some(t) = traits {
                    if let Some(Value::String(e)) = t.get("email") {
                        user.email = Some(e.clone());
                    }
                    if let Some(Value::String(a)) = t.get("avatar") {
                        user.avatar = Some(a.clone());
                    }
                }
                if let Some(a) = &account {
                    if !user.account_ids.contains(a) {
                        user.account_ids.push(a.clone());
                    }
                }
                if org.is_some() {
                    user.organization_id = org;
                }
                // An unknown accountId makes Vitally create that account.
                if let Some(a) = account {
                    if !state.accounts.contains_key(&a) {
                        state.upsert("accounts", &a, None);
                    }
                }
            }
            "track" => state.events.push(message.clone()),
            "unlink" => {
                let account = text(m, "accountId").unwrap().to_string();
                if let Some(user) = state.users.get_mut(text(m, "userId").unwrap()) {
                    user.account_ids.retain(|a| *a != account);
                }
            }
            _ => unreachable!("validated"),
        }
    } else {
        state.counters.duplicates += 1;
    }
    if record {
        state.received.push(Received { kind, message_id, body: message, applied: fresh });
    }
}

#[cfg(test)]
mod tests {
    use super::validate;
    use serde_json::json;

    #[test]
    fn each_type_needs_its_fields() {
        assert!(validate(&json!({"type": "account", "accountId": "a", "messageId": "m"})).is_ok());
        assert!(validate(&json!({"type": "organization", "timestamp": "2026-01-01T00:00:00Z", "organizationId": "o"})).is_ok());
        assert_eq!(
            validate(&json!({"type": "track", "event": "E", "userId": "u", "messageId": "m"})).unwrap_err(),
            "track message without a \"properties\" object"
        );
        assert_eq!(validate(&json!({"type": "unlink", "userId": "u", "messageId": "m"})).unwrap_err(), "unlink message without \"accountId\"");
        assert_eq!(validate(&json!({"type": "page", "messageId": "m"})).unwrap_err(), "unknown message type \"page\"");
        assert_eq!(validate(&json!({"type": "account", "accountId": "a", "messageId": "m", "traits": [1]})).unwrap_err(), "traits must be an object");
        assert_eq!(
            validate(&json!({"type": "account", "accountId": "a", "timestamp": "yesterday"})).unwrap_err(),
            "timestamp \"yesterday\" is not an ISO-8601 date-time"
        );
    }
}
