//! The client against the emulator over real loopback HTTP: every outcome class,
//! batch splitting, REST lookups and updates, and pacing under a rate limit.

use serde_json::{json, Value};
use std::time::Duration;
use vitally_client::{ClientConfig, Endpoint, Lookup, Object, Outcome, VitallyClient};
use vitally_emulator::{Config, Emulator, Faults};

const KEY: &str = "test-analytics-key";
const TOKEN: &str = "test-rest-token";

async fn emulator(config: Config) -> Emulator {
    Emulator::start("127.0.0.1:0", config).await.unwrap()
}

fn client(config: ClientConfig) -> VitallyClient {
    VitallyClient::new(config)
}

fn analytics(e: &Emulator) -> Endpoint {
    Endpoint::analytics(&e.analytics_url(), KEY)
}

fn rest(e: &Emulator) -> Endpoint {
    Endpoint::rest(&e.rest_url(), TOKEN)
}

fn account(i: usize) -> Value {
    json!({"type": "account", "accountId": format!("acct_{i}"), "traits": {"seats": i}, "messageId": format!("m{i}"), "timestamp": "2026-06-01T10:00:00Z"})
}

#[tokio::test]
async fn delivered_messages_reach_the_workspace_in_batches_of_batch_size() {
    let e = emulator(Config::default()).await;
    let c = client(ClientConfig { batch_size: 100, ..ClientConfig::default() });
    let messages: Vec<Value> = (0..250).map(account).collect();
    let outcomes = c.send_analytics(&analytics(&e), &messages).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Delivered));
    assert_eq!(e.count("accounts"), 250);
    assert_eq!(e.counters().analytics_requests, 3, "250 messages in batches of 100");
    assert_eq!(e.object("accounts", "acct_7").unwrap().traits["seats"], 7);
}

#[tokio::test]
async fn a_5xx_is_retried_later() {
    let e = emulator(Config { faults: Faults { error_rate: 1.0, ..Faults::default() }, ..Config::default() }).await;
    let outcomes = client(ClientConfig::default()).send_analytics(&analytics(&e), &[account(1)]).await;
    assert!(matches!(&outcomes[0], Outcome::Retry { status: Some(503), error } if error == "Service Unavailable"), "{outcomes:?}");
    assert_eq!(e.count("accounts"), 0);
}

#[tokio::test]
async fn a_request_past_the_timeout_is_retried_later() {
    let e = emulator(Config { faults: Faults { latency_ms: 2_000, ..Faults::default() }, ..Config::default() }).await;
    let c = client(ClientConfig { request_timeout: Duration::from_millis(200), ..ClientConfig::default() });
    let outcomes = c.send_analytics(&analytics(&e), &[account(1)]).await;
    assert!(matches!(&outcomes[0], Outcome::Retry { status: None, error } if error.contains("timed out")), "{outcomes:?}");
}

#[tokio::test]
async fn a_refused_connection_is_retried_later() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = Endpoint::analytics(&format!("http://127.0.0.1:{port}/analytics/v1"), KEY);
    let outcomes = client(ClientConfig::default()).send_analytics(&endpoint, &[account(1)]).await;
    assert!(matches!(&outcomes[0], Outcome::Retry { status: None, error } if error.contains("could not connect")), "{outcomes:?}");
}

#[tokio::test]
async fn a_connection_dropped_mid_response_is_retried_later() {
    let e = emulator(Config { faults: Faults { drop_rate: 1.0, ..Faults::default() }, ..Config::default() }).await;
    let outcomes = client(ClientConfig::default()).send_analytics(&analytics(&e), &[account(1)]).await;
    assert!(matches!(&outcomes[0], Outcome::Retry { status: None, .. }), "{outcomes:?}");
    assert_eq!(e.counters().dropped, 1);
}

#[tokio::test]
async fn a_429_says_how_long_to_wait_from_ratelimit_reset_alone() {
    // Vitally documents RateLimit-Reset on a 429, and no Retry-After.
    let e = emulator(Config { faults: Faults { burst_429: 1, reset_secs: 7, ..Faults::default() }, ..Config::default() }).await;
    let outcomes = client(ClientConfig::default()).send_analytics(&analytics(&e), &[account(1)]).await;
    assert_eq!(outcomes[0], Outcome::RateLimited { wait: Duration::from_secs(7) });
}

