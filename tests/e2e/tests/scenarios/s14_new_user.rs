//! What a new user hits first, outside the shapes the other scenarios use: account ids
//! that are integers (serial keys), UUIDs, numerics or JSON numbers; an event sync
//! dropped and made again to fix its mapping.

use crate::{cluster, APP_DB};
use vitally_e2e::{emulator, emulator_destination, scalar, sql_error, sync_and_wait, Cluster, Faults};

crate::trials!("14_new_user":
    a_users_accounts_arrive_as_strings_whatever_their_type,
    events_are_counted_once_when_their_sync_is_made_again,
    events_of_other_names_with_the_same_keys_are_both_counted,
    without_the_preload_everything_but_delivery_works,
    without_the_preload_keys_are_refused_where_a_statement_log_would_keep_them,
);

fn a_users_accounts_arrive_as_strings_whatever_their_type() {
    let vitally = emulator(Faults::default());
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "nu_types", &vitally);
    db.batch_execute("CREATE DOMAIN nu_int_list AS int[]").unwrap();
    // Each with a NULL and a repeat, which are left out.
    let cases = [
        ("int2", "ARRAY[1, NULL, 2, 1]::int2[]", vec!["1", "2"]),
        ("int4", "ARRAY[1, NULL, 2, 1]::int4[]", vec!["1", "2"]),
        ("int8", "ARRAY[1, NULL, 2, 1]::int8[]", vec!["1", "2"]),
        ("numeric", "ARRAY[1, NULL, 2, 1]::numeric[]", vec!["1", "2"]),
        ("text", "ARRAY['1', NULL, '2', '1']::text[]", vec!["1", "2"]),
        ("varchar", "ARRAY['1', NULL, '2', '', '1']::varchar[]", vec!["1", "2"]),
        ("uuid", "ARRAY['8f0c1f52-6a43-4a7e-9a43-2d3c8a1b0e11', NULL]::uuid[]", vec!["8f0c1f52-6a43-4a7e-9a43-2d3c8a1b0e11"]),
        ("jsonb_numbers", "'[1, null, 2, 1]'::jsonb", vec!["1", "2"]),
        ("json_strings", "'[\"1\", \"2\", \"1\"]'::json", vec!["1", "2"]),
        ("domain", "ARRAY[1, NULL, 2, 1]::nu_int_list", vec!["1", "2"]),
        ("one_integer", "1::bigint", vec!["1"]),
        ("jsonb_one_number", "'1'::jsonb", vec!["1"]),
    ];
    for (name, accounts, expected) in &cases {
        let sync = format!("nu_{name}");
        db.execute(
            &format!(
                "SELECT vitally.create_sync($1, 'nu_types', 'user', 'upsert',
                        $q$SELECT 'u_{name}' AS id, {accounts} AS account_ids, 7 AS organization_id$q$)"
            ),
            &[&sync],
        )
        .unwrap();
        let payload: String = scalar(&mut db, &format!("SELECT payload::text FROM vitally.preview('{sync}')"));
        let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(payload["accountIds"], serde_json::json!(expected), "{name}: {payload}");
        assert_eq!(payload["organizationId"], "7", "{name}: ids are strings: {payload}");
        assert_eq!(sync_and_wait(&mut db, &sync, 30), "succeeded", "{name}");
        let user = vitally.object("users", &format!("u_{name}")).unwrap_or_else(|| panic!("{name}: user not delivered"));
        let mut got = user.account_ids.clone();
        got.sort();
        assert_eq!(got, *expected, "{name}");
    }
}

/// Runs an event sync and waits for it; returns how many events Vitally now counts.
fn events_after(db: &mut vitally_e2e::Client, vitally: &vitally_e2e::Emulator, sync: &str) -> usize {
    assert_eq!(sync_and_wait(db, sync, 30), "succeeded", "{sync}");
    vitally.count("events")
}

