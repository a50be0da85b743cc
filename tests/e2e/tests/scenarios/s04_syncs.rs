//! Sync definitions: every object and behavior, and every way to define one wrong.

use crate::cluster;
use vitally_e2e::{destination, fresh_database, records_queued, scalar, sql_error};

crate::trials!("04_syncs":
    every_object_and_behavior_can_be_defined,
    each_definition_mistake_is_refused_with_how_to_fix_it,
    alter_changes_only_what_is_given_and_checks_again,
    a_disabled_sync_refuses_to_run,
    a_destination_in_use_is_dropped_only_with_cascade,
);

const SETUP: &str = "
    CREATE TABLE people (id int PRIMARY KEY, email text, account_ids text[], organization_id text);
    CREATE TABLE accounts (id text PRIMARY KEY, name text, organization_id text);
    CREATE TABLE events (id bigint PRIMARY KEY, event text, user_id int, at timestamptz);
    CREATE TABLE nps (id int PRIMARY KEY, user_id int, score int, feedback text, responded_at timestamptz);
";

fn every_object_and_behavior_can_be_defined() {
    let mut db = fresh_database(cluster(), "syncs_all");
    db.batch_execute(SETUP).unwrap();
    destination(&mut db, "d");
    db.batch_execute(
        "SELECT vitally.create_sync('u1', 'd', 'user', 'upsert', 'SELECT id, email, account_ids FROM people', 'id');
         SELECT vitally.create_sync('u2', 'd', 'user', 'update_only', 'SELECT id, email, account_ids FROM people', 'id');
         SELECT vitally.create_sync('a1', 'd', 'account', 'upsert', 'SELECT id, name FROM accounts', 'id');
         SELECT vitally.create_sync('a2', 'd', 'account', 'update_only', 'SELECT id, name FROM accounts', 'id');
         SELECT vitally.create_sync('o1', 'd', 'organization', 'upsert', 'SELECT organization_id AS id FROM accounts', 'id');
         SELECT vitally.create_sync('o2', 'd', 'organization', 'update_only', 'SELECT organization_id AS id FROM accounts', 'id');
         SELECT vitally.create_sync(name => 'e1', destination => 'd', object => 'event',
                query => 'SELECT id, event, user_id, at AS timestamp FROM events');
         SELECT vitally.create_sync('n1', 'd', 'nps_response', 'upsert', 'SELECT id, user_id, score, feedback, responded_at FROM nps', 'id');",
    )
    .unwrap();
    let listed: String = scalar(&mut db, "SELECT string_agg(name || ':' || object || ':' || behavior, ' ' ORDER BY name) FROM vitally.syncs");
    assert_eq!(
        listed,
        "a1:account:upsert a2:account:update_only e1:event:append n1:nps_response:upsert o1:organization:upsert \
         o2:organization:update_only u1:user:upsert u2:user:update_only"
    );
}

fn each_definition_mistake_is_refused_with_how_to_fix_it() {
    let mut db = fresh_database(cluster(), "syncs_errors");
    db.batch_execute(SETUP).unwrap();
    destination(&mut db, "d");
    db.batch_execute("SELECT vitally.create_destination('rest_only', rest_api_key => 'rk', rest_url => 'http://127.0.0.1:9/r')").unwrap();
    db.batch_execute("SELECT vitally.create_sync('taken', 'd', 'account', 'upsert', 'SELECT id FROM accounts', 'id')").unwrap();
    let q = "'SELECT id, name FROM accounts'";
    let cases = [
        (format!("SELECT vitally.create_sync('x', 'd', 'event', 'upsert', {q}, 'id')"), "22023",
         "object 'event' cannot use behavior 'upsert': valid pairs are user, account, organization with 'upsert' or 'update_only'; event with 'append'; nps_response with 'upsert'"),
        (format!("SELECT vitally.create_sync('x', 'd', 'contact', 'upsert', {q}, 'id')"), "22023", "unknown object \"contact\""),
        (format!("SELECT vitally.create_sync('x', 'd', 'account', 'merge', {q}, 'id')"), "22023", "unknown behavior \"merge\""),
        (format!("SELECT vitally.create_sync('x', 'nowhere', 'account', 'upsert', {q}, 'id')"), "42704", "destination \"nowhere\" does not exist"),
        (format!("SELECT vitally.create_sync('x', 'rest_only', 'account', 'upsert', {q}, 'id')"), "55000",
         "sync \"x\" needs the Analytics API key, and destination \"rest_only\" has none"),
        ("SELECT vitally.create_sync('x', 'd', 'account', 'upsert', 'SELEC id FROM accounts', 'id')".into(), "42601",
         "the query of sync \"x\" failed: syntax error at or near"),
        ("SELECT vitally.create_sync('x', 'd', 'account', 'upsert', 'SELECT id FROM nope', 'id')".into(), "42P01",
         "the query of sync \"x\" failed: relation \"nope\" does not exist"),
        ("SELECT vitally.create_sync('x', 'd', 'account', 'upsert', 'SELECT 1 AS id) q; DELETE FROM accounts; SELECT * FROM (SELECT 1', 'id')".into(),
         "42601", "the query of sync \"x\" is not one SELECT statement"),
        (format!("SELECT vitally.create_sync('x', 'd', 'account', 'upsert', {q}, 'account_id')"), "22023",
         "the sync key column \"account_id\" is not in the query's result; its columns are: id, name"),
        (format!("SELECT vitally.create_sync('x', 'd', 'account', 'upsert', {q}, 'id', mappings => '{{\"traits.n\": \"nme\"}}')"), "22023",
         "the mapping of \"traits.n\" names column \"nme\", which is not in the query's result; its columns are: id, name"),
        (format!("SELECT vitally.create_sync('x', 'd', 'account', 'upsert', {q}, 'id', mappings => '{{\"score\": \"name\"}}')"), "22023",
         "\"score\" is not a field of a account"),
        (format!("SELECT vitally.create_sync('x', 'd', 'account', 'upsert', {q}, 'id', options => '{{\"skip_null\": true}}')"), "22023",
         "unknown option \"skip_null\""),
        (format!("SELECT vitally.create_sync('taken', 'd', 'account', 'upsert', {q}, 'id')"), "42710", "sync \"taken\" already exists"),
        ("SELECT vitally.create_sync('x', 'd', 'user', 'upsert', 'SELECT id, email FROM people', 'id')".into(), "22023",
         "a user sync needs each user's accounts: add a column named account_ids to the query (or map accountIds)"),
        ("SELECT vitally.create_sync('x', 'd', 'event', 'append', 'SELECT id, event FROM events', 'id')".into(), "22023",
         "an event sync needs to say who did it"),
        ("SELECT vitally.sync('nope')".into(), "42704", "sync \"nope\" does not exist"),
    ];
    for (sql, code, text) in &cases {
        let err = sql_error(db.batch_execute(sql));
        assert!(err.message.contains(text), "{sql}\n got: {}", err.message);
        assert_eq!(&err.code, code, "{sql}: {}", err.message);
    }
    let accounts: i64 = scalar(&mut db, "SELECT count(*) FROM accounts");
    assert_eq!(accounts, 0, "the smuggled DELETE never ran");
    let syncs: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.syncs");
    assert_eq!(syncs, 1);
}

