//! Analytics messages built from a queued record.
//!
//! A record is the JSON the planner made from one row, in Vitally's field names:
//! `{"accountId": "a1", "organizationId": "o1", "traits": {...}}` for an account,
//! `{"userId": "u1", "accountIds": ["a1", "a2"], "traits": {...}}` for a user,
//! `{"event": "Login", "userId": "u1", "properties": {...}, "timestamp": "..."}` for an
//! event. Each record becomes one message, except a user in several accounts: one
//! message per account, as Vitally takes one `accountId` per user message.

use serde_json::{json, Map, Value};
use thiserror::Error;
use uuid::Uuid;

pub use vitally_model::Object;

/// The REST resource collection of an object, for those that have one.
pub fn rest_collection(object: Object) -> Option<&'static str> {
    match object {
        Object::User => Some("users"),
        Object::Account => Some("accounts"),
        Object::Organization => Some("organizations"),
        Object::Event | Object::NpsResponse => None,
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("the record is not a JSON object")]
    NotAnObject,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{0} must be a string or a number")]
    NotAnId(&'static str),
    #[error("a user needs at least one account: accountIds is empty and there is no organizationId")]
    UserWithoutAccount,
    #[error("an event needs a userId, accountId or organizationId to say who did it")]
    EventWithoutActor,
    #[error("NPS responses go through the REST API, not Analytics")]
    NotAnalytics,
}

/// An id as Vitally wants it: a string. Numbers are accepted and written as text.
fn id(record: &Map<String, Value>, field: &'static str) -> Result<Option<String>, PayloadError> {
    match record.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(PayloadError::NotAnId(field)),
    }
}

fn required(record: &Map<String, Value>, field: &'static str) -> Result<String, PayloadError> {
    id(record, field)?.ok_or(PayloadError::Missing(field))
}

/// The account ids of a user record: an array, or one scalar id.
pub fn account_ids(record: &Map<String, Value>) -> Result<Vec<String>, PayloadError> {
    let one = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Ok(Some(s.clone())),
        Value::String(_) | Value::Null => Ok(None),
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(PayloadError::NotAnId("accountIds")),
    };
    let mut ids = Vec::new();
    match record.get("accountIds").or_else(|| record.get("accountId")) {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                if let Some(i) = one(item)? {
                    if !ids.contains(&i) {
                        ids.push(i);
                    }
                }
            }
        }
        Some(v) => ids.extend(one(v)?),
    }
    Ok(ids)
}

/// A distinct, stable messageId for one of several messages made from one record.
pub fn derived_message_id(message_id: &str, part: &str) -> String {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{message_id}/{part}").as_bytes()).to_string()
}

fn traits(record: &Map<String, Value>, field: &str) -> Value {
    match record.get(field) {
        Some(Value::Object(t)) => Value::Object(t.clone()),
        _ => Value::Object(Map::new()),
    }
}

/// The Analytics messages (with `type`, `messageId`, `timestamp`) for one record.
pub fn analytics_messages(kind: Object, record: &Value, message_id: &str, timestamp: &str) -> Result<Vec<Value>, PayloadError> {
    let r = record.as_object().ok_or(PayloadError::NotAnObject)?;
    let mut messages = Vec::new();
    match kind {
        Object::Account => {
            let mut m = json!({"type": "account", "accountId": required(r, "accountId")?, "traits": traits(r, "traits")});
            if let Some(org) = id(r, "organizationId")? {
                m["organizationId"] = Value::String(org);
            }
            messages.push(m);
        }
        Object::Organization => {
            messages.push(json!({"type": "organization", "organizationId": required(r, "organizationId")?, "traits": traits(r, "traits")}));
        }
        Object::User => {
            let user = required(r, "userId")?;
            let accounts = account_ids(r)?;
            let org = id(r, "organizationId")?;
            if accounts.is_empty() && org.is_none() {
                return Err(PayloadError::UserWithoutAccount);
            }
            let base = |account: Option<&str>| {
                let mut m = json!({"type": "user", "userId": user, "traits": traits(r, "traits")});
                if let Some(a) = account {
                    m["accountId"] = Value::String(a.to_string());
                }
                if let Some(o) = &org {
                    m["organizationId"] = Value::String(o.clone());
                }
                m
            };
            if accounts.is_empty() {
                messages.push(base(None));
            }
            for account in &accounts {
                messages.push(base(Some(account)));
            }
        }
        Object::Event => {
            let mut m = json!({"type": "track", "event": required(r, "event")?, "properties": traits(r, "properties")});
            let mut actor = false;
            for field in ["userId", "accountId", "organizationId"] {
                if let Some(v) = id(r, field)? {
                    m[field] = Value::String(v);
                    actor = true;
                }
            }
            if !actor {
                return Err(PayloadError::EventWithoutActor);
            }
            messages.push(m);
        }
        Object::NpsResponse => return Err(PayloadError::NotAnalytics),
    }
    // An event keeps the time it happened, when the row says so.
    let event_time = (kind == Object::Event).then(|| r.get("timestamp").and_then(Value::as_str)).flatten().filter(|t| !t.is_empty());
    let several = messages.len() > 1;
    for m in &mut messages {
        let mid = match (several, m.get("accountId").and_then(Value::as_str)) {
            (true, Some(account)) => derived_message_id(message_id, account),
            _ => message_id.to_string(),
        };
        m["messageId"] = Value::String(mid);
        m["timestamp"] = Value::String(event_time.unwrap_or(timestamp).to_string());
    }
    // Accounts a user left since the last delivery (unlink_removed_accounts).
    if let (Object::User, Some(Value::Array(gone))) = (kind, r.get("unlinkAccountIds")) {
        let user = required(r, "userId")?;
        for account in gone.iter().filter_map(Value::as_str) {
            messages.push(unlink_message(&user, account, message_id, timestamp));
        }
    }
    Ok(messages)
}

