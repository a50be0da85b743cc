//! The emulator over HTTP, as a client that knows nothing of it would see it.

use serde_json::{json, Value};
use std::time::Duration;
use vitally_emulator::{Config, Emulator, Faults};

struct Http {
    base: String,
    http: reqwest::Client,
}

impl Http {
    async fn post(&self, path: &str, auth: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.base)).header("authorization", auth).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, auth: &str) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = self.http.get(format!("{}{path}", self.base)).header("authorization", auth).send().await.unwrap();
        let headers = r.headers().clone();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null), headers)
    }
}

const A: &str = "Basic test-analytics-key";
// base64("test-rest-token:")
const R: &str = "Basic dGVzdC1yZXN0LXRva2VuOg==";

async fn start(config: Config) -> (Emulator, Http) {
    let e = Emulator::start("127.0.0.1:0", config).await.unwrap();
    let http = Http { base: format!("http://{}", e.addr()), http: reqwest::Client::new() };
    (e, http)
}

#[tokio::test]
async fn answers_as_soon_as_start_returns() {
    let (_e, http) = start(Config::default()).await;
    let (status, body) = http.post("/analytics/v1/batch", A, json!([{"type": "account", "accountId": "a", "messageId": "m"}])).await;
    assert_eq!((status, body), (200, json!({"message": "Success."})));
}

#[tokio::test]
async fn an_empty_batch_is_refused_as_nothing_promises_it_is_accepted() {
    let (_e, http) = start(Config::default()).await;
    let (status, body) = http.post("/analytics/v1/batch", A, json!([])).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (400, "a batch needs at least one message"));
    assert_eq!(http.post("/analytics/v1/batch", "Basic nope", json!([])).await.0, 401, "the key is checked first");
}