#[tokio::test]
async fn rest_paces_from_remaining_and_reset_when_the_limit_comes_as_a_list() {
    // RateLimit-Limit is `3, 3;window=2`; Remaining and Reset alone keep the client under.
    let e = emulator(Config { rest_limit: 3, rest_window: Duration::from_secs(2), ..Config::default() }).await;
    e.seed("accounts", "a", json!({}));
    let c = client(ClientConfig { rest_requests_per_minute: 60_000, max_concurrency: 1, ..ClientConfig::default() });
    for _ in 0..7 {
        assert!(matches!(c.find(&rest(&e), Object::Account, "a").await, Lookup::Found(_)));
    }
    assert_eq!(e.counters().rate_limited, 0, "{:?}", e.counters());
}

#[tokio::test]
async fn an_analytics_404_fails_with_a_hint_never_skips() {
    // A base URL missing /analytics/v1: every path is 404.
    let e = emulator(Config::default()).await;
    let endpoint = Endpoint::analytics(&format!("http://{}", e.addr()), KEY);
    let outcomes = client(ClientConfig::default()).send_analytics(&endpoint, &[account(1), account(2)]).await;
    for o in &outcomes {
        assert!(matches!(o, Outcome::Rejected { status: 404, error } if error.contains("/analytics/v1")), "{o:?}");
    }
    let check = client(ClientConfig::default()).check(&endpoint, false).await;
    assert!(!check.ok && check.detail.contains("404"), "{check:?}");
}

#[tokio::test]
async fn a_lookup_without_an_id_or_with_an_error_is_never_followed_by_a_write() {
    for body in [json!({"externalId": "acct_1", "traits": {}}), json!({"error": "Something went wrong"}), json!({"id": "", "externalId": "acct_1"})] {
        let e = emulator(Config { faults: Faults { lookup_body: Some(body.clone()), ..Faults::default() }, ..Config::default() }).await;
        e.seed("accounts", "acct_1", json!({}));
        let c = client(ClientConfig::default());
        let record = vitally_client::delivery::QueuedRecord {
            id: 1,
            object: Object::Account,
            route: vitally_client::Route::RestUpdate,
            sync_key: "acct_1".into(),
            payload: json!({"accountId": "acct_1", "traits": {"seats": 3}}),
            message_id: "m".into(),
            queued_at: "2026-06-01T10:00:00Z".into(),
        };
        let outcomes = vitally_client::delivery::deliver(&c, &rest(&e), vec![record]).await;
        assert!(matches!(&outcomes[0].1, Outcome::Rejected { status: 200, error } if error.contains("nothing was written")), "{body}: {outcomes:?}");
        assert!(!e.received().iter().any(|r| r.kind.starts_with("PUT")), "{body}: a write followed");
        let user = client(ClientConfig::default()).find(&rest(&e), Object::User, "u_1").await;
        assert!(matches!(user, Lookup::Failed(_)), "{body}: {user:?}");
    }
}

#[tokio::test]
async fn a_blocked_type_costs_five_requests_not_199() {
    let e = emulator(Config { faults: Faults { blocked_types: vec!["track".into()], ..Faults::default() }, ..Config::default() }).await;
    let events: Vec<Value> =
        (0..100).map(|i| json!({"type": "track", "event": "Login", "userId": "u1", "properties": {}, "messageId": format!("e{i}")})).collect();
    let mut messages = events.clone();
    messages.extend((0..10).map(account));
    let outcomes = client(ClientConfig::default()).send_analytics(&analytics(&e), &messages).await;
    assert!(outcomes[..100].iter().all(|o| matches!(o, Outcome::Rejected { status: 400, error } if error.contains("blocked"))), "{outcomes:?}");
    assert!(outcomes[100..].iter().all(|o| *o == Outcome::Delivered), "another type in the same job is not held up");
    assert_eq!(e.counters().analytics_requests, 5 + 1, "the events' batch, its two halves, the first and last event alone; the accounts' batch");
}

