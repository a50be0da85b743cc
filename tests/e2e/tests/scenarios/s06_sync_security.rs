//! Syncs belong to roles: a role sees and runs only its own, and a sync's query
//! reads only what its owner may read, whoever runs it.

use crate::cluster;
use vitally_e2e::{fresh_database, scalar, sql_error};

crate::trials!("06_sync_security":
    a_role_sees_and_runs_only_its_own_syncs,
    a_query_reads_only_what_its_owner_may_read,
    a_superuser_running_a_roles_sync_gains_it_nothing,
    the_per_row_comparison_is_ours_and_leaves_nothing_behind,
);

fn setup(db_name: &str, roles: &[&str]) -> postgres::Client {
    let mut admin = fresh_database(cluster(), db_name);
    for r in roles {
        admin.batch_execute(&format!("CREATE ROLE {r} LOGIN; GRANT vitally_user TO {r}")).unwrap();
    }
    admin
        .batch_execute(
            "CREATE TABLE public_accounts (id int, name text); INSERT INTO public_accounts VALUES (1, 'a');
             CREATE TABLE private_accounts (id int, name text); INSERT INTO private_accounts VALUES (1, 'secret');
             GRANT SELECT ON public_accounts TO PUBLIC;",
        )
        .unwrap();
    admin
}

fn own_destination(db: &mut postgres::Client, name: &str) {
    db.batch_execute(&format!("SELECT vitally.create_destination('{name}', analytics_api_key => 'k', analytics_url => 'http://127.0.0.1:9/a')"))
        .unwrap();
}

fn a_role_sees_and_runs_only_its_own_syncs() {
    let mut admin = setup("ssec_own", &["ss_alice", "ss_bob"]);
    let mut alice = cluster().connect("ssec_own", "ss_alice");
    let mut bob = cluster().connect("ssec_own", "ss_bob");
    own_destination(&mut alice, "alice_d");
    own_destination(&mut bob, "bob_d");
    alice
        .batch_execute("SELECT vitally.create_sync('alice_s', 'alice_d', 'account', 'upsert', 'SELECT * FROM public_accounts', 'id'); SELECT vitally.sync('alice_s')")
        .unwrap();

    for view in ["vitally.syncs", "vitally.sync_runs", "vitally.records", "vitally.sync_status"] {
        let n: i64 = scalar(&mut bob, &format!("SELECT count(*) FROM {view}"));
        assert_eq!(n, 0, "bob sees nothing of alice's in {view}");
        let n: i64 = scalar(&mut alice, &format!("SELECT count(*) FROM {view}"));
        assert_eq!(n, 1, "alice sees her own in {view}");
    }
    for sql in [
        "SELECT vitally.sync('alice_s')",
        "SELECT * FROM vitally.preview('alice_s')",
        "SELECT vitally.alter_sync('alice_s', enabled => false)",
        "SELECT vitally.reset('alice_s')",
        "SELECT vitally.drop_sync('alice_s')",
    ] {
        let err = sql_error(bob.batch_execute(sql));
        assert_eq!((err.code.as_str(), err.message.as_str()), ("42704", "sync \"alice_s\" does not exist"), "{sql}");
    }
    // Nor can bob point a sync of his at alice's destination (and her keys).
    let err = sql_error(bob.batch_execute("SELECT vitally.create_sync('b', 'alice_d', 'account', 'upsert', 'SELECT * FROM public_accounts', 'id')"));
    assert_eq!(err.message, "destination \"alice_d\" does not exist");
    let n: i64 = scalar(&mut admin, "SELECT count(*) FROM vitally.syncs");
    assert_eq!(n, 1);
}

