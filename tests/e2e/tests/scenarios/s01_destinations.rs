//! Destinations: create, alter, drop, and every way to get one wrong.

use crate::cluster;
use vitally_e2e::{fresh_database, sql_error};

crate::trials!("01_destinations":
    create_returns_id_and_view_shows_whether_keys_are_set,
    each_mistake_is_refused_with_a_message_that_says_what_to_do,
    alter_changes_only_the_arguments_given,
    drop_removes_the_destination_and_its_keys,
);

fn create_returns_id_and_view_shows_whether_keys_are_set() {
    let mut db = fresh_database(cluster(), "dest_create");
    let id: i64 = db
        .query_one(
            "SELECT vitally.create_destination(name => 'prod', analytics_api_key => 'ak', subdomain => 'acme',
                    rest_url => 'http://127.0.0.1:8787/resources/')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(id > 0);
    let row = db
        .query_one(
            "SELECT name, region, subdomain, analytics_url, rest_url, analytics_api_key_set, rest_api_key_set, owner::text
               FROM vitally.destinations",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "prod");
    assert_eq!(row.get::<_, &str>(1), "us");
    assert_eq!(row.get::<_, &str>(2), "acme");
    assert_eq!(row.get::<_, &str>(3), "https://acme.api.vitally.io/analytics/v1", "the workspace's own Analytics host, as documented");
    assert_eq!(row.get::<_, &str>(4), "http://127.0.0.1:8787/resources");
    assert!(row.get::<_, bool>(5));
    assert!(!row.get::<_, bool>(6));
    assert_eq!(row.get::<_, &str>(7), "postgres");
}

fn each_mistake_is_refused_with_a_message_that_says_what_to_do() {
    let mut db = fresh_database(cluster(), "dest_errors");
    db.batch_execute("SELECT vitally.create_destination('taken', analytics_api_key => 'k')").unwrap();
    // (call, SQLSTATE, part of the message)
    let cases = [
        ("SELECT vitally.create_destination('a', analytics_api_key => 'k', region => 'mars')", "22023", "unknown region \"mars\": use 'us' or 'eu'"),
        (
            "SELECT vitally.create_destination('a', analytics_api_key => 'k', analytics_url => 'http://10.1.2.3/analytics/v1')",
            "22023",
            "must use https",
        ),
        (
            "SELECT vitally.create_destination('a', rest_api_key => 'k', rest_url => 'http://vitally.example.com/resources')",
            "22023",
            "must use https",
        ),
        ("SELECT vitally.create_destination('a', rest_api_key => 'k', rest_url => 'not a url')", "22023", "is not a valid URL"),
        ("SELECT vitally.create_destination('taken', analytics_api_key => 'k')", "42710", "destination \"taken\" already exists"),
        ("SELECT vitally.create_destination('a')", "22023", "needs at least one API key"),
        ("SELECT vitally.create_destination('a', analytics_api_key => '  ', rest_api_key => '')", "22023", "needs at least one API key"),
        ("SELECT vitally.create_destination('a', analytics_api_key => 'two words')", "22023", "analytics API key is malformed"),
        ("SELECT vitally.create_destination('a', analytics_api_key => 'k', subdomain => 'acme.vitally.io')", "22023", "invalid subdomain"),
        ("SELECT vitally.create_destination('', analytics_api_key => 'k')", "22023", "name must not be empty"),
        ("SELECT vitally.alter_destination('nope', region => 'eu')", "42704", "destination \"nope\" does not exist"),
        ("SELECT vitally.alter_destination('taken', analytics_api_key => '')", "22023", "would be left without an API key"),
        ("SELECT vitally.drop_destination('nope')", "42704", "destination \"nope\" does not exist"),
    ];
    for (sql, code, text) in cases {
        let err = sql_error(db.batch_execute(sql));
        assert_eq!(err.code, code, "{sql}: {}", err.message);
        assert!(err.message.contains(text), "{sql}: got \"{}\"", err.message);
    }
    let hint = sql_error(db.batch_execute("SELECT vitally.create_destination('a', analytics_api_key => 'k', region => 'x')")).hint;
    assert!(hint.unwrap().contains("region"), "errors carry a hint");
    let n: i64 = db.query_one("SELECT count(*) FROM vitally.destinations", &[]).unwrap().get(0);
    assert_eq!(n, 1, "no refused call left anything behind");
}

fn alter_changes_only_the_arguments_given() {
    let mut db = fresh_database(cluster(), "dest_alter");
    db.batch_execute(
        "SELECT vitally.create_destination('d', analytics_api_key => 'ak', subdomain => 'acme', region => 'us');
         SELECT vitally.alter_destination('d', rest_api_key => 'Basic cmVzdA==');",
    )
    .unwrap();
    // No EU Analytics host is documented: an EU destination with an Analytics key names it.
    let err = sql_error(db.batch_execute("SELECT vitally.alter_destination('d', region => 'eu')"));
    assert_eq!(err.code, "22023", "{}", err.message);
    assert!(err.message.contains("an EU destination with an Analytics key needs analytics_url"), "{}", err.message);
    assert!(err.hint.unwrap().contains("analytics_url =>"));
    let err = sql_error(db.batch_execute("SELECT vitally.create_destination('eu', analytics_api_key => 'ak', region => 'eu')"));
    assert!(err.message.contains("an EU destination with an Analytics key needs analytics_url"), "{}", err.message);
    db.batch_execute(
        "SELECT vitally.create_destination('eu_rest', rest_api_key => 'rk', region => 'eu'); SELECT vitally.drop_destination('eu_rest')",
    )
    .unwrap();
    db.batch_execute("SELECT vitally.alter_destination('d', region => 'eu', analytics_url => 'https://acme.api.vitally-eu.io/analytics/v1', analytics_api_key => 'ak')")
        .unwrap();
    let row = db.query_one("SELECT region, subdomain, analytics_api_key_set, rest_api_key_set, rest_url FROM vitally.destinations", &[]).unwrap();
    assert_eq!(row.get::<_, &str>(0), "eu");
    assert_eq!(row.get::<_, &str>(1), "acme", "untouched by an alter that did not name it");
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3));
    assert_eq!(row.get::<_, &str>(4), "https://rest.vitally-eu.io/resources");

    db.batch_execute("SELECT vitally.alter_destination('d', analytics_api_key => '', subdomain => '')").unwrap();
    let row = db.query_one("SELECT subdomain, analytics_api_key_set, rest_api_key_set FROM vitally.destinations", &[]).unwrap();
    assert_eq!(row.get::<_, Option<&str>>(0), None, "an empty string clears");
    assert!(!row.get::<_, bool>(1) && row.get::<_, bool>(2));
}

fn drop_removes_the_destination_and_its_keys() {
    let mut db = fresh_database(cluster(), "dest_drop");
    db.batch_execute(
        "SELECT vitally.create_destination('d', analytics_api_key => 'ak');
         SELECT vitally.drop_destination('d');",
    )
    .unwrap();
    let row = db.query_one("SELECT (SELECT count(*) FROM vitally.destination), (SELECT count(*) FROM vitally.destination_secret)", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 0));
}