#[tokio::test]
async fn two_bad_messages_refused_alike_in_both_halves_leave_the_others_delivered() {
    // Messages 0 and 50 are bad the same way: each half of the split says
    // "message 0: ...". One message alone (a good one) shows it is not the whole type.
    let e = emulator(Config::default()).await;
    let mut messages: Vec<Value> = (0..100).map(account).collect();
    // Also the first and the last, which the split sends alone to tell a blocked type.
    for i in [0, 1, 51, 99] {
        messages[i].as_object_mut().unwrap().remove("accountId");
    }
    let outcomes = client(ClientConfig::default()).send_analytics(&analytics(&e), &messages).await;
    let delivered = outcomes.iter().filter(|o| **o == Outcome::Delivered).count();
    assert_eq!(delivered, 96, "{outcomes:?}");
    for i in [0, 1, 51, 99] {
        assert!(matches!(outcomes[i], Outcome::Rejected { status: 400, .. }), "{i}: {:?}", outcomes[i]);
    }
    assert_eq!(e.count("accounts"), 96);
}

#[tokio::test]
async fn an_analytics_key_is_checked_by_401_and_403_alone() {
    // The emulator refuses an empty batch with 400, as Vitally might: the key was accepted.
    let e = emulator(Config::default()).await;
    let c = client(ClientConfig::default());
    let good = c.check(&analytics(&e), false).await;
    assert!(good.ok, "{good:?}");
    assert_eq!(good.http_status, Some(400));
    assert!(good.detail.contains("accepted the key"), "{good:?}");
    let bad = c.check(&Endpoint::analytics(&e.analytics_url(), "wrong"), false).await;
    assert!(!bad.ok && bad.http_status == Some(401) && bad.detail.contains("refused the key"), "{bad:?}");
}

#[tokio::test]
async fn a_wrong_key_is_rejected_with_a_hint() {
    let e = emulator(Config::default()).await;
    let endpoint = Endpoint::analytics(&e.analytics_url(), "wrong-key");
    let outcomes = client(ClientConfig::default()).send_analytics(&endpoint, &[account(1), account(2)]).await;
    for o in outcomes {
        assert!(matches!(&o, Outcome::Rejected { status: 401, error } if error.contains("check the destination's keys")), "{o:?}");
    }
    assert_eq!(e.counters().analytics_requests, 1, "a 401 is not split");
}

#[tokio::test]
async fn a_blocked_message_type_is_rejected_with_vitallys_text() {
    let e = emulator(Config { faults: Faults { blocked_types: vec!["track".into()], ..Faults::default() }, ..Config::default() }).await;
    let event = json!({"type": "track", "event": "Login", "userId": "u1", "properties": {}, "messageId": "e1"});
    let outcomes = client(ClientConfig::default()).send_analytics(&analytics(&e), &[event]).await;
    assert_eq!(outcomes[0], Outcome::Rejected { status: 400, error: "Message type 'track' is blocked for this workspace".into() });
}

#[tokio::test]
async fn one_bad_message_in_a_batch_of_100_leaves_99_delivered() {
    let e = emulator(Config::default()).await;
    let mut messages: Vec<Value> = (0..100).map(account).collect();
    messages[37].as_object_mut().unwrap().remove("accountId");
    let outcomes = client(ClientConfig::default()).send_analytics(&analytics(&e), &messages).await;
    let delivered = outcomes.iter().filter(|o| **o == Outcome::Delivered).count();
    assert_eq!(delivered, 99);
    assert_eq!(outcomes[37], Outcome::Rejected { status: 400, error: "message 0: account message without \"accountId\"".into() });
    assert_eq!(e.count("accounts"), 99);
    // Splitting in halves finds one bad message in about 2·log2(100) requests, not 100.
    assert!(e.counters().analytics_requests <= 15, "{:?}", e.counters());
}

#[tokio::test]
async fn requests_in_flight_stay_under_max_concurrency() {
    let e = emulator(Config { faults: Faults { latency_ms: 50, ..Faults::default() }, ..Config::default() }).await;
    let c = client(ClientConfig { max_concurrency: 2, batch_size: 1, ..ClientConfig::default() });
    let messages: Vec<Value> = (0..10).map(account).collect();
    let outcomes = c.send_analytics(&analytics(&e), &messages).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Delivered));
    assert_eq!(e.counters().max_in_flight, 2);
}