fn events_are_counted_once_when_their_sync_is_made_again() {
    let vitally = emulator(Faults::default());
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "nu_events", &vitally);
    db.batch_execute(
        "CREATE TABLE nu_logins AS SELECT g AS id, 'Login' AS event, 'u' || g AS user_id, 'web' AS channel FROM generate_series(1, 20) g;
         SELECT vitally.create_sync('nu_logins', 'nu_events', 'event', 'append', 'SELECT id, event, user_id FROM nu_logins', 'id');",
    )
    .unwrap();
    assert_eq!(events_after(&mut db, &vitally, "nu_logins"), 20);
    // The usual way to fix a mapping: drop the sync and make it again, here with one
    // more property. Every event is queued again (the new sync has delivered nothing)
    // and sent under the same messageIds, so Vitally counts none of them twice.
    db.batch_execute(
        "SELECT vitally.drop_sync('nu_logins');
         SELECT vitally.create_sync('nu_logins_v2', 'nu_events', 'event', 'append', 'SELECT id, event, user_id, channel FROM nu_logins', 'id');",
    )
    .unwrap();
    assert_eq!(events_after(&mut db, &vitally, "nu_logins_v2"), 20, "a re-created sync duplicated events");
    let repeats = vitally.received().iter().filter(|r| r.kind == "track" && !r.applied).count();
    assert_eq!(repeats, 20, "each event was sent again and dropped as a repeat");
    // reset() and full_resync send them again too, and still nothing is counted twice.
    let forgotten: i64 = scalar(&mut db, "SELECT vitally.reset('nu_logins_v2')");
    assert_eq!(forgotten, 20);
    assert_eq!(events_after(&mut db, &vitally, "nu_logins_v2"), 20, "reset() duplicated events");
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('nu_logins_v2', full_resync => true)");
    assert_eq!(scalar::<i64>(&mut db, &format!("SELECT records_queued FROM vitally.sync_runs WHERE id = {run}")), 20);
    assert_eq!(scalar::<String>(&mut db, &format!("SELECT vitally.wait({run}, '30 seconds')")), "succeeded");
    assert_eq!(vitally.count("events"), 20, "full_resync duplicated events");
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('nu_logins_v2')");
    assert_eq!(
        scalar::<i64>(&mut db, &format!("SELECT records_queued FROM vitally.sync_runs WHERE id = {run}")),
        0,
        "a delivered event is not queued again"
    );
    // Sending them again on purpose, as docs/reference.md says: give them new keys.
    db.batch_execute(
        "SELECT vitally.alter_sync('nu_logins_v2', query => $$SELECT 'resent-1:' || id AS id, event, user_id, channel FROM nu_logins$$)",
    )
    .unwrap();
    assert_eq!(events_after(&mut db, &vitally, "nu_logins_v2"), 40, "new keys are new events");
}

fn events_of_other_names_with_the_same_keys_are_both_counted() {
    let vitally = emulator(Faults::default());
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "nu_two_events", &vitally);
    // Two tables keyed by their own serials: keys 1..10 in both, two event names.
    db.batch_execute(
        "CREATE TABLE nu_exports AS SELECT g AS id, 'u' || g AS user_id FROM generate_series(1, 10) g;
         CREATE TABLE nu_invites AS SELECT g AS id, 'u' || g AS user_id FROM generate_series(1, 10) g;
         SELECT vitally.create_sync('nu_exports', 'nu_two_events', 'event', 'append', $$SELECT id, 'Report Exported' AS event, user_id FROM nu_exports$$, 'id');
         SELECT vitally.create_sync('nu_invites', 'nu_two_events', 'event', 'append', $$SELECT id, 'Teammate Invited' AS event, user_id FROM nu_invites$$, 'id');",
    )
    .unwrap();
    assert_eq!(events_after(&mut db, &vitally, "nu_exports"), 10);
    assert_eq!(events_after(&mut db, &vitally, "nu_invites"), 20, "events of another name were dropped as repeats");
}

