//! No route from a granted role to the extension owner's rights, and no key that leaves
//! by a side door. Each test is what a hostile member of `vitally_user` tries: SQL in
//! names with `standard_conforming_strings` off, functions attached to its own types,
//! session state left behind when a superuser runs its sync, default privileges, a URL
//! that redirects, keys in dynamic SQL, and a URL moved to a host of its choosing.
//!
//! The witness: `grab()` records `current_user` and tries to make its caller superuser.
//! Whatever the attack, it must only ever run as the hostile role, and never succeed.

use crate::{cluster, APP_DB};
use std::time::Duration;
use vitally_e2e::{emulator, eventually, fresh_database, scalar, sql_error, Client, Cluster, Faults};

crate::trials!("13_elevation":
    names_cannot_close_a_literal_whatever_standard_conforming_strings_says,
    functions_of_a_users_types_never_run_as_the_extension_owner,
    a_superuser_running_a_roles_sync_keeps_its_session,
    hostile_default_privileges_grant_nothing_on_install_or_upgrade,
    redirects_are_never_followed_and_foreign_bodies_never_shown,
    url_overrides_name_only_allowed_hosts,
    keys_in_dynamic_sql_prepared_statements_and_typos_stay_out_of_the_log,
    moving_a_url_takes_the_key_again,
    a_vitally_user_that_can_log_in_is_refused_at_install,
);

/// A database with a hostile granted role `role` owning schema `role`, a table it may
/// read, and the witness `role.grab()`.
fn hostile(db_name: &str, role: &str) -> Client {
    let mut admin = fresh_database(cluster(), db_name);
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT vitally_user TO {role};
             CREATE SCHEMA {role} AUTHORIZATION {role};
             CREATE TABLE {role}_rows (id int, name text); INSERT INTO {role}_rows VALUES (1, 'a'), (2, 'b');
             GRANT SELECT ON {role}_rows TO {role};"
        ))
        .unwrap();
    let mut me = cluster().connect(db_name, role);
    me.batch_execute(&format!(
        "CREATE TABLE {role}.seen (who text, what text);
         GRANT INSERT ON {role}.seen TO PUBLIC;
         CREATE FUNCTION {role}.grab(what text DEFAULT 'grab') RETURNS text LANGUAGE plpgsql AS $f$
         BEGIN
             INSERT INTO {role}.seen VALUES (current_user, what);
             BEGIN
                 EXECUTE 'ALTER ROLE {role} SUPERUSER';
             EXCEPTION WHEN OTHERS THEN NULL;
             END;
             RETURN what;
         END $f$;
         GRANT EXECUTE ON FUNCTION {role}.grab(text) TO PUBLIC;
         SELECT vitally.create_destination('{role}_d', analytics_api_key => 'k', analytics_url => 'http://127.0.0.1:9/analytics/v1');"
    ))
    .unwrap();
    admin
}

