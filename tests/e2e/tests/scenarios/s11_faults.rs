//! Vitally misbehaving and Postgres stopping at the worst moment: every record is
//! delivered in the end, none failed, attempts are counted where they should be, and
//! a repeat always carries the same messageId (so Vitally drops it).

use crate::{cluster, APP_DB};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use vitally_e2e::{emulator, emulator_destination, eventually, scalar, Client, Cluster, Emulator, Faults};

crate::trials!("11_faults":
    requests_that_hang_past_the_timeout_are_tried_again,
    connections_dropped_mid_response_lose_nothing,
    vitally_down_for_a_minute_and_back_loses_nothing,
    a_fast_shutdown_while_planning_queues_nothing_and_loses_nothing,
);

/// How long the outage lasts (VITALLY_OUTAGE_SECS, default a minute).
fn outage() -> Duration {
    Duration::from_secs(std::env::var("VITALLY_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60))
}

/// Each of `accounts` arrived and was applied exactly once; any repeat was under the
/// messageId of the first (Vitally drops it).
fn applied_once_each(vitally: &Emulator, accounts: usize) {
    let mut seen: HashMap<String, (usize, Vec<String>)> = HashMap::new();
    for r in vitally.received().into_iter().filter(|r| r.kind == "account") {
        let e = seen.entry(r.body["accountId"].as_str().unwrap().to_string()).or_default();
        e.0 += r.applied as usize;
        e.1.push(r.message_id.unwrap());
    }
    assert_eq!(seen.len(), accounts, "every account arrived");
    for (account, (applied, ids)) in &seen {
        assert_eq!(*applied, 1, "{account} applied {applied} times");
        assert!(ids.iter().all(|id| *id == ids[0]), "{account} was repeated under another messageId");
    }
}

/// The figures of a sync's records: (delivered, not delivered, least attempts, most attempts).
fn fates(db: &mut Client, sync: &str) -> (i64, i64, i32, i32) {
    let r = db
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'delivered'), count(*) FILTER (WHERE status <> 'delivered'),
                    coalesce(min(attempts), 0), coalesce(max(attempts), 0)
               FROM vitally.records WHERE sync_name = $1",
            &[&sync],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

fn accounts_sync(db: &mut Client, name: &str, destination: &str, n: i64) {
    db.batch_execute(&format!(
        "CREATE TABLE {name} AS SELECT '{name}-' || g AS id, g AS seats FROM generate_series(1, {n}) g;
         SELECT vitally.create_sync('{name}', '{destination}', 'account', 'upsert', 'SELECT * FROM {name}');"
    ))
    .unwrap();
}

fn requests_that_hang_past_the_timeout_are_tried_again() {
    let cluster = Cluster::with_worker("hang", &["vitally.request_timeout = '500ms'"]);
    let vitally = emulator(Faults { latency_ms: 5_000, ..Faults::default() });
    let mut db = cluster.admin("app");
    emulator_destination(&mut db, "d", &vitally);
    accounts_sync(&mut db, "hang", "d", 30);
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('hang')");
    eventually("two timed-out attempts", Duration::from_secs(30), || (fates(&mut db, "hang").2 >= 2).then_some(()));
    let error: String = scalar(&mut db, "SELECT min(error) FROM vitally.records WHERE sync_name = 'hang'");
    assert!(error.contains("timed out"), "the record says why it waits: {error}");
    vitally.set_faults(Faults::default());
    assert_eq!(scalar::<String>(&mut db, &format!("SELECT vitally.wait({run}, '60 seconds')")), "succeeded");
    let (delivered, other, least, _) = fates(&mut db, "hang");
    assert_eq!((delivered, other), (30, 0));
    assert!(least >= 3, "two timeouts and a success are three attempts, got {least}");
    applied_once_each(&vitally, 30);
}

fn connections_dropped_mid_response_lose_nothing() {
    let mut db = cluster().admin(APP_DB);
    // Dropped after the status line: Vitally may have applied the batch, the worker cannot know.
    let vitally = emulator(Faults { drop_rate: 0.3, ..Faults::default() });
    emulator_destination(&mut db, "fault_drop_d", &vitally);
    accounts_sync(&mut db, "fault_drop", "fault_drop_d", 2_000);
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('fault_drop')");
    let status: String = scalar(&mut db, &format!("SELECT vitally.wait({run}, '120 seconds')"));
    let errors: String = scalar(
        &mut db,
        "SELECT coalesce(string_agg(DISTINCT attempts || ' attempts, ' || coalesce(http_status::text, 'no status') || ': ' || error, '; '), '')
           FROM vitally.records WHERE sync_name = 'fault_drop' AND status = 'failed'",
    );
    assert_eq!(status, "succeeded", "failed records: {errors}");
    let (delivered, other, _, most) = fates(&mut db, "fault_drop");
    assert_eq!((delivered, other), (2_000, 0));
    assert!(most >= 2, "some batch was dropped and sent again");
    applied_once_each(&vitally, 2_000);
}

fn vitally_down_for_a_minute_and_back_loses_nothing() {
    // Production's first retry delay, and a ceiling that brings delivery back soon after.
    let cluster = Cluster::with_worker("outage", &["vitally.retry_min_delay = '1s'", "vitally.retry_max_delay = '15s'"]);
    let vitally = emulator(Faults { down: true, ..Faults::default() });
    let mut db = cluster.admin("app");
    emulator_destination(&mut db, "d", &vitally);
    accounts_sync(&mut db, "outage", "d", 300);
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('outage')");
    let down_since = Instant::now();
    eventually("the outage to last its time", outage() + Duration::from_secs(30), || {
        let (delivered, other, least, _) = fates(&mut db, "outage");
        assert_eq!((delivered, other), (0, 300), "nothing delivered nor failed while Vitally is down");
        (down_since.elapsed() >= outage() && least >= 2).then_some(())
    });
    vitally.set_faults(Faults::default());
    assert_eq!(scalar::<String>(&mut db, &format!("SELECT vitally.wait({run}, '60 seconds')")), "succeeded");
    let (delivered, other, least, most) = fates(&mut db, "outage");
    assert_eq!((delivered, other), (300, 0));
    assert!(least >= 3 && most < 10, "attempts {least}..{most}: each try while down counted, none given up");
    applied_once_each(&vitally, 300);
}

fn a_fast_shutdown_while_planning_queues_nothing_and_loses_nothing() {
    let cluster = Cluster::with_worker("stop-planning", &[]);
    let vitally = emulator(Faults::default());
    let mut db = cluster.admin("app");
    emulator_destination(&mut db, "d", &vitally);
    db.batch_execute(
        "CREATE TABLE accounts AS SELECT 'p-' || g AS id, g AS seats FROM generate_series(1, 5000) g;
         SELECT vitally.create_sync('slow', 'd', 'account', 'upsert',
                'WITH pause AS (SELECT pg_sleep(2)) SELECT accounts.* FROM accounts, pause');",
    )
    .unwrap();
    let port = cluster.port;
    let planning = std::thread::spawn(move || {
        let mut db = Client::connect(&format!("host=127.0.0.1 port={port} dbname=app user=postgres"), postgres::NoTls).unwrap();
        db.query_one("SELECT vitally.sync('slow')", &[]).map(|r| r.get::<_, i64>(0))
    });
    eventually("the sync to be planning", Duration::from_secs(10), || {
        let n: i64 = scalar(&mut db, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT vitally.sync(''slow'')' AND state = 'active'");
        (n == 1).then_some(())
    });
    drop(db);
    cluster.stop_fast();
    assert!(planning.join().unwrap().is_err(), "the interrupted sync reports an error to its caller");
    cluster.start_again();
    let mut db = cluster.admin("app");
    let (runs, records): (i64, i64) = {
        let r = db.query_one("SELECT (SELECT count(*) FROM vitally.sync_run), (SELECT count(*) FROM vitally.record)", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((runs, records), (0, 0), "an interrupted run leaves nothing half-queued");
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('slow')");
    assert_eq!(scalar::<String>(&mut db, &format!("SELECT vitally.wait({run}, '60 seconds')")), "succeeded");
    assert_eq!(fates(&mut db, "slow").0, 5_000);
    assert_eq!(vitally.count("accounts"), 5_000);
}
