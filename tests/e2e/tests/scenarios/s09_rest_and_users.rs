//! Update only, NPS responses, and users in several accounts, against the emulator.

use crate::{cluster, APP_DB};
use serde_json::json;
use std::time::Duration;
use vitally_e2e::{emulator, emulator_destination, emulator_with, scalar, sql_error, sync_and_wait, EmulatorConfig, Faults};

crate::trials!("09_rest_and_users":
    update_only_on_500_accounts_of_which_100_are_missing,
    nps_responses_are_created_then_updated,
    a_user_moved_from_one_account_to_another,
    update_only_under_a_tight_rate_limit_fails_nothing,
    update_only_users_need_no_accounts_and_get_their_own_fields_top_level,
    an_analytics_url_without_its_path_fails_every_record_with_a_hint,
);

fn update_only_on_500_accounts_of_which_100_are_missing() {
    let vitally = emulator(Faults::default());
    for i in 1..=400 {
        vitally.seed("accounts", &format!("uo_{i}"), json!({"plan": "free", "region": "eu"}));
    }
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "uo", &vitally);
    db.batch_execute(
        "CREATE TABLE uo AS SELECT 'uo_' || g AS id, 'pro' AS plan, NULL::text AS region FROM generate_series(1, 500) g;
         SELECT vitally.create_sync('uo', 'uo', 'account', 'update_only', 'SELECT * FROM uo', 'id');",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "uo", 120), "succeeded");
    let row = db.query_one("SELECT records_delivered, records_skipped, records_failed FROM vitally.sync_runs WHERE sync_name = 'uo'", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)), (400, 100, 0));
    assert_eq!(vitally.count("accounts"), 400, "none created");
    let traits = vitally.object("accounts", "uo_9").unwrap().traits;
    assert_eq!(serde_json::Value::Object(traits), json!({"plan": "pro"}), "merged, and a trait sent as null is deleted");
    assert_eq!(vitally.counters().rate_limited, 0);
}

fn nps_responses_are_created_then_updated() {
    let vitally = emulator(Faults::default());
    vitally.seed("users", "nps_u1", json!({}));
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "nps", &vitally);
    db.batch_execute(
        "CREATE TABLE nps AS SELECT *, now() AS responded_at FROM (VALUES ('r1', 'nps_u1', 6, 'meh'), ('r2', 'nps_nobody', 9, NULL)) v(id, user_id, score, feedback);
         SELECT vitally.create_sync('nps', 'nps', 'nps_response', 'upsert', 'SELECT * FROM nps', 'id');",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "nps", 60), "succeeded");
    let reason: String = scalar(&mut db, "SELECT error FROM vitally.records WHERE sync_name = 'nps' AND status = 'skipped'");
    assert_eq!(reason, "no user with id \"nps_nobody\" in Vitally: the response is not sent");
    db.batch_execute("UPDATE nps SET score = 10 WHERE id = 'r1'").unwrap();
    assert_eq!(sync_and_wait(&mut db, "nps", 60), "succeeded");
    assert_eq!(vitally.count("npsResponses"), 1, "updated by externalId, not created again");
    let sent: Vec<i64> = vitally.received().iter().filter(|r| r.kind == "POST npsResponses").map(|r| r.body["score"].as_i64().unwrap()).collect();
    assert_eq!(sent, vec![6, 10]);
}

fn a_user_moved_from_one_account_to_another() {
    let vitally = emulator(Faults::default());
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "mv", &vitally);
    db.batch_execute(
        "CREATE TABLE mv (id text, account_ids text[]); INSERT INTO mv VALUES ('keep_u', '{mv_a}'), ('move_u', '{mv_a}');
         SELECT vitally.create_sync('mv_plain', 'mv', 'user', 'upsert', 'SELECT * FROM mv WHERE id = ''keep_u''', 'id');
         SELECT vitally.create_sync('mv_unlink', 'mv', 'user', 'upsert', 'SELECT * FROM mv WHERE id = ''move_u''', 'id',
                options => '{\"unlink_removed_accounts\": true}');",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "mv_plain", 60), "succeeded");
    assert_eq!(sync_and_wait(&mut db, "mv_unlink", 60), "succeeded");
    db.batch_execute("UPDATE mv SET account_ids = '{mv_b}'").unwrap();
    assert_eq!(sync_and_wait(&mut db, "mv_plain", 60), "succeeded");
    assert_eq!(sync_and_wait(&mut db, "mv_unlink", 60), "succeeded");
    assert_eq!(vitally.object("users", "keep_u").unwrap().account_ids, vec!["mv_a", "mv_b"], "without the option, Vitally keeps the old account");
    assert_eq!(vitally.object("users", "move_u").unwrap().account_ids, vec!["mv_b"], "with it, the old account is unlinked");
    let err = sql_error(db.batch_execute(
        "SELECT vitally.create_sync('mv_bad', 'mv', 'account', 'upsert', 'SELECT 1 AS id', 'id', options => '{\"unlink_removed_accounts\": true}')",
    ));
    assert_eq!(err.message, "option unlink_removed_accounts applies to user syncs only");
}