/// Who the witness ran as, and that the role is still no superuser.
fn assert_never_elevated(admin: &mut Client, role: &str) -> Vec<(String, String)> {
    let seen: Vec<(String, String)> =
        admin.query(&format!("SELECT who, what FROM {role}.seen"), &[]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(seen.iter().all(|(who, _)| who == role), "the witness ran as another role: {seen:?}");
    let superuser: bool = scalar(admin, &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{role}'"));
    assert!(!superuser, "{role} became superuser");
    seen
}

fn names_cannot_close_a_literal_whatever_standard_conforming_strings_says() {
    let role = "el_inject";
    let mut admin = hostile("elev_inject", role);
    let mut me = cluster().connect("elev_inject", role);
    // Each closes a literal quoted by doubling quotes only, with standard_conforming_strings
    // off, and calls the witness as whoever runs the statement.
    let names = [
        format!(r"a\', {role}.grab('trait')) || jsonb_build_object(\'b"),
        format!(
            r"a\', 1)) AS payload, s.dups FROM (SELECT 1) x, LATERAL (SELECT {role}.grab('lateral')) g, pg_temp.vitally_stage s OFFSET 0) r OFFSET 0) p; SELECT {role}.grab('statement'); --"
        ),
        r"c:\temp\'\\''".to_string(),
    ];
    for (i, scs) in ["off", "on"].iter().enumerate() {
        me.batch_execute(&format!("SET standard_conforming_strings = {scs}")).unwrap();
        let sync = format!("inject_{i}");
        let mappings = serde_json::json!({ format!("traits.{}", names[0]): "name", format!("traits.{}", names[1]): "name", format!("traits.{}", names[2]): "name" });
        // A column name is a name too.
        let query = format!(r#"SELECT id, name, name AS "{}" FROM {role}_rows"#, names[0].replace('"', "\"\""));
        me.execute(
            "SELECT vitally.create_sync($1, $2, 'account', 'upsert', $3, 'id', $4::text::jsonb)",
            &[&sync, &format!("{role}_d"), &query, &mappings.to_string()],
        )
        .unwrap();
        let preview: Vec<serde_json::Value> = me
            .query("SELECT payload::text FROM vitally.preview($1)", &[&sync])
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
            .collect();
        assert_eq!(preview.len(), 2);
        for name in &names {
            let mut values: Vec<String> = preview.iter().map(|p| p["traits"][name.as_str()].as_str().unwrap_or("").to_string()).collect();
            values.sort();
            assert_eq!(values, ["a", "b"], "the trait name {name:?} arrives as given: {preview:?}");
        }
        let run: i64 = me.query_one("SELECT vitally.sync($1)", &[&sync]).unwrap().get(0);
        assert_eq!(scalar::<i64>(&mut me, &format!("SELECT records_queued FROM vitally.sync_runs WHERE id = {run}")), 2);
        // The conventions too: every column a trait, the hostile column name among them.
        me.execute("SELECT vitally.alter_sync($1, mappings => 'null')", &[&sync]).unwrap();
        me.query("SELECT * FROM vitally.preview($1)", &[&sync]).unwrap();
        admin.batch_execute(&format!("SET standard_conforming_strings = {scs}")).unwrap();
        admin.query("SELECT * FROM vitally.preview($1)", &[&sync]).unwrap();
        admin.query_one("SELECT vitally.sync($1, full_resync => true)", &[&sync]).unwrap();
    }
    let seen = assert_never_elevated(&mut admin, role);
    assert!(seen.is_empty(), "no name became code: {seen:?}");
}

fn functions_of_a_users_types_never_run_as_the_extension_owner() {
    let role = "el_types";
    let mut admin = hostile("elev_types", role);
    let mut me = cluster().connect("elev_types", role);
    // An enum with a cast to json (to_jsonb uses it), a composite with such a field, an
    // array of it, a range whose subtype_diff is the witness (ANALYZE calls it), and a
    // domain whose check calls it.
    me.batch_execute(&format!(
        "CREATE TYPE {role}.mood AS ENUM ('calm', 'angry');
         CREATE FUNCTION {role}.mood_json({role}.mood) RETURNS json LANGUAGE sql
             AS $f$ SELECT pg_catalog.to_json({role}.grab('cast')) $f$;
         CREATE CAST ({role}.mood AS json) WITH FUNCTION {role}.mood_json({role}.mood);
         CREATE TYPE {role}.pair AS (m {role}.mood, n int);
         CREATE FUNCTION {role}.diff(a int4, b int4) RETURNS float8 LANGUAGE sql IMMUTABLE
             AS $f$ SELECT (a - b)::float8 + 0 * length({role}.grab('subtype_diff')) $f$;
         CREATE TYPE {role}.span AS RANGE (subtype = int4, subtype_diff = {role}.diff);
         CREATE FUNCTION {role}.ok(v text) RETURNS bool LANGUAGE sql AS $f$ SELECT {role}.grab('domain') IS NOT NULL $f$;
         CREATE DOMAIN {role}.checked AS text CHECK ({role}.ok(VALUE));"
    ))
    .unwrap();
    let query = format!(
        "SELECT id, 'calm'::{role}.mood AS mood, ROW('angry', id)::{role}.pair AS pair,
                ARRAY['calm', 'angry']::{role}.mood[] AS moods, {role}.span(id, id + 10) AS span,
                name::{role}.checked AS checked, 'calm'::{role}.mood AS {role}_key_part
           FROM {role}_rows"
    );
    for (sync, key) in [("by_id", "id"), ("by_mood", "mood")] {
        me.execute("SELECT vitally.create_sync($1, $2, 'account', 'upsert', $3, $4)", &[&sync, &format!("{role}_d"), &query, &key]).unwrap();
    }
    let payload: String = scalar(&mut me, "SELECT payload::text FROM vitally.preview('by_id') ORDER BY sync_key LIMIT 1");
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["traits"]["mood"], "cast", "the cast ran, as the role: {payload}");
    assert_eq!(payload["traits"]["pair"]["m"], "cast", "{payload}");
    assert_eq!(payload["traits"]["moods"][1], "cast", "{payload}");
    assert_eq!(payload["traits"]["span"], "[1,11)", "{payload}");
    // Run as the role, then as a superuser (with a table of many rows, so ANALYZE samples).
    for (db, who) in [(&mut me, "role"), (&mut admin, "superuser")] {
        for sync in ["by_id", "by_mood"] {
            let run: i64 = db.query_one("SELECT vitally.sync($1, full_resync => true)", &[&sync]).unwrap().get(0);
            let read: i64 = scalar(db, &format!("SELECT rows_read FROM vitally.sync_runs WHERE id = {run}"));
            assert_eq!(read, 2, "{sync} run by the {who}");
            db.query("SELECT * FROM vitally.preview($1)", &[&sync]).unwrap();
        }
    }
    admin.execute(&format!("INSERT INTO {role}_rows SELECT g, 'n' || g FROM generate_series(3, 400) g"), &[]).unwrap();
    admin.query_one("SELECT vitally.sync('by_id')", &[]).unwrap();
    let seen = assert_never_elevated(&mut admin, role);
    for what in ["cast", "domain"] {
        assert!(seen.iter().any(|(_, w)| w == what), "the {what} function ran (as the role): {seen:?}");
    }
}

fn a_superuser_running_a_roles_sync_keeps_its_session() {
    let role = "el_session";
    let mut admin = hostile("elev_session", role);
    let mut me = cluster().connect("elev_session", role);
    // An equality operator on text that says "equal" to everything, for the extension's
    // statements to pick up if the query's search_path stuck.
    me.batch_execute(&format!(
        "CREATE FUNCTION {role}.always(text, text) RETURNS bool LANGUAGE sql IMMUTABLE AS $f$ SELECT {role}.grab('operator') IS NOT NULL $f$;
         CREATE OPERATOR {role}.= (LEFTARG = text, RIGHTARG = text, FUNCTION = {role}.always);
         CREATE FUNCTION {role}.plant() RETURNS text LANGUAGE plpgsql AS $f$
         BEGIN
             PERFORM pg_catalog.set_config('search_path', '{role}, pg_catalog, public', false);
             PERFORM pg_catalog.set_config('standard_conforming_strings', 'off', false);
             PERFORM pg_catalog.set_config('work_mem', '64kB', false);
             BEGIN
                 EXECUTE 'CREATE TEMP TABLE planted AS SELECT 1';
             EXCEPTION WHEN OTHERS THEN PERFORM {role}.grab('temp table refused: ' || SQLERRM);
             END;
             BEGIN
                 EXECUTE 'PREPARE planted AS SELECT 1';
             EXCEPTION WHEN OTHERS THEN PERFORM {role}.grab('prepare refused: ' || SQLERRM);
             END;
             BEGIN
                 PERFORM pg_catalog.set_config('role', 'postgres', false);
             EXCEPTION WHEN OTHERS THEN PERFORM {role}.grab('role refused: ' || SQLERRM);
             END;
             RETURN 'planted';
         END $f$;
         CREATE FUNCTION {role}.plant_immutable() RETURNS text LANGUAGE plpgsql IMMUTABLE AS $f$
         BEGIN
             PERFORM pg_catalog.set_config('search_path', '{role}, pg_catalog', false);
             RETURN 'folded';
         END $f$;
         SELECT vitally.create_sync('planting', '{role}_d', 'account', 'upsert',
             'SELECT id, name, {role}.plant() AS p, {role}.plant_immutable() AS f FROM public.{role}_rows');"
    ))
    .unwrap();
    let before: Vec<String> =
        ["search_path", "standard_conforming_strings", "work_mem"].iter().map(|s| scalar::<String>(&mut admin, &format!("SHOW {s}"))).collect();
    admin.query("SELECT * FROM vitally.preview('planting')", &[]).unwrap();
    let run: i64 = scalar(&mut admin, "SELECT vitally.sync('planting')");
    admin
        .execute(
            "SELECT vitally.alter_sync('planting', query => $1)",
            &[&format!("SELECT id, name, {role}.plant() AS p, {role}.plant_immutable() AS f, 1 AS g FROM public.{role}_rows")],
        )
        .unwrap();
    let after: Vec<String> =
        ["search_path", "standard_conforming_strings", "work_mem"].iter().map(|s| scalar::<String>(&mut admin, &format!("SHOW {s}"))).collect();
    assert_eq!(before, after, "the role's query changed the superuser's settings");
    let temp: Vec<String> =
        admin.query("SELECT relname::text FROM pg_class WHERE relnamespace = pg_my_temp_schema()", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(temp.is_empty(), "nothing temporary is left in the superuser's session: {temp:?}");
    let prepared: i64 = scalar(&mut admin, "SELECT count(*) FROM pg_prepared_statements WHERE name = 'planted'");
    assert_eq!(prepared, 0);
    assert_eq!(scalar::<i64>(&mut admin, &format!("SELECT records_queued FROM vitally.sync_runs WHERE id = {run}")), 2);
    let seen = assert_never_elevated(&mut admin, role);
    for refused in ["temp table refused", "prepare refused", "role refused"] {
        assert!(seen.iter().any(|(_, w)| w.starts_with(refused)), "{refused}: {seen:?}");
    }
    assert!(!seen.iter().any(|(_, w)| w == "operator"), "the planted operator was never used: {seen:?}");
}

/// Every grant on an object of the extension, as `kind name grantee`.
fn extension_grants(db: &mut Client) -> Vec<String> {
    db.query(
        "WITH objs AS (
             SELECT 'rel' AS kind, c.oid::regclass::text AS name, c.relacl AS acl, c.relowner AS owner
               FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
              WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'vitally_sync')
             UNION ALL
             SELECT 'func', p.oid::regprocedure::text, coalesce(p.proacl, acldefault('f', p.proowner)), p.proowner
               FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
              WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'vitally_sync')
             UNION ALL
             SELECT 'schema', nspname, nspacl, nspowner FROM pg_namespace WHERE nspname = 'vitally')
         SELECT DISTINCT o.kind || ' ' || o.name || ' ' || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
           FROM objs o, aclexplode(o.acl) a
          WHERE a.grantee <> o.owner
          ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn hostile_default_privileges_grant_nothing_on_install_or_upgrade() {
    let mut admin = cluster().admin("postgres");
    admin.batch_execute("CREATE ROLE el_defpriv LOGIN").unwrap();
    let mut expected: Option<Vec<String>> = None;
    for (db, version) in [("elev_defpriv_new", None), ("elev_defpriv_upgraded", Some("0.1.0"))] {
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db}")).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        let mut su = cluster().admin(db);
        su.batch_execute(
            "ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON TABLES TO el_defpriv;
             ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON SEQUENCES TO el_defpriv;
             ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT EXECUTE ON FUNCTIONS TO el_defpriv;
             ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON SCHEMAS TO el_defpriv;
             ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON TYPES TO el_defpriv;
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO PUBLIC;",
        )
        .unwrap();
        match version {
            None => su.batch_execute("CREATE EXTENSION vitally_sync").unwrap(),
            Some(v) => su.batch_execute(&format!("CREATE EXTENSION vitally_sync VERSION '{v}'; ALTER EXTENSION vitally_sync UPDATE")).unwrap(),
        }
        let grants = extension_grants(&mut su);
        let allowed = |g: &String| g.ends_with(" vitally_user") || g.ends_with(" pg_monitor");
        assert!(
            grants.iter().all(allowed),
            "{db}: grants beyond the documented ones: {:?}",
            grants.iter().filter(|g| !allowed(g)).collect::<Vec<_>>()
        );
        assert!(grants.iter().any(|g| g == "schema vitally pg_monitor"), "{grants:?}");
        assert!(grants.iter().any(|g| g == "rel vitally.metrics pg_monitor"), "{grants:?}");
        su.batch_execute("SELECT vitally.create_destination('dp', analytics_api_key => 'defpriv-secret')").unwrap();
        let mut x = cluster().connect(db, "el_defpriv");
        for sql in ["SELECT * FROM vitally.destination_secret", "SELECT * FROM vitally.destinations", "SELECT vitally.sync('x')"] {
            assert_eq!(sql_error(x.batch_execute(sql)).code, "42501", "{db}: {sql}");
        }
        match &expected {
            None => expected = Some(grants),
            Some(e) => assert_eq!(e, &grants, "an upgrade grants what a fresh install grants"),
        }
    }
}

fn redirects_are_never_followed_and_foreign_bodies_never_shown() {
    let target = emulator(Faults::default());
    let bouncer = emulator(Faults { redirect_to: Some(format!("http://{}", target.addr())), ..Faults::default() });
    let foreign = emulator(Faults { foreign_status: Some(400), ..Faults::default() });
    let mut db = cluster().admin(APP_DB);
    db.batch_execute("CREATE TABLE el_redirect_rows AS SELECT g AS id, 'n' || g AS name FROM generate_series(1, 3) g").unwrap();
    for (name, vitally) in [("el_bounce", &bouncer), ("el_foreign", &foreign)] {
        db.execute(
            "SELECT vitally.create_destination($1, analytics_api_key => 'test-analytics-key', rest_api_key => 'test-rest-token',
                    analytics_url => $2, rest_url => $3)",
            &[&name, &vitally.analytics_url(), &vitally.rest_url()],
        )
        .unwrap();
        let checks = db.query("SELECT api, ok, http_status, detail FROM vitally.check_destination($1)", &[&name]).unwrap();
        assert_eq!(checks.len(), 2);
        for row in &checks {
            let (ok, detail): (bool, String) = (row.get(1), row.get(3));
            assert!(!ok, "{name}: {detail}");
            assert!(!detail.contains("s3cr3t") && !detail.contains("<html>"), "{name}: a foreign body is shown: {detail}");
            assert!(detail.chars().count() < 400, "{detail}");
        }
        db.execute(&format!("SELECT vitally.create_sync('{name}', '{name}', 'account', 'upsert', 'SELECT * FROM el_redirect_rows')"), &[]).unwrap();
        db.execute(&format!("SELECT vitally.create_sync('{name}_rest', '{name}', 'account', 'update_only', 'SELECT * FROM el_redirect_rows')"), &[])
            .unwrap();
        for sync in [name.to_string(), format!("{name}_rest")] {
            let run: i64 = db.query_one("SELECT vitally.sync($1)", &[&sync]).unwrap().get(0);
            let status: String = scalar(&mut db, &format!("SELECT vitally.wait({run}, '30 seconds')"));
            assert_eq!(status, "failed", "{sync}");
            let errors: Vec<(Option<i32>, String)> = db
                .query("SELECT http_status, error FROM vitally.records WHERE sync_name = $1", &[&sync])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            assert_eq!(errors.len(), 3);
            for (status, error) in &errors {
                assert!(!error.contains("s3cr3t") && !error.contains("<html>"), "{sync}: {error}");
                if name == "el_bounce" {
                    assert_eq!(*status, Some(307));
                    assert!(error.contains("redirect"), "{error}");
                }
            }
        }
    }
    assert_eq!(target.counters().requests, 0, "nothing followed the redirect");
}

