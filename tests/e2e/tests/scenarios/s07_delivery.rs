//! Delivery by the worker, end to end against the emulator: every outcome.

use crate::{cluster, APP_DB};
use postgres::fallible_iterator::FallibleIterator;
use std::time::Duration;
use vitally_e2e::{emulator, emulator_destination, eventually, scalar, sql_error, sync_and_wait, Client, Faults};

crate::trials!("07_delivery":
    records_are_delivered_and_only_changes_are_sent_again,
    a_storm_of_5xx_delays_records_but_loses_none,
    rate_limited_answers_use_no_attempt,
    a_message_type_vitally_blocks_fails_with_vitallys_reason,
    a_malformed_event_time_is_invalid_before_sending_and_never_splits_a_batch,
    a_wrong_key_fails_with_a_hint_and_retry_failed_sends_again,
    one_destinations_trouble_never_holds_up_another,
    update_only_updates_what_exists_and_skips_the_rest,
    check_destination_makes_one_real_request_per_api,
    wait_says_running_when_the_timeout_comes_first,
    a_finished_run_is_announced_on_channel_vitally_sync,
);

fn app() -> Client {
    cluster().admin(APP_DB)
}

/// A table of `n` accounts named `<prefix>_<i>`, and an upsert sync of it.
fn accounts(db: &mut Client, prefix: &str, destination: &str, n: i32) {
    db.batch_execute(&format!(
        "CREATE TABLE {prefix} AS SELECT '{prefix}_' || g AS id, 'Account ' || g AS name, g AS seats FROM generate_series(1, {n}) g;
         SELECT vitally.create_sync('{prefix}', '{destination}', 'account', 'upsert', 'SELECT * FROM {prefix}', 'id');"
    ))
    .unwrap();
}

fn records_are_delivered_and_only_changes_are_sent_again() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    emulator_destination(&mut db, "dl_ok", &vitally);
    accounts(&mut db, "dl_ok", "dl_ok", 250);
    assert_eq!(sync_and_wait(&mut db, "dl_ok", 60), "succeeded");
    let row = db.query_one("SELECT records_queued, records_delivered, records_failed FROM vitally.sync_runs WHERE sync_name = 'dl_ok'", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)), (250, 250, 0));
    assert_eq!(vitally.count("accounts"), 250);
    assert_eq!(vitally.object("accounts", "dl_ok_7").unwrap().traits["seats"], 7);
    let delivered: i64 =
        scalar(&mut db, "SELECT count(*) FROM vitally.records WHERE sync_name = 'dl_ok' AND status = 'delivered' AND delivered_at IS NOT NULL");
    assert_eq!(delivered, 250);

    db.batch_execute("UPDATE dl_ok SET seats = 1000 WHERE id = 'dl_ok_7'").unwrap();
    let before = vitally.counters().messages;
    assert_eq!(sync_and_wait(&mut db, "dl_ok", 60), "succeeded");
    assert_eq!(vitally.counters().messages - before, 1, "only the changed record is sent");
    assert_eq!(vitally.object("accounts", "dl_ok_7").unwrap().traits["seats"], 1000);
}

fn a_storm_of_5xx_delays_records_but_loses_none() {
    // 30% of requests fail, and the first surely does.
    let vitally = emulator(Faults { error_rate: 0.3, fail_next: 1, ..Faults::default() });
    let mut db = app();
    emulator_destination(&mut db, "dl_5xx", &vitally);
    accounts(&mut db, "dl_5xx", "dl_5xx", 300);
    let status = sync_and_wait(&mut db, "dl_5xx", 120);
    let errors: String = scalar(
        &mut db,
        "SELECT coalesce(string_agg(DISTINCT attempts || ' attempts: ' || error, '; '), '') FROM vitally.records WHERE sync_name = 'dl_5xx' AND status = 'failed'",
    );
    assert_eq!(status, "succeeded", "failed records: {errors}");
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'delivered'), max(attempts), count(*) FILTER (WHERE status = 'failed')
               FROM vitally.records WHERE sync_name = 'dl_5xx'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 300);
    assert_eq!(row.get::<_, i64>(2), 0);
    assert!(vitally.counters().responses_5xx > 0, "the storm happened");
    assert!(row.get::<_, i32>(1) > 1, "retries were counted as attempts");
    assert_eq!(vitally.count("accounts"), 300);
}

fn rate_limited_answers_use_no_attempt() {
    let vitally = emulator(Faults { burst_429: 3, reset_secs: 1, ..Faults::default() });
    let mut db = app();
    emulator_destination(&mut db, "dl_429", &vitally);
    accounts(&mut db, "dl_429", "dl_429", 20);
    assert_eq!(sync_and_wait(&mut db, "dl_429", 60), "succeeded");
    assert_eq!(vitally.counters().responses_429, 3);
    let max_attempts: i32 = scalar(&mut db, "SELECT max(attempts) FROM vitally.records WHERE sync_name = 'dl_429'");
    assert_eq!(max_attempts, 1, "the 429s did not count");
}