/// The contract: without the preload everything works but delivery, and what needs the
/// worker says so at once.
fn without_the_preload_everything_but_delivery_works() {
    let vitally = emulator(Faults::default());
    let bare = Cluster::start("nu-nopreload", &[]);
    let mut db = bare.admin("postgres");
    db.batch_execute(
        "CREATE EXTENSION vitally_sync; CREATE TABLE np_accounts AS SELECT 'a' || g AS id, 'Acme ' || g AS name FROM generate_series(1, 5) g",
    )
    .unwrap();
    emulator_destination(&mut db, "np", &vitally);
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM vitally.destinations WHERE analytics_api_key_set AND rest_api_key_set"), 1);
    let checks: Vec<(String, bool)> =
        db.query("SELECT api, ok FROM vitally.check_destination('np') ORDER BY api", &[]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(checks, vec![("analytics".to_string(), true), ("rest".to_string(), true)], "check_destination calls Vitally from the session");
    db.batch_execute(
        "SELECT vitally.create_sync('np_accounts', 'np', 'account', 'upsert', 'SELECT * FROM np_accounts');
         SELECT vitally.alter_sync('np_accounts', sync_key => 'id');",
    )
    .unwrap();
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM vitally.preview('np_accounts') WHERE action = 'create_or_update'"), 5);
    let (mut session, notices) = bare.connect_with_notices("postgres", "postgres");
    let run: i64 = scalar(&mut session, "SELECT vitally.sync('np_accounts')");
    let warned = notices.lock().unwrap().clone();
    assert!(warned.iter().any(|n| n.contains("shared_preload_libraries")), "sync() says nothing will deliver: {warned:?}");
    assert_eq!(scalar::<i64>(&mut db, &format!("SELECT records_queued FROM vitally.sync_runs WHERE id = {run}")), 5);
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM vitally.records WHERE status = 'pending'"), 5, "the records wait, durable");
    // Waiting would only run out its timeout: it says why at once.
    let err = sql_error(db.execute(&format!("SELECT vitally.wait({run}, '1 hour')"), &[]));
    assert_eq!(err.code, "55000", "{}", err.message);
    assert!(err.message.contains(&format!("run {run} cannot finish here")) && err.message.contains("shared_preload_libraries"), "{}", err.message);
    let err = sql_error(db.execute("SELECT vitally.schedule('np_accounts', '*/5 * * * *')", &[]));
    assert_eq!(err.code, "0A000", "{}", err.message);
    assert!(!scalar::<bool>(&mut db, "SELECT bool_or(worker_up) FROM vitally.metrics"));
    assert_eq!(scalar::<i64>(&mut db, "SELECT pending FROM vitally.metrics WHERE destination = 'np'"), 5);
    assert!(scalar::<Option<i32>>(&mut db, "SELECT vitally.worker_pid()").is_none());
    let status: String = scalar(&mut db, "SELECT worker_status FROM vitally.metrics WHERE destination = 'np'");
    assert!(status.contains("not in shared_preload_libraries"), "{status}");
    assert_eq!(scalar::<i64>(&mut db, "SELECT vitally.retry_failed('np_accounts')"), 0);
    assert_eq!(scalar::<i64>(&mut db, "SELECT vitally.reset('np_accounts')"), 0);
    db.batch_execute(
        "SELECT vitally.alter_destination('np', subdomain => 'acme');
         SELECT vitally.drop_sync('np_accounts');
         SELECT vitally.drop_destination('np');",
    )
    .unwrap();
    assert_eq!(vitally.count("accounts"), 0, "nothing delivered without the worker");
    assert!(!bare.log().contains("test-analytics-key") && !bare.log().contains("test-rest-token"), "the log has a key");
}

/// Without the preload the log hook is installed only when the call loads the library,
/// after Postgres may have logged the call's text: keys are refused where it would.
fn without_the_preload_keys_are_refused_where_a_statement_log_would_keep_them() {
    let bare = Cluster::start("nu-nopreload-log", &[]);
    let mut db = bare.admin("postgres");
    db.batch_execute("CREATE EXTENSION vitally_sync").unwrap();
    // Default settings: the key is taken, and a call that fails after loading the
    // library (log_min_error_statement logs its STATEMENT) does not log it.
    let mut fresh = bare.admin("postgres");
    let err = sql_error(
        fresh.batch_execute("SELECT vitally.create_destination('bad', analytics_api_key => 'np-secret-1', subdomain => 'not a subdomain')"),
    );
    assert_eq!(err.code, "22023", "{}", err.message);
    bare.admin("postgres").batch_execute("SELECT vitally.create_destination('ok', analytics_api_key => 'np-secret-2')").unwrap();
    // log_statement = 'all' logs a call before it runs; a SET in the session may have
    // logged the text of the same query string before switching it off.
    db.batch_execute("ALTER ROLE postgres SET log_statement = 'all'").unwrap();
    for (sql, why) in [
        ("SELECT vitally.create_destination('d', analytics_api_key => 'np-logged')", "log_statement is 'all'"),
        ("SELECT vitally.alter_destination('ok', rest_api_key => 'np-logged')", "log_statement is 'all'"),
        ("SET log_statement = 'none'; SELECT vitally.create_destination('d', analytics_api_key => 'np-logged')", "log_statement was changed by SET"),
    ] {
        let err = sql_error(bare.admin("postgres").batch_execute(sql));
        assert_eq!(err.code, "55000", "{sql}: {}", err.message);
        assert!(err.message.contains(why), "{sql}: {}", err.message);
        assert!(err.hint.as_deref().unwrap_or_default().contains("shared_preload_libraries"), "{sql}");
    }
    // Without a key the same settings do not matter.
    bare.admin("postgres").batch_execute("SELECT vitally.alter_destination('ok', subdomain => 'acme')").unwrap();
    // Once a statement of the session has loaded the library, the hook sees every later
    // one from its start: the key is taken, and log_statement's line is hidden.
    let mut warmed = bare.admin("postgres");
    warmed.batch_execute("SELECT vitally.worker_pid()").unwrap();
    warmed.batch_execute("SELECT vitally.alter_destination('ok', rest_api_key => 'np-secret-3')").unwrap();
    db.batch_execute("ALTER ROLE postgres RESET log_statement; ALTER ROLE postgres SET log_min_duration_statement = 0").unwrap();
    let err = sql_error(bare.admin("postgres").batch_execute("SELECT vitally.alter_destination('ok', rest_api_key => 'np-logged')"));
    assert!(err.message.contains("log_min_duration_statement is '0'"), "{}", err.message);
    db.batch_execute("ALTER ROLE postgres RESET log_min_duration_statement").unwrap();
    let log = bare.log();
    assert!(log.contains("statement hidden by vitally_sync"), "log_statement logged the warmed session's call, hidden");
    assert!(!log.contains("np-secret-1") && !log.contains("np-secret-2") && !log.contains("np-secret-3"), "the log has a key");
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM vitally.destinations"), 1);
}