fn url_overrides_name_only_allowed_hosts() {
    let mut admin = fresh_database(cluster(), "elev_hosts");
    admin.batch_execute("CREATE ROLE el_hosts LOGIN; GRANT vitally_user TO el_hosts").unwrap();
    let mut me = cluster().connect("elev_hosts", "el_hosts");
    let err = sql_error(me.batch_execute("SET vitally.allowed_hosts = '*'"));
    assert_eq!(err.code, "42501", "only a superuser sets allowed_hosts: {}", err.message);
    let err = sql_error(
        me.batch_execute("SELECT vitally.create_destination('h', analytics_api_key => 'k', analytics_url => 'https://vitally.io.evil.example/a')"),
    );
    assert_eq!(err.code, "22023");
    assert!(err.message.contains("vitally.allowed_hosts"), "{}", err.message);
    admin.batch_execute("SET vitally.allowed_hosts = '*.vitally.io'").unwrap();
    for url in ["http://127.0.0.1:9/a", "http://localhost:9/a", "https://evilvitally.io/a"] {
        let err =
            sql_error(admin.batch_execute(&format!("SELECT vitally.create_destination('h', analytics_api_key => 'k', analytics_url => '{url}')")));
        assert!(err.message.contains("is not in vitally.allowed_hosts (*.vitally.io)"), "{url}: {}", err.message);
    }
    admin
        .batch_execute(
            "SELECT vitally.create_destination('ok', analytics_api_key => 'k', analytics_url => 'https://acme.api.vitally.io/analytics/v1')",
        )
        .unwrap();
    // A URL stored while allowed is checked again at each use.
    admin
        .batch_execute(
            "RESET vitally.allowed_hosts; SELECT vitally.create_destination('h', analytics_api_key => 'k', analytics_url => 'http://127.0.0.1:9/a')",
        )
        .unwrap();
    admin.batch_execute("SET vitally.allowed_hosts = '*.vitally.io'").unwrap();
    let (ok, detail): (bool, String) = {
        let row = admin.query_one("SELECT ok, detail FROM vitally.check_destination('h')", &[]).unwrap();
        (row.get(0), row.get(1))
    };
    assert!(!ok && detail.contains("not in vitally.allowed_hosts"), "{detail}");
}

