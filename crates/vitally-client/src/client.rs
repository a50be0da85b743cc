//! The HTTP client: Analytics batches (split when refused as a whole), REST lookups
//! and updates, each request under a per-request timeout, a bound on requests in
//! flight, and the pacing of its key.

use crate::auth;
use crate::message::{rest_collection, Object};
use crate::outcome::{classify, rate_limit_wait, untrusted_body, worth_splitting, Call, Outcome, RateLimitHeaders};
use crate::ratelimit::RateLimiter;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Vitally takes at most 100 messages in one `/batch`.
pub const MAX_BATCH: usize = 100;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    pub rest_requests_per_minute: u32,
    pub batch_size: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig { request_timeout: Duration::from_secs(30), max_concurrency: 4, rest_requests_per_minute: 900, batch_size: MAX_BATCH }
    }
}

/// One API of one destination: where to send and how to sign.
#[derive(Clone)]
pub struct Endpoint {
    base_url: String,
    authorization: String,
    /// One of Vitally's own hosts: only then is an error body shown as it came.
    vitally_host: bool,
}

impl std::fmt::Debug for Endpoint {
    // The authorization header is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

impl Endpoint {
    pub fn analytics(base_url: &str, key: &str) -> Endpoint {
        Endpoint::new(base_url, auth::analytics_header(key))
    }

    pub fn rest(base_url: &str, token: &str) -> Endpoint {
        Endpoint::new(base_url, auth::rest_header(token))
    }

    fn new(base_url: &str, authorization: String) -> Endpoint {
        let base_url = base_url.trim_end_matches('/').to_string();
        Endpoint { vitally_host: crate::destination::is_vitally_url(&base_url), base_url, authorization }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn host(&self) -> String {
        url::Url::parse(&self.base_url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default()
    }

    /// What limits are kept per: the host's API and the key (never shown).
    fn slot_key(&self) -> String {
        format!("{} {}", self.base_url, self.authorization)
    }
}

/// An answer as far as the client needs it.
struct Answer {
    outcome: Outcome,
    /// None when no answer came.
    status: Option<u16>,
    body: String,
}

/// What `check` learned of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCheck {
    pub ok: bool,
    pub http_status: Option<u16>,
    pub detail: String,
}

/// What a REST lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Found(Value),
    NotFound,
    Failed(Outcome),
}

pub struct VitallyClient {
    http: reqwest::Client,
    config: ClientConfig,
    /// Requests in flight, bounded per destination API (its URL and key), so that a
    /// slow destination never takes the slots of another.
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// One limiter per key (and host), shared by every sync and destination using it.
    limiters: Mutex<HashMap<String, Arc<RateLimiter>>>,
}

impl VitallyClient {
    pub fn new(config: ClientConfig) -> VitallyClient {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("vitally_sync/", env!("CARGO_PKG_VERSION")))
            // Never follow a redirect: it would carry the key to a host nobody allowed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the TLS backend initializes");
        VitallyClient { http, in_flight: Mutex::new(HashMap::new()), config, limiters: Mutex::new(HashMap::new()) }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn limiter(&self, endpoint: &Endpoint, rest: bool) -> Arc<RateLimiter> {
        let pace = rest.then_some(self.config.rest_requests_per_minute);
        self.limiters.lock().unwrap().entry(endpoint.slot_key()).or_insert_with(|| Arc::new(RateLimiter::new(pace))).clone()
    }