#[tokio::test]
async fn update_only_finds_by_external_id_merges_traits_and_reports_the_missing() {
    let e = emulator(Config::default()).await;
    let seeded = e.seed("accounts", "acct_1", json!({"plan": "pro", "seats": 3, "legacy": true}));
    let c = client(ClientConfig::default());
    let found = c.find(&rest(&e), Object::Account, "acct_1").await;
    let Lookup::Found(record) = found else { panic!("{found:?}") };
    assert_eq!(record["id"], seeded.id);

    let outcome = c.update(&rest(&e), Object::Account, &seeded.id, &json!({"traits": {"seats": 5, "legacy": null}})).await;
    assert_eq!(outcome, Outcome::Delivered);
    let traits = e.object("accounts", "acct_1").unwrap().traits;
    assert_eq!(Value::Object(traits), json!({"plan": "pro", "seats": 5}), "merged: omitted stays, null deletes");

    assert_eq!(c.find(&rest(&e), Object::Account, "acct_404").await, Lookup::NotFound);
    // A write's 404 is not "not found" (its target was just found): it fails with a hint.
    let missing = c.update(&rest(&e), Object::Account, "no-such-id", &json!({"traits": {}})).await;
    assert!(
        matches!(&missing, Outcome::Rejected { status: 404, error } if error.contains("account not found") && error.contains("rest_url")),
        "{missing:?}"
    );
    assert_eq!(e.count("accounts"), 1, "update only never creates");
}

#[tokio::test]
async fn rest_accepts_the_raw_token_and_the_ready_made_value_but_not_a_wrong_one() {
    use base64::Engine;
    let e = emulator(Config::default()).await;
    let c = client(ClientConfig::default());
    let ready = base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN}:"));
    for token in [TOKEN.to_string(), ready] {
        let check = c.check(&Endpoint::rest(&e.rest_url(), &token), true).await;
        assert!(check.ok && check.http_status == Some(200), "{check:?}");
    }
    let check = c.check(&Endpoint::rest(&e.rest_url(), "wrong"), true).await;
    assert!(!check.ok && check.http_status == Some(401), "{check:?}");
}

#[tokio::test]
async fn nps_responses_are_created_then_updated_by_external_id() {
    let e = emulator(Config::default()).await;
    e.seed("users", "u_1", json!({}));
    let c = client(ClientConfig::default());
    let Lookup::Found(user) = c.find(&rest(&e), Object::User, "u_1").await else { panic!() };
    let vitally_id = user["id"].as_str().unwrap();
    for score in [6, 9] {
        let body = vitally_client::message::nps_body(&json!({"score": score, "respondedAt": "2026-06-01T10:00:00Z"}), vitally_id, "resp_1");
        assert_eq!(c.create_nps_response(&rest(&e), &body).await, Outcome::Delivered);
    }
    assert_eq!(e.count("npsResponses"), 1);
    let unknown = vitally_client::message::nps_body(&json!({"score": 3, "respondedAt": "2026-06-01T10:00:00Z"}), "not-a-user", "resp_2");
    assert!(matches!(c.create_nps_response(&rest(&e), &unknown).await, Outcome::Rejected { status: 404, .. }));
}

#[tokio::test]
async fn rest_calls_stay_under_the_rate_limit_without_429s() {
    // 10 requests per 1 s window; the client's own pace (6000/min) is far above it,
    // so only Vitally's headers keep it under.
    let e = emulator(Config { rest_limit: 10, rest_window: Duration::from_secs(1), ..Config::default() }).await;
    e.seed("accounts", "a", json!({}));
    let c = std::sync::Arc::new(client(ClientConfig { rest_requests_per_minute: 6000, max_concurrency: 4, ..ClientConfig::default() }));
    let endpoint = rest(&e);
    let tasks: Vec<_> = (0..45)
        .map(|_| {
            let (c, endpoint) = (c.clone(), endpoint.clone());
            tokio::spawn(async move { c.find(&endpoint, Object::Account, "a").await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Lookup::Found(_)));
    }
    let counters = e.counters();
    assert_eq!(counters.rest_requests, 45);
    assert_eq!(counters.rate_limited, 0, "{counters:?}");
}