fn update_only_under_a_tight_rate_limit_fails_nothing() {
    // 100 REST requests per 10 s; each record takes two (a lookup and an update). The
    // worker's own pace (900/min) is above the limit: Vitally's headers must hold it back.
    let vitally = emulator_with(EmulatorConfig { rest_limit: 100, rest_window: Duration::from_secs(10), ..EmulatorConfig::default() });
    for i in 1..=150 {
        vitally.seed("accounts", &format!("rl_{i}"), json!({}));
    }
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "rl", &vitally);
    db.batch_execute(
        "CREATE TABLE rl AS SELECT 'rl_' || g AS id, g AS seats FROM generate_series(1, 150) g;
         SELECT vitally.create_sync('rl', 'rl', 'account', 'update_only', 'SELECT * FROM rl', 'id');",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "rl", 180), "succeeded");
    let delivered: i64 = scalar(&mut db, "SELECT records_delivered FROM vitally.sync_runs WHERE sync_name = 'rl'");
    assert_eq!(delivered, 150);
    let limited = vitally.counters().rate_limited;
    assert!(limited <= 5, "a handful of 429s at most, got {limited}");
}

fn update_only_users_need_no_accounts_and_get_their_own_fields_top_level() {
    let vitally = emulator(Faults::default());
    vitally.seed("users", "uou_1", json!({"plan": "free"}));
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "uou", &vitally);
    // No account_ids: the user exists, and Vitally's REST update takes traits alone.
    db.batch_execute(
        "CREATE TABLE uou AS SELECT * FROM (VALUES ('uou_1', 'jane@acme.com', 'Jane Doe', 'https://x.io/j.png', 'pro'),
                                                  ('uou_2', 'nobody@acme.com', 'Nobody', NULL, 'pro')) v(id, email, name, avatar, plan);
         SELECT vitally.create_sync('uou', 'uou', 'user', 'update_only', 'SELECT * FROM uou');",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "uou", 60), "succeeded");
    let row = db.query_one("SELECT records_delivered, records_skipped FROM vitally.sync_runs WHERE sync_name = 'uou'", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 1));
    let user = vitally.object("users", "uou_1").unwrap();
    assert_eq!(user.email.as_deref(), Some("jane@acme.com"), "a REST user's email is top-level");
    assert_eq!(user.avatar.as_deref(), Some("https://x.io/j.png"));
    assert_eq!(user.name.as_deref(), Some("Jane Doe"));
    assert_eq!(serde_json::Value::Object(user.traits), json!({"plan": "pro"}), "and not a trait");
}

fn an_analytics_url_without_its_path_fails_every_record_with_a_hint() {
    let vitally = emulator(Faults::default());
    let mut db = cluster().admin(APP_DB);
    // A typo a new user makes: the host alone, without /analytics/v1. Every answer is 404.
    db.execute(
        "SELECT vitally.create_destination('nopath', analytics_api_key => 'test-analytics-key', analytics_url => $1)",
        &[&format!("http://{}", vitally.addr())],
    )
    .unwrap();
    db.batch_execute(
        "CREATE TABLE nopath AS SELECT 'np_' || g AS id, 'n' || g AS name FROM generate_series(1, 3) g;
         SELECT vitally.create_sync('nopath', 'nopath', 'account', 'upsert', 'SELECT * FROM nopath');",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "nopath", 60), "failed", "never 'succeeded' with everything skipped");
    let errors: Vec<String> = db
        .query("SELECT error FROM vitally.records WHERE sync_name = 'nopath' AND status = 'failed'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(errors.len(), 3);
    assert!(errors[0].contains("404") && errors[0].contains("/analytics/v1"), "{}", errors[0]);
    let (ok, detail): (bool, String) = {
        let r = db.query_one("SELECT ok, detail FROM vitally.check_destination('nopath')", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert!(!ok && detail.contains("/analytics/v1"), "{detail}");
}