    /// Sends one request under the key's pacing and the bound on requests in flight.
    async fn request<B: serde::Serialize + ?Sized + Sync>(
        &self,
        endpoint: &Endpoint,
        call: Call,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Answer {
        let limiter = self.limiter(endpoint, call != Call::Analytics);
        let slots = self
            .in_flight
            .lock()
            .unwrap()
            .entry(endpoint.slot_key())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.max_concurrency.max(1))))
            .clone();
        let _slot = slots.acquire_owned().await.expect("never closed");
        let permit = limiter.acquire().await;
        let mut request =
            self.http.request(method, format!("{}{}", endpoint.base_url, path)).header(reqwest::header::AUTHORIZATION, &endpoint.authorization);
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                limiter.answered(permit, None, &RateLimitHeaders { limit: None, remaining: None, reset: None }, None);
                return Answer { outcome: transport_error(&e), status: None, body: String::new() };
            }
        };
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let limits = RateLimitHeaders::parse(
            header("ratelimit-limit").as_deref(),
            header("ratelimit-remaining").as_deref(),
            header("ratelimit-reset").as_deref(),
        );
        let wait = (status == 429).then(|| rate_limit_wait(&limits));
        limiter.answered(permit, Some(status), &limits, wait);
        match response.text().await {
            Ok(body) => {
                let shown =
                    if endpoint.vitally_host || (200..300).contains(&status) { body.clone() } else { untrusted_body(&body, &endpoint.host()) };
                Answer { outcome: classify(call, status, &limits, &shown), status: Some(status), body }
            }
            // The connection died after the status line: nothing is known to have arrived.
            Err(e) => Answer { outcome: transport_error(&e), status: Some(status), body: String::new() },
        }
    }

    /// Sends Analytics messages in `/batch` requests of at most `batch_size`, each of
    /// one message type, and returns one outcome per message, in order. A batch
    /// refused as a whole with a 4xx is split in halves to isolate the bad messages, so
    /// the good ones go through. When both halves are refused alike, one message is
    /// sent alone: refused alike too, the whole type is (Vitally answers 400 to every
    /// message of a blocked type) and splitting stops; otherwise it goes on.
    pub async fn send_analytics(&self, endpoint: &Endpoint, messages: &[Value]) -> Vec<Outcome> {
        let size = self.config.batch_size.clamp(1, MAX_BATCH);
        // Batches of one type, so that a blocked type never takes others down with it.
        let mut by_type: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let t = m.get("type").and_then(Value::as_str).unwrap_or_default();
            match by_type.iter_mut().find(|(k, _)| k == t) {
                Some((_, ids)) => ids.push(i),
                None => by_type.push((t.to_string(), vec![i])),
            }
        }
        let batches: Vec<Vec<usize>> = by_type.iter().flat_map(|(_, ids)| ids.chunks(size).map(<[usize]>::to_vec)).collect();
        // Batches borrow the messages: a job's payloads are not copied again to be sent.
        let sent = batches.iter().map(|ids| {
            let chunk: Vec<&Value> = ids.iter().map(|&i| &messages[i]).collect();
            async move { (ids, self.send_batch(endpoint, chunk).await) }
        });
        // Every message gets its batch's answer; none is taken as delivered by default.
        let mut outcomes = vec![Outcome::Retry { status: None, error: "not sent".into() }; messages.len()];
        for (ids, answers) in futures_util::future::join_all(sent).await {
            for (&i, o) in ids.iter().zip(answers) {
                outcomes[i] = o;
            }
        }
        outcomes
    }

    async fn send_batch(&self, endpoint: &Endpoint, messages: Vec<&Value>) -> Vec<Outcome> {
        let outcome = self.post_batch(endpoint, &messages).await;
        self.settle(endpoint, messages, outcome).await
    }

    /// Resends a refused batch in halves, and halves of the halves refused, until the
    /// bad messages are alone or both halves are refused with the same error.
    fn split<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        mut messages: Vec<&'a Value>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Outcome>> + Send + 'a>> {
        Box::pin(async move {
            let right = messages.split_off(messages.len() / 2);
            let left = messages;
            let (a, b) = tokio::join!(self.post_batch(endpoint, &left), self.post_batch(endpoint, &right));
            // Alike halves may be two bad messages, or a generic error text: the first
            // and the last message alone tell. (A 413 says only that the halves are
            // still too large.)
            if a == b && matches!(a, Outcome::Rejected { status: 400 | 422, .. }) && left.len() > 1 && right.len() > 1 {
                let (first, last) = tokio::join!(self.post_batch(endpoint, &left[..1]), self.post_batch(endpoint, &right[right.len() - 1..]));
                if first == a && last == a {
                    return vec![a; left.len() + right.len()];
                }
                let (middle_left, middle_right) = (left[1..].to_vec(), right[..right.len() - 1].to_vec());
                let (l, r) = tokio::join!(self.settle(endpoint, middle_left, a), self.settle(endpoint, middle_right, b));
                let mut all = vec![first];
                all.extend(l);
                all.extend(r);
                all.push(last);
                return all;
            }
            let (mut a, b) = tokio::join!(self.settle(endpoint, left, a), self.settle(endpoint, right, b));
            a.extend(b);
            a
        })
    }

    /// The outcomes of messages sent together and answered `outcome`: that answer for
    /// each, unless it is worth splitting them.
    async fn settle(&self, endpoint: &Endpoint, messages: Vec<&Value>, outcome: Outcome) -> Vec<Outcome> {
        if messages.len() > 1 && worth_splitting(&outcome) {
            self.split(endpoint, messages).await
        } else {
            vec![outcome; messages.len()]
        }
    }

    async fn post_batch(&self, endpoint: &Endpoint, messages: &[&Value]) -> Outcome {
        // Serialized from the slice: a JSON array, without copying every message first.
        self.request(endpoint, Call::Analytics, reqwest::Method::POST, "/batch", Some(messages)).await.outcome
    }

    /// Finds a record by your external id: `GET /<collection>/<id>`, and for users a
    /// search by `externalId` when that finds nothing (whether the REST API takes an
    /// external id in the path is unverified).
    pub async fn find(&self, endpoint: &Endpoint, kind: Object, external_id: &str) -> Lookup {
        let collection = rest_collection(kind).expect("accounts, users, organizations");
        let path = format!("/{collection}/{}", encode(external_id));
        let answer = self.request(endpoint, Call::RestLookup, reqwest::Method::GET, &path, None::<&Value>).await;
        match answer.outcome {
            Outcome::Delivered => {
                let found = match record_with_id(&answer.body, &path) {
                    Ok(found) => found,
                    Err(failed) => return failed,
                };
                if found.get("externalId").and_then(Value::as_str) == Some(external_id) || kind != Object::User {
                    return Lookup::Found(found);
                }
            }
            Outcome::NotFound { .. } => {}
            other => return Lookup::Failed(other),
        }
        if kind != Object::User {
            return Lookup::NotFound;
        }
        let path = format!("/users/search?externalId={}", encode(external_id));
        let answer = self.request(endpoint, Call::RestLookup, reqwest::Method::GET, &path, None::<&Value>).await;
        match answer.outcome {
            Outcome::Delivered => {
                let page = serde_json::from_str::<Value>(&answer.body).unwrap_or(Value::Null);
                match page.get("results").and_then(Value::as_array) {
                    // Only the user with this external id: a search that matches loosely
                    // must not send the write to someone else.
                    Some(results) if page.get("error").is_none() => {
                        match results.iter().find(|r| r.get("externalId").and_then(Value::as_str) == Some(external_id)) {
                            None => Lookup::NotFound,
                            Some(found) => record_with_id(&found.to_string(), &path).map_or_else(|failed| failed, Lookup::Found),
                        }
                    }
                    _ => Lookup::Failed(Outcome::Rejected {
                        status: 200,
                        error: format!("Vitally answered {path} with no \"results\" list: nothing was written"),
                    }),
                }
            }
            Outcome::NotFound { .. } => Lookup::NotFound,
            other => Lookup::Failed(other),
        }
    }

    /// Updates a record by Vitally's id: traits merge, a trait sent as `null` is deleted.
    pub async fn update(&self, endpoint: &Endpoint, kind: Object, vitally_id: &str, body: &Value) -> Outcome {
        let collection = rest_collection(kind).expect("accounts, users, organizations");
        let path = format!("/{collection}/{}", encode(vitally_id));
        self.request(endpoint, Call::RestWrite, reqwest::Method::PUT, &path, Some(body)).await.outcome
    }

    /// Creates or updates (by `externalId`) an NPS response.
    pub async fn create_nps_response(&self, endpoint: &Endpoint, body: &Value) -> Outcome {
        self.request(endpoint, Call::RestWrite, reqwest::Method::POST, "/npsResponses", Some(body)).await.outcome
    }

    /// One authenticated request that changes nothing, to check a key and a URL: a
    /// REST list of one account, or an empty Analytics batch. How Vitally answers an
    /// empty batch is undocumented, so only 401/403 say the key is wrong; any other
    /// answer from the API (2xx, or a 400/422 with a JSON error refusing the empty
    /// batch) says the key was accepted. A 404 says the URL is wrong.
    pub async fn check(&self, endpoint: &Endpoint, rest: bool) -> KeyCheck {
        let answer = if rest {
            self.request(endpoint, Call::RestLookup, reqwest::Method::GET, "/accounts?limit=1", None::<&Value>).await
        } else {
            self.request(endpoint, Call::Analytics, reqwest::Method::POST, "/batch", Some(&Value::Array(vec![]))).await
        };
        let url = endpoint.base_url();
        let (ok, detail) = match (&answer.outcome, answer.status) {
            (Outcome::Delivered, _) => (true, format!("{url} accepted the key")),
            // An API's JSON error, not some other service's page at that URL.
            (Outcome::Rejected { status: 400 | 422, .. }, Some(s)) if !rest && is_json_error(&answer.body) => {
                (true, format!("{url} accepted the key (it answered {s} to the empty batch sent to check it, which is not an error of the key)"))
            }
            (Outcome::Rejected { status: 401 | 403, error }, _) => (false, format!("{url} refused the key: {error}")),
            (Outcome::NotFound { error } | Outcome::Rejected { status: 404, error }, _) => {
                let ends = if rest { "/resources" } else { "/analytics/v1" };
                (false, format!("{url} answered 404 ({error}): no {} API there; its URL ends in {ends}", if rest { "REST" } else { "Analytics" }))
            }
            (Outcome::RateLimited { wait }, _) => (false, format!("{url} is rate limiting this key: try again in {} s", wait.as_secs())),
            (Outcome::Retry { error, .. }, _) => (false, format!("{url}: {error} (the key could not be checked; try again)")),
            (Outcome::Rejected { error, .. }, _) => (false, format!("{url}: {error}")),
        };
        KeyCheck { ok, http_status: answer.status, detail }
    }
}