/// The message that removes a user from an account.
pub fn unlink_message(user_id: &str, account_id: &str, message_id: &str, timestamp: &str) -> Value {
    json!({
        "type": "unlink",
        "userId": user_id,
        "accountId": account_id,
        "messageId": derived_message_id(message_id, &format!("unlink/{account_id}")),
        "timestamp": timestamp,
    })
}

/// The REST body of an NPS response, once the user's Vitally id is known.
pub fn nps_body(record: &Value, vitally_user_id: &str, external_id: &str) -> Value {
    let mut body = json!({"userId": vitally_user_id, "externalId": external_id});
    if let Some(r) = record.as_object() {
        for field in ["score", "respondedAt", "feedback"] {
            if let Some(v) = r.get(field).filter(|v| !v.is_null()) {
                body[field] = v.clone();
            }
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-06-01T10:00:00Z";

    #[test]
    fn account_message_carries_organization_and_traits() {
        let record = json!({"accountId": "acct_42", "organizationId": 7, "traits": {"name": "Acme"}});
        let m = analytics_messages(Object::Account, &record, "mid-1", T).unwrap();
        assert_eq!(
            m,
            vec![
                json!({"type": "account", "accountId": "acct_42", "organizationId": "7", "traits": {"name": "Acme"}, "messageId": "mid-1", "timestamp": T})
            ]
        );
    }

    #[test]
    fn user_in_two_accounts_is_two_messages_with_distinct_stable_ids() {
        let record = json!({"userId": "u1", "accountIds": ["a", "b", "a"], "traits": {}});
        let m = analytics_messages(Object::User, &record, "mid", T).unwrap();
        assert_eq!(m.len(), 2, "duplicates in the list are sent once");
        assert_eq!(m[0]["accountId"], "a");
        assert_eq!(m[1]["accountId"], "b");
        assert_ne!(m[0]["messageId"], m[1]["messageId"]);
        let again = analytics_messages(Object::User, &record, "mid", T).unwrap();
        assert_eq!(m[0]["messageId"], again[0]["messageId"], "a retry sends the same ids");
    }

    #[test]
    fn accounts_a_user_left_become_unlink_messages() {
        let record = json!({"userId": "u", "accountIds": ["b"], "unlinkAccountIds": ["a"]});
        let m = analytics_messages(Object::User, &record, "mid", T).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1]["type"], "unlink");
        assert_eq!(m[1]["accountId"], "a");
        assert_ne!(m[1]["messageId"], m[0]["messageId"]);
    }

    #[test]
    fn user_with_one_scalar_account() {
        let m = analytics_messages(Object::User, &json!({"userId": "u", "accountIds": 12}), "mid", T).unwrap();
        assert_eq!(m[0]["accountId"], "12");
        assert_eq!(m[0]["messageId"], "mid");
    }

    #[test]
    fn user_without_account_is_refused() {
        let err = analytics_messages(Object::User, &json!({"userId": "u", "accountIds": []}), "m", T).unwrap_err();
        assert_eq!(err, PayloadError::UserWithoutAccount);
    }

    #[test]
    fn event_keeps_its_own_time_and_needs_an_actor() {
        let record = json!({"event": "Login", "userId": "u", "timestamp": "2026-01-01T00:00:00Z"});
        let m = analytics_messages(Object::Event, &record, "evt-1", T).unwrap();
        assert_eq!(m[0]["timestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(m[0]["properties"], json!({}));
        let err = analytics_messages(Object::Event, &json!({"event": "Login"}), "e", T).unwrap_err();
        assert_eq!(err, PayloadError::EventWithoutActor);
    }

    #[test]
    fn nps_body_uses_vitallys_user_id() {
        let b = nps_body(&json!({"score": 9, "feedback": null, "userId": "mine"}), "v-123", "r-1");
        assert_eq!(b, json!({"userId": "v-123", "externalId": "r-1", "score": 9}));
    }
}