fn a_message_type_vitally_blocks_fails_with_vitallys_reason() {
    let vitally = emulator(Faults { blocked_types: vec!["track".into()], ..Faults::default() });
    let mut db = app();
    emulator_destination(&mut db, "dl_blocked", &vitally);
    db.batch_execute(
        "CREATE TABLE dl_blocked (id int, event text, user_id text); INSERT INTO dl_blocked VALUES (1, 'Login', 'u1');
         SELECT vitally.create_sync('dl_blocked', 'dl_blocked', 'event', 'append', 'SELECT * FROM dl_blocked', 'id');",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "dl_blocked", 60), "failed");
    let row = db.query_one("SELECT status, http_status, error, attempts FROM vitally.records WHERE sync_name = 'dl_blocked'", &[]).unwrap();
    assert_eq!(row.get::<_, &str>(0), "failed");
    assert_eq!(row.get::<_, Option<i32>>(1), Some(400));
    assert_eq!(row.get::<_, &str>(2), "Message type 'track' is blocked for this workspace");
    assert_eq!(row.get::<_, i32>(3), 1, "a rejection is final at once");
}

fn a_malformed_event_time_is_invalid_before_sending_and_never_splits_a_batch() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    emulator_destination(&mut db, "dl_split", &vitally);
    db.batch_execute(
        "CREATE TABLE dl_split AS SELECT g AS id, 'Viewed' AS event, 'u' || g AS user_id,
                CASE WHEN g = 37 THEN 'not a date' WHEN g = 38 THEN '2026-13-01T10:00:00Z' ELSE '2026-06-01T10:00:00Z' END AS timestamp
           FROM generate_series(1, 100) g;
         SELECT vitally.create_sync('dl_split', 'dl_split', 'event', 'append', 'SELECT * FROM dl_split', 'id');",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "dl_split", 60), "partially_failed");
    let row = db.query_one("SELECT records_delivered, records_invalid FROM vitally.sync_runs WHERE sync_name = 'dl_split'", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (98, 2));
    let invalid: Vec<(String, String)> = db
        .query("SELECT sync_key, error FROM vitally.records WHERE sync_name = 'dl_split' AND status = 'invalid' ORDER BY sync_key", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(invalid[0].0, "37");
    assert!(
        invalid[0].1.starts_with("timestamp must be an ISO-8601 date-time with a time zone, like 2026-06-01T10:00:00Z, got \"not a date\""),
        "{invalid:?}"
    );
    assert_eq!(invalid[1].0, "38", "month 13");
    assert_eq!(vitally.count("events"), 98);
    assert_eq!(vitally.counters().analytics_requests, 1, "one batch, never split");
}

fn a_wrong_key_fails_with_a_hint_and_retry_failed_sends_again() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    db.execute("SELECT vitally.create_destination('dl_key', analytics_api_key => 'wrong-key', analytics_url => $1)", &[&vitally.analytics_url()])
        .unwrap();
    accounts(&mut db, "dl_key", "dl_key", 5);
    assert_eq!(sync_and_wait(&mut db, "dl_key", 60), "failed");
    let error: String = scalar(&mut db, "SELECT min(error) FROM vitally.records WHERE sync_name = 'dl_key'");
    assert!(error.contains("Vitally refused the key"), "{error}");
    assert!(!error.contains("wrong-key"), "no key in an error");
    let failed_now: i64 = scalar(&mut db, "SELECT failed_now FROM vitally.sync_status WHERE sync_name = 'dl_key'");
    assert_eq!(failed_now, 5);

    db.batch_execute("SELECT vitally.alter_destination('dl_key', analytics_api_key => 'test-analytics-key')").unwrap();
    let queued: i64 = scalar(&mut db, "SELECT vitally.retry_failed('dl_key')");
    assert_eq!(queued, 5);
    let run: i64 = scalar(&mut db, "SELECT max(id) FROM vitally.sync_runs WHERE sync_name = 'dl_key'");
    let status: String = scalar(&mut db, &format!("SELECT vitally.wait({run}, timeout => '60 seconds')"));
    assert_eq!(status, "succeeded");
    assert_eq!(vitally.count("accounts"), 5);
    let failed_now: i64 = scalar(&mut db, "SELECT failed_now FROM vitally.sync_status WHERE sync_name = 'dl_key'");
    assert_eq!(failed_now, 0);
}

fn one_destinations_trouble_never_holds_up_another() {
    let slow = emulator(Faults { latency_ms: 4_000, ..Faults::default() });
    let fast = emulator(Faults::default());
    let mut db = app();
    emulator_destination(&mut db, "dl_slow", &slow);
    emulator_destination(&mut db, "dl_fast", &fast);
    accounts(&mut db, "dl_slow", "dl_slow", 50);
    accounts(&mut db, "dl_fast", "dl_fast", 50);
    let slow_run: i64 = scalar(&mut db, "SELECT vitally.sync('dl_slow')");
    let fast_run: i64 = scalar(&mut db, "SELECT vitally.sync('dl_fast')");
    let fast_status: String = scalar(&mut db, &format!("SELECT vitally.wait({fast_run}, timeout => '30 seconds')"));
    assert_eq!(fast_status, "succeeded");
    let slow_status: String = scalar(&mut db, &format!("SELECT status FROM vitally.sync_runs WHERE id = {slow_run}"));
    assert_eq!(slow_status, "running", "the slow destination was still at it while the fast one finished");
    let slow_status: String = scalar(&mut db, &format!("SELECT vitally.wait({slow_run}, timeout => '60 seconds')"));
    assert_eq!(slow_status, "succeeded");
}

fn update_only_updates_what_exists_and_skips_the_rest() {
    let vitally = emulator(Faults::default());
    for i in [1, 2] {
        vitally.seed("accounts", &format!("dl_upd_{i}"), serde_json::json!({"plan": "free", "keep": true}));
    }
    let mut db = app();
    emulator_destination(&mut db, "dl_upd", &vitally);
    db.batch_execute(
        "CREATE TABLE dl_upd AS SELECT 'dl_upd_' || g AS id, 'pro' AS plan FROM generate_series(1, 5) g;
         SELECT vitally.create_sync('dl_upd', 'dl_upd', 'account', 'update_only', 'SELECT * FROM dl_upd', 'id');",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "dl_upd", 60), "succeeded");
    let row = db.query_one("SELECT records_delivered, records_skipped FROM vitally.sync_runs WHERE sync_name = 'dl_upd'", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 3));
    assert_eq!(vitally.count("accounts"), 2, "update only never creates");
    let traits = vitally.object("accounts", "dl_upd_1").unwrap().traits;
    assert_eq!(serde_json::Value::Object(traits), serde_json::json!({"plan": "pro", "keep": true}));
    let reason: String = scalar(&mut db, "SELECT error FROM vitally.records WHERE sync_name = 'dl_upd' AND sync_key = 'dl_upd_5'");
    assert_eq!(reason, "no account with id \"dl_upd_5\" in Vitally: update only does not create it");
}

fn check_destination_makes_one_real_request_per_api() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    emulator_destination(&mut db, "dl_check", &vitally);
    let rows: Vec<(String, bool, Option<i32>)> = db
        .query("SELECT api, ok, http_status FROM vitally.check_destination('dl_check') ORDER BY api", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // The emulator refuses the empty batch (400), as nothing promises Vitally takes it:
    // only a 401/403 says the key is wrong.
    assert_eq!(rows, vec![("analytics".into(), true, Some(400)), ("rest".into(), true, Some(200))]);
    let detail: String = scalar(&mut db, "SELECT detail FROM vitally.check_destination('dl_check') WHERE api = 'analytics'");
    assert!(detail.contains("accepted the key"), "{detail}");
    assert_eq!(vitally.counters().requests, 4, "one request per API per check");

    db.batch_execute("SELECT vitally.alter_destination('dl_check', rest_api_key => 'nope')").unwrap();
    let (ok, status, detail): (bool, Option<i32>, String) = {
        let r = db.query_one("SELECT ok, http_status, detail FROM vitally.check_destination('dl_check') WHERE api = 'rest'", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((ok, status), (false, Some(401)));
    assert!(detail.contains("Vitally refused the key") && !detail.contains("nope"), "{detail}");
}

fn wait_says_running_when_the_timeout_comes_first() {
    let vitally = emulator(Faults { latency_ms: 3_000, ..Faults::default() });
    let mut db = app();
    emulator_destination(&mut db, "dl_wait", &vitally);
    accounts(&mut db, "dl_wait", "dl_wait", 3);
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('dl_wait')");
    let status: String = scalar(&mut db, &format!("SELECT vitally.wait({run}, timeout => '100 milliseconds')"));
    assert_eq!(status, "running");
    db.batch_execute("UPDATE dl_wait SET seats = seats + 1").unwrap();
    let err = sql_error(db.batch_execute("BEGIN; SELECT vitally.wait(vitally.sync('dl_wait'), timeout => '1 second')"));
    assert!(err.message.contains("was started in this transaction"), "{}", err.message);
    db.batch_execute("ROLLBACK").unwrap();
    let err = sql_error(db.batch_execute("SELECT vitally.wait(987654321)"));
    assert_eq!(err.message, "run 987654321 does not exist");
}

fn a_finished_run_is_announced_on_channel_vitally_sync() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    emulator_destination(&mut db, "dl_notify", &vitally);
    accounts(&mut db, "dl_notify", "dl_notify", 2);
    let mut listener = app();
    listener.batch_execute("LISTEN vitally_sync").unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('dl_notify')");
    let payload = eventually("the notification", Duration::from_secs(30), || {
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(Duration::from_millis(200));
        while let Ok(Some(note)) = it.next() {
            if note.payload() == run.to_string() {
                return Some(note.payload().to_string());
            }
        }
        None
    });
    // Only the id: any role may LISTEN, and names or figures are not everyone's to see.
    assert_eq!(payload, run.to_string());
    let status: String = scalar(&mut db, &format!("SELECT status FROM vitally.sync_runs WHERE id = {run}"));
    assert_eq!(status, "succeeded");
}