/// Whether a body is an API's JSON error (`{"error": ...}` or `{"message": ...}`).
fn is_json_error(body: &str) -> bool {
    serde_json::from_str::<Value>(body).is_ok_and(|v| v.get("error").is_some() || v.get("message").is_some())
}

/// The record in a lookup's 200 answer, if it is one: a JSON object with a string `id`
/// and no `error`. Anything else fails the record, so no write goes to an empty id.
fn record_with_id(body: &str, path: &str) -> Result<Value, Lookup> {
    let failed =
        |what: &str| Lookup::Failed(Outcome::Rejected { status: 200, error: format!("Vitally answered {path} {what}: nothing was written") });
    match serde_json::from_str::<Value>(body) {
        Ok(v) if v.get("error").is_some() => Err(failed(&format!("with an error: {}", crate::outcome::error_text(body)))),
        Ok(v) if v.get("id").and_then(Value::as_str).is_some_and(|id| !id.is_empty()) => Ok(v),
        Ok(_) => Err(failed("without a record id")),
        Err(_) => Err(failed("with a body that is not JSON")),
    }
}

fn transport_error(e: &reqwest::Error) -> Outcome {
    let what = if e.is_timeout() {
        "request timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    // The error's text names the URL, never the headers: no key can be in it.
    Outcome::Retry { status: None, error: format!("{what}: {}", error_chain(e)) }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect::<String>().replace('+', "%20")
}
