//! Who may see what: keys are readable by no role but the extension's owner, and a
//! role sees and changes only its own destinations.

use crate::cluster;
use std::time::Duration;
use vitally_e2e::{eventually, fresh_database, sql_error, Client};

crate::trials!("02_security":
    a_role_without_the_grant_can_do_nothing,
    a_granted_role_cannot_reach_another_roles_destination,
    no_role_reads_keys_from_the_tables_or_pg_stats,
    keys_never_reach_error_text_or_the_server_log,
    superuser_sees_every_destination,
);

/// Creates a login role, granted the use of the extension or not.
fn role(admin: &mut Client, name: &str, granted: bool) {
    admin.batch_execute(&format!("CREATE ROLE {name} LOGIN")).unwrap();
    if granted {
        // The one statement the README documents.
        admin.batch_execute(&format!("GRANT vitally_user TO {name}")).unwrap();
    }
}

fn a_role_without_the_grant_can_do_nothing() {
    let mut admin = fresh_database(cluster(), "sec_nogrant");
    role(&mut admin, "sec_nobody", false);
    let mut db = cluster().connect("sec_nogrant", "sec_nobody");
    for sql in [
        "SELECT vitally.create_destination('x', analytics_api_key => 'k')",
        "SELECT * FROM vitally.destinations",
        "SELECT vitally.drop_destination('x')",
    ] {
        let err = sql_error(db.batch_execute(sql));
        assert_eq!(err.code, "42501", "{sql}: {}", err.message);
    }
}

fn a_granted_role_cannot_reach_another_roles_destination() {
    let mut admin = fresh_database(cluster(), "sec_reach");
    role(&mut admin, "sec_alice", true);
    role(&mut admin, "sec_bob", true);
    let mut alice = cluster().connect("sec_reach", "sec_alice");
    let mut bob = cluster().connect("sec_reach", "sec_bob");
    alice.batch_execute("SELECT vitally.create_destination('alice_dest', analytics_api_key => 'alice-secret')").unwrap();

    let seen: i64 = bob.query_one("SELECT count(*) FROM vitally.destinations", &[]).unwrap().get(0);
    assert_eq!(seen, 0, "bob does not see alice's destination");
    let mine: i64 = alice.query_one("SELECT count(*) FROM vitally.destinations WHERE owner = 'sec_alice'::regrole", &[]).unwrap().get(0);
    assert_eq!(mine, 1, "alice sees her own");
    for sql in [
        "SELECT vitally.alter_destination('alice_dest', analytics_url => 'http://127.0.0.1:1/steal')",
        "SELECT vitally.alter_destination('alice_dest', analytics_api_key => 'bobs-key')",
        "SELECT vitally.drop_destination('alice_dest')",
    ] {
        let err = sql_error(bob.batch_execute(sql));
        assert_eq!(err.code, "42704", "{sql}");
        assert_eq!(err.message, "destination \"alice_dest\" does not exist");
    }
    // Nothing bob tried changed it.
    let url: String = admin.query_one("SELECT analytics_url FROM vitally.destinations", &[]).unwrap().get(0);
    assert_eq!(url, "https://api.vitally.io/analytics/v1");
}

fn no_role_reads_keys_from_the_tables_or_pg_stats() {
    let mut admin = fresh_database(cluster(), "sec_tables");
    role(&mut admin, "sec_carol", true);
    role(&mut admin, "sec_dave", true);
    let mut carol = cluster().connect("sec_tables", "sec_carol");
    for i in 0..5 {
        carol.batch_execute(&format!("SELECT vitally.create_destination('c{i}', analytics_api_key => 'carol-secret-{i}')")).unwrap();
    }
    admin.batch_execute("ANALYZE vitally.destination_secret").unwrap();
    // The statistics do hold the keys: the check below is about who may read them.
    let stats: String = admin
        .query_one("SELECT histogram_bounds::text FROM pg_stats WHERE tablename = 'destination_secret' AND attname = 'analytics_api_key'", &[])
        .unwrap()
        .get(0);
    assert!(stats.contains("carol-secret-"));

    for who in ["sec_carol", "sec_dave"] {
        let mut db = cluster().connect("sec_tables", who);
        for sql in ["SELECT * FROM vitally.destination_secret", "SELECT * FROM vitally.destination", "COPY vitally.destination_secret TO STDOUT"] {
            assert_eq!(sql_error(db.batch_execute(sql)).code, "42501", "{who}: {sql}");
        }
        let rows: i64 = db.query_one("SELECT count(*) FROM pg_stats WHERE schemaname = 'vitally'", &[]).unwrap().get(0);
        assert_eq!(rows, 0, "{who} sees no statistics of the extension's tables");
        let text: String = db.query_one("SELECT coalesce(string_agg(d::text, ','), '') FROM vitally.destinations d", &[]).unwrap().get(0);
        assert!(!text.contains("carol-secret"), "the view never shows a key");
    }
}

fn keys_never_reach_error_text_or_the_server_log() {
    let mut admin = fresh_database(cluster(), "sec_log");
    role(&mut admin, "sec_erin", true);
    // log_statement = 'all' puts every statement in the log: the hook must hide these.
    admin.batch_execute("ALTER ROLE sec_erin SET log_statement = 'all'").unwrap();
    let mut erin = cluster().connect("sec_log", "sec_erin");
    let secret = "erin-secret-7f3a9";
    erin.batch_execute(&format!("SELECT vitally.create_destination('e', analytics_api_key => '{secret}')")).unwrap();
    let bad_calls = [
        format!("SELECT vitally.create_destination('e2', analytics_api_key => '{secret}', region => 'mars')"),
        format!("SELECT vitally.create_destination('e', analytics_api_key => '{secret}')"),
        format!("SELECT vitally.alter_destination('e', rest_api_key => '{secret}', rest_url => 'http://10.0.0.1/')"),
        format!("SELECT vitally.create_destination('e3', rest_api_key => '{secret} x')"),
    ];
    for sql in &bad_calls {
        let result = erin.batch_execute(sql);
        let err = result.unwrap_err();
        let db = err.as_db_error().unwrap();
        let all = format!("{} {:?} {:?}", db.message(), db.detail(), db.hint());
        assert!(!all.contains(secret), "error text has the key: {all}");
    }
    // A key passed as a bound parameter is logged as a DETAIL line by log_statement.
    erin.query_one("SELECT vitally.create_destination($1, rest_api_key => $2)", &[&"e5", &secret]).unwrap();
    let marker = eventually("the hidden statements in the log", Duration::from_secs(10), || {
        let log = cluster().log();
        (log.matches("statement hidden by vitally_sync").count() >= 6).then_some(log)
    });
    assert!(!marker.contains(secret), "the server log has the key");
}

fn superuser_sees_every_destination() {
    let mut admin = fresh_database(cluster(), "sec_super");
    role(&mut admin, "sec_frank", true);
    let mut frank = cluster().connect("sec_super", "sec_frank");
    frank.batch_execute("SELECT vitally.create_destination('f', rest_api_key => 'k')").unwrap();
    admin.batch_execute("SELECT vitally.create_destination('g', rest_api_key => 'k')").unwrap();
    let n: i64 = admin.query_one("SELECT count(*) FROM vitally.destinations", &[]).unwrap().get(0);
    assert_eq!(n, 2);
    let n: i64 = frank.query_one("SELECT count(*) FROM vitally.destinations", &[]).unwrap().get(0);
    assert_eq!(n, 1);
}