fn keys_in_dynamic_sql_prepared_statements_and_typos_stay_out_of_the_log() {
    let mut admin = fresh_database(cluster(), "elev_log");
    admin
        .batch_execute(
            "CREATE ROLE el_log LOGIN; GRANT vitally_user TO el_log; ALTER ROLE el_log SET log_statement = 'all';
             CREATE ROLE el_log_quiet LOGIN; GRANT vitally_user TO el_log_quiet;
             CREATE ROLE el_log_snoop LOGIN IN ROLE pg_read_all_stats;",
        )
        .unwrap();
    let mut me = cluster().connect("elev_log", "el_log");
    let key = |n: u32| format!("dyn-secret-{n}-9c2e");
    let wrapper = "CREATE FUNCTION pg_temp.mk(k text) RETURNS bigint LANGUAGE plpgsql AS $f$
         DECLARE id bigint;
         BEGIN
             EXECUTE pg_catalog.format('SELECT vitally.create_destination(%L, analytics_api_key => %L, region => %L)', 'w', k, 'mars') INTO id;
             RETURN id;
         END $f$";
    me.batch_execute("SET standard_conforming_strings = off").unwrap();
    // A wrapper function: its caller's text does not name create_destination (so only a
    // session without log_statement keeps it out of the log: docs/security.md says so), and the
    // failure's CONTEXT has the dynamic statement.
    let mut quiet = cluster().connect("elev_log", "el_log_quiet");
    quiet.batch_execute(&format!("{}; SELECT pg_temp.mk('{}')", wrapper, key(2))).unwrap_err();
    me.batch_execute("PREPARE p(text) AS SELECT vitally.create_destination('p', analytics_api_key => $1, region => 'mars')").unwrap();
    let attempts = [
        // A DO block with dynamic SQL: the failure's CONTEXT names the statement.
        format!(
            "DO $$ BEGIN EXECUTE format('SELECT vitally.create_destination(%L, analytics_api_key => %L, region => %L)', 'd', '{}', 'mars'); END $$",
            key(1)
        ),
        // A prepared statement: EXECUTE's text has the key, the DETAIL its definition.
        format!("EXECUTE p('{}')", key(3)),
        // A misspelt argument: fails before our function runs.
        format!("SELECT vitally.create_destination('t', analytics_apikey => '{}')", key(4)),
        format!("SELECT vitally.alter_destination('t', rest_api_kee => E'{}')", key(5)),
        // Caught inside the session, then another error.
        format!(
            "DO $$ BEGIN BEGIN PERFORM vitally.create_destination('c', analytics_api_key => '{}', region => 'mars'); EXCEPTION WHEN OTHERS THEN NULL; END; RAISE EXCEPTION 'later'; END $$",
            key(6)
        ),
    ];
    let mut snoop = cluster().connect("elev_log", "el_log_snoop");
    let my_pid: i32 = scalar(&mut me, "SELECT pg_backend_pid()");
    for (i, sql) in attempts.iter().enumerate() {
        let err = me.batch_execute(sql).unwrap_err();
        let text = format!("{err:?}");
        assert!(!text.contains("dyn-secret"), "attempt {i}: the error has the key: {text}");
        let activity: String = snoop.query_one("SELECT coalesce(query, '') FROM pg_stat_activity WHERE pid = $1", &[&my_pid]).unwrap().get(0);
        assert!(!activity.contains("dyn-secret"), "attempt {i}: pg_stat_activity has the key: {activity}");
    }
    // Extended protocol: the key a bound parameter, the call failing.
    let err = me.execute("SELECT vitally.create_destination($1, analytics_api_key => $2, region => 'mars')", &[&"x", &key(7)]).unwrap_err();
    assert!(!format!("{err:?}").contains("dyn-secret"));
    let log = eventually("the attempts in the log", Duration::from_secs(10), || {
        let log = cluster().log();
        log.contains("unknown region \"mars\"").then_some(log)
    });
    for n in 1..=7 {
        assert!(
            !log.contains(&key(n)),
            "the server log has key {n}:\n{}",
            log.lines().filter(|l| l.contains("dyn-secret")).collect::<Vec<_>>().join("\n")
        );
    }
}

