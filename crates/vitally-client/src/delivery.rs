//! Delivering queued records: a job is the records of one destination API claimed
//! together; each record comes back with one outcome.
//!
//! Analytics records become messages (a user in several accounts: one per account),
//! sent in batches; a record's outcome is the worst of its messages' (a retry then
//! resends all of them under the same messageIds, and Vitally drops the repeats).
//! Update-only records are looked up by your id and updated by Vitally's; NPS
//! responses find their user first. Lookups are cached for the job.

use crate::client::{Endpoint, Lookup, VitallyClient};
use crate::message::{analytics_messages, nps_body, rest_collection, Object};
use crate::outcome::Outcome;
use serde_json::Value;
use std::collections::HashMap;
use vitally_model::Route;

/// One queued record, as the worker claimed it.
#[derive(Debug, Clone)]
pub struct QueuedRecord {
    pub id: i64,
    pub object: Object,
    /// Which API and call, from the sync's pair (`vitally_model::check_pair`).
    pub route: Route,
    pub sync_key: String,
    pub payload: Value,
    pub message_id: String,
    /// When it was queued, ISO-8601 UTC: the messages' timestamp.
    pub queued_at: String,
}

/// Sends every record of a job to `endpoint`; returns `(record id, outcome)` for each.
pub async fn deliver(client: &VitallyClient, endpoint: &Endpoint, records: Vec<QueuedRecord>) -> Vec<(i64, Outcome)> {
    let (analytics, rest): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| !r.route.is_rest());
    let mut outcomes = deliver_analytics(client, endpoint, analytics).await;
    outcomes.extend(deliver_rest(client, endpoint, rest).await);
    outcomes
}

/// How bad an outcome is, to pick the one that stands for a record of several messages.
fn severity(o: &Outcome) -> u8 {
    match o {
        Outcome::Delivered => 0,
        Outcome::NotFound { .. } => 1,
        Outcome::RateLimited { .. } => 2,
        Outcome::Retry { .. } => 3,
        Outcome::Rejected { .. } => 4,
    }
}

async fn deliver_analytics(client: &VitallyClient, endpoint: &Endpoint, records: Vec<QueuedRecord>) -> Vec<(i64, Outcome)> {
    let mut results: Vec<(i64, Outcome)> = Vec::new();
    let mut messages = Vec::new();
    let mut owner = Vec::new(); // message index -> index in `sent`
    let mut sent: Vec<i64> = Vec::new();
    for r in &records {
        match analytics_messages(r.object, &r.payload, &r.message_id, &r.queued_at) {
            Ok(ms) => {
                sent.push(r.id);
                for m in ms {
                    owner.push(sent.len() - 1);
                    messages.push(m);
                }
            }
            Err(e) => results.push((r.id, Outcome::Rejected { status: 0, error: format!("not sent: {e}") })),
        }
    }
    let answers = client.send_analytics(endpoint, &messages).await;
    let mut worst: Vec<Outcome> = vec![Outcome::Delivered; sent.len()];
    for (i, answer) in answers.into_iter().enumerate() {
        let slot = &mut worst[owner[i]];
        if severity(&answer) > severity(slot) {
            *slot = answer;
        }
    }
    results.extend(sent.into_iter().zip(worst));
    results
}

async fn deliver_rest(client: &VitallyClient, endpoint: &Endpoint, records: Vec<QueuedRecord>) -> Vec<(i64, Outcome)> {
    // Lookups of one job are cached: many NPS responses of one user, one lookup.
    let cache: tokio::sync::Mutex<HashMap<(String, String), Lookup>> = tokio::sync::Mutex::new(HashMap::new());
    let find = |kind: Object, id: String| {
        let cache = &cache;
        async move {
            let key = (rest_collection(kind).unwrap_or("").to_string(), id.clone());
            if let Some(hit) = cache.lock().await.get(&key) {
                return hit.clone();
            }
            let found = client.find(endpoint, kind, &id).await;
            if !matches!(found, Lookup::Failed(_)) {
                cache.lock().await.insert(key, found.clone());
            }
            found
        }
    };
    let work = records.into_iter().map(|r| {
        let find = &find;
        async move {
            let outcome = match r.route {
                Route::RestUpdate => match find(r.object, r.sync_key.clone()).await {
                    // `find` returns Found only with a string id.
                    Lookup::Found(existing) => {
                        let vitally_id = existing.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                        client.update(endpoint, r.object, &vitally_id, &update_body(r.object, &r.payload)).await
                    }
                    Lookup::NotFound => Outcome::NotFound {
                        error: format!("no {} with id \"{}\" in Vitally: update only does not create it", r.object.display_name(), r.sync_key),
                    },
                    Lookup::Failed(o) => o,
                },
                Route::RestNps => {
                    let user = r.payload.get("userId").map(text).unwrap_or_default();
                    match find(Object::User, user.clone()).await {
                        Lookup::Found(found) => {
                            let vitally_id = found.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                            client.create_nps_response(endpoint, &nps_body(&r.payload, &vitally_id, &r.sync_key)).await
                        }
                        Lookup::NotFound => Outcome::NotFound { error: format!("no user with id \"{user}\" in Vitally: the response is not sent") },
                        Lookup::Failed(o) => o,
                    }
                }
                Route::AnalyticsUpsert | Route::AnalyticsAppend => unreachable!("partitioned out"),
            };
            (r.id, outcome)
        }
    });
    futures_util::future::join_all(work).await
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The REST update body of a record: its traits (merged by Vitally; `null` deletes),
/// except the fields a REST record has at top level, which go there: `name`, and for
/// users `email` and `avatar` (in the REST API a `traits.email` is just a trait).
/// Whether an account's `name` is editable over REST is disputed by Vitally's own
/// docs; it is sent, as production connectors do: leave `name` out of the query to
/// keep Vitally's.
pub fn update_body(kind: Object, payload: &Value) -> Value {
    let mut traits = payload.get("traits").and_then(Value::as_object).cloned().unwrap_or_default();
    let own: &[&str] = if kind == Object::User { &["name", "email", "avatar"] } else { &["name"] };
    let mut body = serde_json::Map::new();
    for field in own {
        if let Some(v) = traits.remove(*field) {
            body.insert(field.to_string(), v);
        }
    }
    body.insert("traits".into(), Value::Object(traits));
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rest_users_own_fields_go_top_level_not_in_traits() {
        let payload = json!({"userId": "u1", "traits": {"email": "jane@acme.com", "avatar": "https://x/a.png", "name": "Jane", "plan": "pro"}});
        assert_eq!(
            update_body(Object::User, &payload),
            json!({"email": "jane@acme.com", "avatar": "https://x/a.png", "name": "Jane", "traits": {"plan": "pro"}})
        );
        let account = json!({"accountId": "a1", "traits": {"name": "Acme", "email": "billing@acme.com"}});
        assert_eq!(update_body(Object::Account, &account), json!({"name": "Acme", "traits": {"email": "billing@acme.com"}}));
        assert_eq!(update_body(Object::Account, &json!({"accountId": "a1"})), json!({"traits": {}}));
    }
}
