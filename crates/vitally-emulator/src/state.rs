//! What the emulated workspace holds: objects merged by external id, events, NPS
//! responses, what was received, and counters.

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One account, user or organization, as Vitally's REST API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub id: String,
    pub external_id: String,
    pub name: Option<String>,
    /// Users only: top-level on a REST user (set by `traits.email` / `traits.avatar`
    /// in the Analytics API, by `email` / `avatar` in a REST update).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    pub traits: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// Users only: the external ids of their accounts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub account_ids: Vec<String>,
    /// How many messages or updates changed it.
    pub updates: u64,
}

/// One thing the emulator received: an Analytics message or a REST write.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// "account", "user", "organization", "track", "unlink", or "PUT accounts", "POST npsResponses", ...
    pub kind: String,
    pub message_id: Option<String>,
    pub body: Value,
    /// False when it was dropped as a duplicate `messageId`.
    pub applied: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Counters {
    /// API requests (not the inspection API).
    pub requests: u64,
    pub analytics_requests: u64,
    pub rest_requests: u64,
    pub messages: u64,
    pub duplicates: u64,
    pub responses_400: u64,
    pub responses_401: u64,
    pub responses_404: u64,
    pub responses_429: u64,
    pub responses_5xx: u64,
    pub dropped: u64,
    /// 429s answered by the REST rate limit itself (not by an injected burst).
    pub rate_limited: u64,
    /// API requests being served now, and the most at once so far.
    pub in_flight: u64,
    pub max_in_flight: u64,
}

#[derive(Default)]
pub struct State {
    pub accounts: BTreeMap<String, Object>,
    pub users: BTreeMap<String, Object>,
    pub organizations: BTreeMap<String, Object>,
    pub events: Vec<Value>,
    pub nps: HashMap<String, Value>,
    pub message_ids: HashSet<String>,
    pub received: Vec<Received>,
    pub counters: Counters,
    /// REST request times per Authorization header, for the sliding window.
    pub rest_windows: HashMap<String, std::collections::VecDeque<std::time::Instant>>,
}

fn new_object(external_id: &str) -> Object {
    Object {
        id: uuid::Uuid::new_v4().to_string(),
        external_id: external_id.to_string(),
        name: None,
        email: None,
        avatar: None,
        traits: Map::new(),
        organization_id: None,
        account_ids: Vec::new(),
        updates: 0,
    }
}

impl State {
    pub fn store(&mut self, kind: &str) -> Option<&mut BTreeMap<String, Object>> {
        match kind {
            "accounts" | "account" => Some(&mut self.accounts),
            "users" | "user" => Some(&mut self.users),
            "organizations" | "organization" => Some(&mut self.organizations),
            _ => None,
        }
    }

    pub fn object(&self, kind: &str, external_id: &str) -> Option<&Object> {
        match kind {
            "accounts" | "account" => self.accounts.get(external_id),
            "users" | "user" => self.users.get(external_id),
            "organizations" | "organization" => self.organizations.get(external_id),
            _ => None,
        }
    }

    pub fn count(&self, kind: &str) -> usize {
        match kind {
            "accounts" => self.accounts.len(),
            "users" => self.users.len(),
            "organizations" => self.organizations.len(),
            "events" => self.events.len(),
            "npsResponses" => self.nps.len(),
            _ => 0,
        }
    }

    pub fn seed(&mut self, kind: &str, external_id: &str, traits: Value) -> Object {
        let store = self.store(kind).expect("kind is accounts, users or organizations");
        let object = store.entry(external_id.to_string()).or_insert_with(|| new_object(external_id));
        if let Value::Object(t) = traits {
            if kind == "users" {
                object.email = t.get("email").and_then(Value::as_str).map(str::to_string).or(object.email.take());
            }
            merge_traits(&mut object.traits, &t);
        }
        object.clone()
    }

    /// Creates the object if needed and merges traits into it, as an Analytics upsert does.
    pub fn upsert(&mut self, kind: &str, external_id: &str, traits: Option<&Map<String, Value>>) -> &mut Object {
        let store = self.store(kind).expect("known kind");
        let object = store.entry(external_id.to_string()).or_insert_with(|| new_object(external_id));
        if let Some(t) = traits {
            merge_traits(&mut object.traits, t);
            if let Some(Value::String(name)) = t.get("name") {
                object.name = Some(name.clone());
            }
        }
        object.updates += 1;
        object
    }

    /// Finds an object by Vitally's id or by external id (both are accepted, as Vitally's docs suggest).
    pub fn find_mut(&mut self, kind: &str, id: &str) -> Option<&mut Object> {
        let store = self.store(kind)?;
        if store.contains_key(id) {
            return store.get_mut(id);
        }
        store.values_mut().find(|o| o.id == id)
    }
}

/// Vitally merges traits: keys sent replace, keys omitted stay, `null` deletes.
pub fn merge_traits(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        if v.is_null() {
            into.remove(k);
        } else {
            into.insert(k.clone(), v.clone());
        }
    }
}