#[tokio::test]
async fn rest_answers_in_the_documented_forms() {
    let (e, http) = start(Config::default()).await;
    for i in 0..150 {
        e.seed("accounts", &format!("a{i:03}"), json!({}));
    }
    let (status, page, headers) = http.get("/resources/accounts", R).await;
    assert_eq!(status, 200);
    assert_eq!(page["results"].as_array().unwrap().len(), 100, "pages of 100 by default");
    assert_eq!(headers["ratelimit-limit"], "1000, 1000;window=60", "the documented list form");
    assert!(headers.get("retry-after").is_none());
    let (status, body, _) = http.get("/resources/accounts/nope", R).await;
    assert_eq!((status, body), (404, json!({"error": "account not found"})));
    // NPS: userId (Vitally's), score and respondedAt are all required.
    let user = e.seed("users", "u1", json!({}));
    let r = http.post("/resources/npsResponses", R, json!({"userId": user.id, "score": 9})).await;
    assert_eq!((r.0, r.1["error"].as_str().unwrap()), (400, "respondedAt is required: an ISO-8601 date-time"));
    let r = http.post("/resources/npsResponses", R, json!({"userId": user.id, "score": 9, "respondedAt": "2026-06-01T10:00:00Z"})).await;
    assert_eq!(r.0, 200);
    // A REST user's email is top-level; traits.email there is only a trait.
    let put = http
        .http
        .put(format!("{}/resources/users/{}", http.base, user.id))
        .header("authorization", R)
        .json(&json!({"email": "jane@acme.com", "traits": {"email": "trait@x.io"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(e.object("users", "u1").unwrap().email.as_deref(), Some("jane@acme.com"));
    e.update_config(|c| c.rest_limit = 1);
    let (status, _, h) = http.get("/resources/accounts", R).await;
    assert_eq!(status, 429);
    assert!(h.get("retry-after").is_none() && h.get("ratelimit-reset").is_some(), "429: RateLimit-Reset, no Retry-After");
}

#[tokio::test]
async fn batches_over_100_and_malformed_messages_are_refused_whole() {
    let (e, http) = start(Config::default()).await;
    let many: Vec<Value> = (0..101).map(|i| json!({"type": "account", "accountId": i.to_string(), "messageId": i.to_string()})).collect();
    let (status, body) = http.post("/analytics/v1/batch", A, Value::Array(many)).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (400, "a batch holds at most 100 messages, got 101"));
    let mixed = json!([
        {"type": "account", "accountId": "ok", "messageId": "1"},
        {"type": "user", "userId": "u", "messageId": "2"}
    ]);
    let (status, body) = http.post("/analytics/v1/batch", A, mixed).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (400, "message 1: user message without \"accountId\" or \"organizationId\""));
    assert_eq!(e.count("accounts"), 0, "all or nothing");
    let (status, _) = http.post("/analytics/v1/account", A, json!({"accountId": "x"})).await;
    assert_eq!(status, 400, "a message needs a messageId or a timestamp");
}

#[tokio::test]
async fn a_wrong_analytics_key_is_401() {
    let (_e, http) = start(Config::default()).await;
    let (status, _) = http.post("/analytics/v1/account", "Basic nope", json!({"accountId": "a", "messageId": "1"})).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn users_create_their_accounts_traits_merge_and_duplicates_are_dropped() {
    let (e, http) = start(Config::default()).await;
    let batch = json!([
        {"type": "user", "userId": "u1", "accountId": "new_acct", "traits": {"email": "a@x.io", "plan": "free"}, "messageId": "m1"},
        {"type": "user", "userId": "u1", "accountId": "other", "traits": {"plan": null, "seats": 2}, "messageId": "m2"},
        {"type": "user", "userId": "u1", "accountId": "other", "traits": {"seats": 99}, "messageId": "m2"},
        {"type": "track", "event": "Login", "userId": "u1", "properties": {}, "messageId": "e1"},
        {"type": "track", "event": "Login", "userId": "u1", "properties": {}, "messageId": "e1"}
    ]);
    assert_eq!(http.post("/analytics/v1/batch", A, batch).await.0, 200);
    let user = e.object("users", "u1").unwrap();
    assert_eq!(user.account_ids, vec!["new_acct", "other"]);
    assert_eq!(Value::Object(user.traits), json!({"email": "a@x.io", "seats": 2}));
    assert!(e.object("accounts", "new_acct").is_some(), "an unknown accountId creates the account");
    assert_eq!(e.count("events"), 1);
    assert_eq!(e.counters().duplicates, 2);

    assert_eq!(http.post("/analytics/v1/unlink", A, json!({"userId": "u1", "accountId": "new_acct", "messageId": "u"})).await.0, 200);
    assert_eq!(e.object("users", "u1").unwrap().account_ids, vec!["other"]);
}

#[tokio::test]
async fn rest_lists_pages_and_searches_users() {
    let (e, http) = start(Config::default()).await;
    for i in 0..5 {
        e.seed("accounts", &format!("a{i}"), json!({}));
    }
    e.seed("users", "u1", json!({"email": "jane@acme.com"}));
    let (_, page, headers) = http.get("/resources/accounts?limit=2", R).await;
    assert_eq!(page["results"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], "a1");
    let (_, page, _) = http.get("/resources/accounts?limit=2&from=a3", R).await;
    assert_eq!(page["results"][0]["externalId"], "a4");
    assert!(page["next"].is_null());
    assert_eq!(headers["ratelimit-limit"], "1000, 1000;window=60");
    let (_, found, _) = http.get("/resources/users/search?email=jane@acme.com", R).await;
    assert_eq!(found["results"][0]["externalId"], "u1");
}

#[tokio::test]
async fn rest_rate_limit_answers_429_with_reset_when_the_window_is_full() {
    let (_e, http) = start(Config { rest_limit: 3, rest_window: Duration::from_secs(10), ..Config::default() }).await;
    for remaining in ["2", "1", "0"] {
        let (status, _, h) = http.get("/resources/accounts", R).await;
        assert_eq!((status, h["ratelimit-remaining"].to_str().unwrap()), (200, remaining));
    }
    let (status, body, h) = http.get("/resources/accounts", R).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"], "Rate limit exceeded");
    let reset: u64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!((9..=10).contains(&reset), "{reset}");
}

#[tokio::test]
async fn faults_change_at_run_time_through_the_control_api() {
    let (e, http) = start(Config::default()).await;
    let r = http.http.put(format!("{}/_emulator/faults", http.base)).json(&json!({"down": true})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let one = json!([{"type": "account", "accountId": "a", "messageId": "m"}]);
    assert_eq!(http.post("/analytics/v1/batch", A, one.clone()).await.0, 503);
    e.set_faults(Faults::default());
    assert_eq!(http.post("/analytics/v1/batch", A, one).await.0, 200);
    let r = http.http.post(format!("{}/_emulator/reset", http.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.counters().requests, 0);
}

/// Latency is the response time, the emulator's own work included: a batch is applied
/// while its answer is still held back (as a server that answers late may already have
/// applied it), and the answer comes once the latency has passed since it arrived.
#[tokio::test]
async fn latency_holds_the_answer_back_not_the_work() {
    let (e, http) = start(Config { faults: Faults { latency_ms: 2_000, ..Faults::default() }, ..Config::default() }).await;
    let sent = tokio::time::Instant::now();
    let request =
        tokio::spawn(async move { http.post("/analytics/v1/batch", A, json!([{"type": "account", "accountId": "a", "messageId": "m"}])).await });
    while e.count("accounts") == 0 {
        assert!(!request.is_finished(), "applied before it was answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(e.counters().in_flight, 1, "applied while the answer is held back");
    assert_eq!(request.await.unwrap().0, 200);
    assert!(sent.elapsed() >= Duration::from_millis(2_000), "answered after the latency");
}