fn moving_a_url_takes_the_key_again() {
    let honest = emulator(Faults::default());
    let thief = emulator(Faults::default());
    let mut db = cluster().admin(APP_DB);
    db.execute(
        "SELECT vitally.create_destination('el_move', analytics_api_key => 'test-analytics-key', analytics_url => $1)",
        &[&honest.analytics_url()],
    )
    .unwrap();
    let err = sql_error(db.execute("SELECT vitally.alter_destination('el_move', analytics_url => $1)", &[&thief.analytics_url()]));
    assert_eq!(err.code, "22023");
    assert!(err.message.contains("needs analytics_api_key again"), "{}", err.message);
    assert!(err.hint.unwrap().contains("never sent to a host it was not given for"));
    // The same URL again is no move; a region change stays on Vitally's hosts.
    db.execute("SELECT vitally.alter_destination('el_move', analytics_url => $1)", &[&honest.analytics_url()]).unwrap();
    db.execute("SELECT vitally.alter_destination('el_move', subdomain => 'acme')", &[]).unwrap();
    // With the key given again, or cleared, it moves.
    db.execute("SELECT vitally.alter_destination('el_move', analytics_url => $1, analytics_api_key => 'a-new-key')", &[&thief.analytics_url()])
        .unwrap();
    db.batch_execute("CREATE TABLE el_move_rows AS SELECT 1 AS id; SELECT vitally.create_sync('el_move', 'el_move', 'account', 'upsert', 'SELECT * FROM el_move_rows')")
        .unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('el_move')");
    scalar::<String>(&mut db, &format!("SELECT vitally.wait({run}, '30 seconds')"));
    // The thief accepts the old key: had it been sent, the account would be there.
    assert_eq!(thief.count("accounts"), 0, "the old key went to the new host");
    assert!(thief.counters().responses_401 > 0, "the new host got the new key");
    let err = sql_error(
        db.execute("SELECT vitally.alter_destination('el_move', analytics_url => $1, analytics_api_key => '')", &[&honest.analytics_url()]),
    );
    assert!(err.message.contains("would be left without an API key"), "{}", err.message);
}

fn a_vitally_user_that_can_log_in_is_refused_at_install() {
    let bare = Cluster::start("elev-vuser", &[]);
    let mut db = bare.admin("postgres");
    db.batch_execute("CREATE ROLE vitally_user LOGIN").unwrap();
    let err = sql_error(db.batch_execute("CREATE EXTENSION vitally_sync"));
    assert_eq!(err.code, "42710", "{}", err.message);
    assert!(err.message.contains("role vitally_user already exists and can log in"), "{}", err.message);
    db.batch_execute("ALTER ROLE vitally_user NOLOGIN; CREATE EXTENSION vitally_sync").unwrap();
}