fn alter_changes_only_what_is_given_and_checks_again() {
    let mut db = fresh_database(cluster(), "syncs_alter");
    db.batch_execute(SETUP).unwrap();
    destination(&mut db, "d");
    destination(&mut db, "d2");
    db.batch_execute(
        "INSERT INTO accounts VALUES ('a', 'A', NULL), ('b', 'B', NULL);
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT id, name FROM accounts', 'id');
         SELECT vitally.sync('s');",
    )
    .unwrap();
    vitally_e2e::deliver_by_hand(&mut db, "s");
    let err = sql_error(db.batch_execute("SELECT vitally.alter_sync('s', query => 'SELECT name FROM accounts')"));
    assert!(err.message.contains("sync key column \"id\" is not in the query's result"), "{}", err.message);
    db.batch_execute("SELECT vitally.alter_sync('s', options => '{\"skip_nulls\": true}')").unwrap();
    let row = db.query_one("SELECT destination, query, options::text FROM vitally.syncs WHERE name = 's'", &[]).unwrap();
    assert_eq!(row.get::<_, &str>(0), "d");
    assert_eq!(row.get::<_, &str>(1), "SELECT id, name FROM accounts");
    assert_eq!(row.get::<_, &str>(2), "{\"skip_nulls\": true}");

    // Another destination is another workspace: everything is sent again.
    db.batch_execute("SELECT vitally.alter_sync('s', destination => 'd2')").unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    let queued: i64 = records_queued(&mut db, run);
    assert_eq!(queued, 2);
}

fn a_disabled_sync_refuses_to_run() {
    let mut db = fresh_database(cluster(), "syncs_disabled");
    db.batch_execute(SETUP).unwrap();
    destination(&mut db, "d");
    db.batch_execute(
        "SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT id FROM accounts', 'id');
         SELECT vitally.alter_sync('s', enabled => false);",
    )
    .unwrap();
    let err = sql_error(db.batch_execute("SELECT vitally.sync('s')"));
    assert_eq!((err.code.as_str(), err.message.as_str()), ("55000", "sync \"s\" is disabled"));
    assert_eq!(err.hint.as_deref(), Some("SELECT vitally.alter_sync('s', enabled => true);"));
}

fn a_destination_in_use_is_dropped_only_with_cascade() {
    let mut db = fresh_database(cluster(), "syncs_cascade");
    db.batch_execute(SETUP).unwrap();
    destination(&mut db, "d");
    db.batch_execute("SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT id FROM accounts', 'id')").unwrap();
    let err = sql_error(db.batch_execute("SELECT vitally.drop_destination('d')"));
    assert_eq!((err.code.as_str(), err.message.as_str()), ("2BP01", "destination \"d\" is used by syncs: s"));
    db.batch_execute("SELECT vitally.drop_destination('d', cascade => true)").unwrap();
    let n: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.syncs");
    assert_eq!(n, 0);
    db.batch_execute("SELECT vitally.create_sync('gone', 'd2x', 'account', 'upsert', 'SELECT id FROM accounts', 'id')").unwrap_err();
}
