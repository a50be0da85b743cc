//! The HTTP client: Analytics batches (split when refused as a whole), REST lookups
//! and updates, each request under a per-request timeout, a bound on requests in
//! flight, and the pacing of its key.

use crate::auth;
use crate::message::ObjectKind;
use crate::outcome::{classify, rate_limit_wait, untrusted_body, worth_splitting, Outcome, RateLimitHeaders};
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
    body: String,
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
        self.limiters
            .lock()
            .unwrap()
            .entry(endpoint.slot_key())
            .or_insert_with(|| Arc::new(RateLimiter::new(pace)))
            .clone()
    }

    /// Sends one request under the key's pacing and the bound on requests in flight.
    async fn request(&self, endpoint: &Endpoint, rest: bool, method: reqwest::Method, path: &str, body: Option<&Value>) -> Answer {
        let limiter = self.limiter(endpoint, rest);
        let slots = self
            .in_flight
            .lock()
            .unwrap()
            .entry(endpoint.slot_key())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.max_concurrency.max(1))))
            .clone();
        let _slot = slots.acquire_owned().await.expect("never closed");
        let permit = limiter.acquire().await;
        let mut request = self
            .http
            .request(method, format!("{}{}", endpoint.base_url, path))
            .header(reqwest::header::AUTHORIZATION, &endpoint.authorization);
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                limiter.answered(permit, None, &RateLimitHeaders { limit: None, remaining: None, reset: None }, None);
                return Answer { outcome: transport_error(&e), body: String::new() };
            }
        };
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let limits = RateLimitHeaders {
            limit: header("ratelimit-limit").and_then(|v| v.parse().ok()),
            remaining: header("ratelimit-remaining").and_then(|v| v.parse().ok()),
            reset: header("ratelimit-reset").and_then(|v| v.parse().ok()),
        };
        let retry_after = header("retry-after");
        let wait = (status == 429).then(|| rate_limit_wait(retry_after.as_deref(), &limits));
        limiter.answered(permit, Some(status), &limits, wait);
        match response.text().await {
            Ok(body) => {
                let shown = if endpoint.vitally_host || (200..300).contains(&status) {
                    body.clone()
                } else {
                    untrusted_body(&body, &endpoint.host())
                };
                Answer { outcome: classify(status, retry_after.as_deref(), &limits, &shown), body }
            }
            // The connection died after the status line: nothing is known to have arrived.
            Err(e) => Answer { outcome: transport_error(&e), body: String::new() },
        }
    }

    /// Sends Analytics messages in `/batch` requests of at most `batch_size`, and
    /// returns one outcome per message, in order. A batch refused as a whole with a
    /// 4xx is split in halves until the bad messages are alone, so the good ones go
    /// through.
    pub async fn send_analytics(&self, endpoint: &Endpoint, messages: &[Value]) -> Vec<Outcome> {
        let size = self.config.batch_size.clamp(1, MAX_BATCH);
        let batches = messages.chunks(size).map(|chunk| self.send_batch(endpoint, chunk));
        futures_util::future::join_all(batches).await.into_iter().flatten().collect()
    }

    fn send_batch<'a>(&'a self, endpoint: &'a Endpoint, messages: &'a [Value]) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Outcome>> + Send + 'a>> {
        Box::pin(async move {
            let body = Value::Array(messages.to_vec());
            let answer = self.request(endpoint, false, reqwest::Method::POST, "/batch", Some(&body)).await;
            if messages.len() > 1 && worth_splitting(&answer.outcome) {
                let (left, right) = messages.split_at(messages.len() / 2);
                let (mut a, b) = tokio::join!(self.send_batch(endpoint, left), self.send_batch(endpoint, right));
                a.extend(b);
                return a;
            }
            vec![answer.outcome; messages.len()]
        })
    }

    /// Finds a record by your external id: `GET /<collection>/<id>`, and for users a
    /// search by `externalId` when that finds nothing (whether the REST API takes an
    /// external id in the path is unverified).
    pub async fn find(&self, endpoint: &Endpoint, kind: ObjectKind, external_id: &str) -> Lookup {
        let collection = kind.rest_collection().expect("accounts, users, organizations");
        let path = format!("/{collection}/{}", encode(external_id));
        let answer = self.request(endpoint, true, reqwest::Method::GET, &path, None).await;
        match answer.outcome {
            Outcome::Delivered => {
                if let Ok(found) = serde_json::from_str::<Value>(&answer.body) {
                    if found.get("externalId").and_then(Value::as_str) == Some(external_id) || kind != ObjectKind::User {
                        return Lookup::Found(found);
                    }
                }
            }
            Outcome::NotFound { .. } => {}
            other => return Lookup::Failed(other),
        }
        if kind != ObjectKind::User {
            return Lookup::NotFound;
        }
        let path = format!("/users/search?externalId={}", encode(external_id));
        let answer = self.request(endpoint, true, reqwest::Method::GET, &path, None).await;
        match answer.outcome {
            Outcome::Delivered => serde_json::from_str::<Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("results").and_then(Value::as_array).and_then(|r| r.first().cloned()))
                .map_or(Lookup::NotFound, Lookup::Found),
            Outcome::NotFound { .. } => Lookup::NotFound,
            other => Lookup::Failed(other),
        }
    }

    /// Updates a record by Vitally's id: traits merge, a trait sent as `null` is deleted.
    pub async fn update(&self, endpoint: &Endpoint, kind: ObjectKind, vitally_id: &str, body: &Value) -> Outcome {
        let collection = kind.rest_collection().expect("accounts, users, organizations");
        let path = format!("/{collection}/{}", encode(vitally_id));
        self.request(endpoint, true, reqwest::Method::PUT, &path, Some(body)).await.outcome
    }

    /// Creates or updates (by `externalId`) an NPS response.
    pub async fn create_nps_response(&self, endpoint: &Endpoint, body: &Value) -> Outcome {
        self.request(endpoint, true, reqwest::Method::POST, "/npsResponses", Some(body)).await.outcome
    }

    /// One authenticated request that changes nothing, to check a key and a URL:
    /// an empty Analytics batch, or a REST list of one account.
    pub async fn check(&self, endpoint: &Endpoint, rest: bool) -> (Outcome, Option<u16>) {
        let answer = if rest {
            self.request(endpoint, true, reqwest::Method::GET, "/accounts?limit=1", None).await
        } else {
            self.request(endpoint, false, reqwest::Method::POST, "/batch", Some(&Value::Array(vec![]))).await
        };
        let status = match &answer.outcome {
            Outcome::Delivered => Some(200),
            Outcome::Retry { status, .. } => *status,
            Outcome::RateLimited { .. } => Some(429),
            Outcome::Rejected { status, .. } => Some(*status),
            Outcome::NotFound { .. } => Some(404),
        };
        (answer.outcome, status)
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