fn a_query_reads_only_what_its_owner_may_read() {
    let mut admin = setup("ssec_read", &["ss_carol"]);
    let mut carol = cluster().connect("ssec_read", "ss_carol");
    own_destination(&mut carol, "d");
    let err = sql_error(carol.batch_execute("SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM private_accounts', 'id')"));
    assert_eq!(err.code, "42501");
    assert_eq!(err.message, "the query of sync \"s\" failed: permission denied for table private_accounts");

    // Granted, defined, then revoked: the run fails the same way, and queues nothing.
    admin.batch_execute("GRANT SELECT ON private_accounts TO ss_carol").unwrap();
    carol.batch_execute("SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM private_accounts', 'id')").unwrap();
    admin.batch_execute("REVOKE SELECT ON private_accounts FROM ss_carol").unwrap();
    let err = sql_error(carol.batch_execute("SELECT vitally.sync('s')"));
    assert_eq!(err.code, "42501");
    let queued: i64 = scalar(&mut admin, "SELECT count(*) FROM vitally.record");
    assert_eq!(queued, 0);
}

fn a_superuser_running_a_roles_sync_gains_it_nothing() {
    let mut admin = setup("ssec_super", &["ss_dave"]);
    let mut dave = cluster().connect("ssec_super", "ss_dave");
    own_destination(&mut dave, "d");
    admin.batch_execute("GRANT SELECT ON private_accounts TO ss_dave").unwrap();
    dave.batch_execute("SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM private_accounts', 'id')").unwrap();
    admin.batch_execute("REVOKE SELECT ON private_accounts FROM ss_dave").unwrap();
    // The superuser may run dave's sync, but the query runs with dave's privileges.
    let err = sql_error(admin.batch_execute("SELECT vitally.sync('s')"));
    assert_eq!(err.message, "the query of sync \"s\" failed: permission denied for table private_accounts");
    admin.batch_execute("GRANT SELECT ON private_accounts TO ss_dave").unwrap();
    let run: i64 = scalar(&mut admin, "SELECT vitally.sync('s')");
    assert!(run > 0);
}

/// The comparison the query calls per row is `pg_temp.vitally_admit`, made by the
/// extension for one call: a function of that name the caller left in its temporary
/// schema is dropped first, never called (it would run inside our pass), and nothing is
/// left after the call, also when the caller's search_path puts its own schema first.
fn the_per_row_comparison_is_ours_and_leaves_nothing_behind() {
    let mut admin = setup("ssec_admit", &["sa_mallory"]);
    admin.batch_execute("CREATE SCHEMA mallory_fns AUTHORIZATION sa_mallory; GRANT CREATE ON SCHEMA public TO sa_mallory").unwrap();
    let mut mallory = cluster().connect("ssec_admit", "sa_mallory");
    own_destination(&mut mallory, "m_d");
    mallory
        .batch_execute(
            "CREATE TABLE mallory_seen (n int);
             CREATE TABLE mallory_rows (id text, name text); INSERT INTO mallory_rows VALUES ('1', 'a');
             CREATE FUNCTION pg_temp.vitally_admit(int8, VARIADIC text[]) RETURNS int8
                 LANGUAGE plpgsql AS 'BEGIN INSERT INTO public.mallory_seen VALUES (1); RETURN 1; END';
             SET search_path = mallory_fns, public, pg_catalog;
             SELECT vitally.create_sync('m_s', 'm_d', 'account', 'upsert', 'SELECT * FROM mallory_rows', 'id');",
        )
        .unwrap();
    let run: i64 = scalar(&mut mallory, "SELECT vitally.sync('m_s')");
    let queued: i64 = scalar(&mut mallory, &format!("SELECT records_queued FROM vitally.sync_runs WHERE id = {run}"));
    assert_eq!(queued, 1);
    let seen: i64 = scalar(&mut mallory, "SELECT count(*) FROM mallory_seen");
    assert_eq!(seen, 0, "the caller's function was never called");
    // A query cannot name ours: it does not exist when a sync is created or altered.
    let refused = mallory
        .batch_execute("SELECT vitally.create_sync('m_call', 'm_d', 'account', 'upsert', 'SELECT id, pg_temp.vitally_admit(1::int8) AS a FROM mallory_rows', 'id')")
        .unwrap_err();
    let message = refused.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("does not exist"), "{message}");
    let left: i64 = scalar(&mut mallory, "SELECT count(*) FROM pg_proc WHERE proname = 'vitally_admit'");
    assert_eq!(left, 0, "nothing is left after the call");
}
