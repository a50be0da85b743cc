//! Live syncs (`vitally.watch`): what a committed change costs the writer, and how soon
//! it reaches Vitally at 20 ms a request, on a watched table of BENCH_ROWS rows.

use crate::Row;
use std::time::{Duration, Instant};
use vitally_e2e::{eventually, scalar, Client, Cluster};
use vitally_emulator::{Config, Emulator, Faults};

/// Seats Vitally holds for account `id`, if any.
fn seats(vitally: &Emulator, id: i64) -> Option<i64> {
    vitally.object("accounts", &id.to_string())?.traits.get("seats")?.as_i64()
}

/// Rows of `table` read so far (sequential and by index) and index scans, once every
/// session has reported: the planner reports when it stops.
fn rows_read(db: &mut Client, table: &str) -> (i64, i64) {
    db.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    let row = db
        .query_one(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0), coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
            &[&table],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn planner_stopped(db: &mut Client) {
    eventually("the live planner to stop", Duration::from_secs(60), || {
        let n: i64 = scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'vitally_sync live planner'");
        (n == 0).then_some(())
    });
}

fn settled(db: &mut Client) {
    eventually("live changes to settle", Duration::from_secs(600), || {
        let n: i64 = scalar(db, "SELECT (SELECT count(*) FROM vitally.change) + (SELECT count(*) FROM vitally.record WHERE status = 'pending')");
        (n == 0).then_some(())
    });
}

pub fn live(n: i64, seconds: i64, table: &mut Vec<Row>) {
    let cluster =
        Cluster::start("bench-live", &["shared_preload_libraries = 'vitally_sync'", "vitally.database = 'bench'", "shared_buffers = '1GB'"]);
    cluster.admin("postgres").batch_execute("CREATE DATABASE bench").unwrap();
    let mut db = cluster.admin("bench");
    db.batch_execute("SET client_min_messages = error; CREATE EXTENSION vitally_sync").unwrap();
    eventually("the worker", Duration::from_secs(30), || cluster.log().contains("extension found in database \"bench\"").then_some(()));
    let vitally = Emulator::spawn(
        "127.0.0.1:0",
        Config { record_received: false, faults: Faults { latency_ms: 20, ..Faults::default() }, ..Config::default() },
    )
    .unwrap();
    db.execute("SELECT vitally.create_destination('d', analytics_api_key => 'test-analytics-key', analytics_url => $1)", &[&vitally.analytics_url()])
        .unwrap();
    // The watched table and an unwatched copy, each with its sync.
    db.batch_execute(&format!(
        "CREATE TABLE watched AS SELECT g AS id, 'Account ' || g AS name, g % 50 AS seats FROM generate_series(1, {n}) g;
         ALTER TABLE watched ADD PRIMARY KEY (id);
         CREATE TABLE unwatched AS SELECT * FROM watched;
         ALTER TABLE unwatched ADD PRIMARY KEY (id);
         SELECT vitally.create_sync('watched', 'd', 'account', 'upsert', 'SELECT id, name, seats FROM watched', 'id');
         SELECT vitally.create_sync('unwatched', 'd', 'account', 'upsert', 'SELECT id, name, seats FROM unwatched', 'id');
         SELECT vitally.watch('watched', 'watched');"
    ))
    .unwrap();
    db.batch_execute("VACUUM ANALYZE watched").unwrap();
    db.batch_execute("VACUUM ANALYZE unwatched").unwrap();

    // What the writer pays: one-row updates, each its own transaction (as an
    // application writes), and in one PL/pgSQL loop (the trigger alone).
    let loops = 5_000;
    let by_client = |db: &mut Client, t: &str| {
        let update = db.prepare(&format!("UPDATE {t} SET seats = seats + 1 WHERE id = $1")).unwrap();
        let start = Instant::now();
        for i in 0..loops {
            db.execute(&update, &[&((i * 7919) % n as i32 + 1)]).unwrap();
        }
        start.elapsed().as_secs_f64()
    };
    let in_plpgsql = |db: &mut Client, t: &str| {
        let start = Instant::now();
        db.batch_execute(&format!(
            "DO $$ BEGIN FOR i IN 1..{loops} LOOP UPDATE {t} SET seats = seats + 1 WHERE id = (i * 7919) % {n} + 1; END LOOP; END $$"
        ))
        .unwrap();
        start.elapsed().as_secs_f64()
    };
    by_client(&mut db, "unwatched"); // warm
    let plain = by_client(&mut db, "unwatched");
    // The writer alone: the sync paused, so its changes are marked but planned later
    // (on 2 cores, planning and delivering them at the same time takes the writer's CPU).
    db.batch_execute("SELECT vitally.alter_sync('watched', enabled => false)").unwrap();
    let alone = by_client(&mut db, "watched");
    db.batch_execute("SELECT vitally.alter_sync('watched', enabled => true)").unwrap();
    settled(&mut db);
    let watched = by_client(&mut db, "watched");
    settled(&mut db);
    table.push(Row {
        what: "live: one-row updates, watched vs unwatched".into(),
        value: alone / loops as f64 * 1e6,
        baseline: plain / loops as f64 * 1e6,
        unit: "us",
        note: format!("{loops} UPDATEs by primary key, each its own transaction, from a client over loopback; the writer alone; target at most 1.5x"),
    });
    table.push(Row {
        what: "live: the same, planned and delivered meanwhile".into(),
        value: watched / loops as f64 * 1e6,
        baseline: plain / loops as f64 * 1e6,
        unit: "us",
        note: "the live planner and the worker (and the emulator, in this process) share the machine's cores with the writer".into(),
    });
    in_plpgsql(&mut db, "unwatched");
    let plain = in_plpgsql(&mut db, "unwatched");
    let watched = in_plpgsql(&mut db, "watched");
    settled(&mut db);
    table.push(Row {
        what: "live: one-row updates in PL/pgSQL, watched vs not".into(),
        value: watched / loops as f64 * 1e6,
        baseline: plain / loops as f64 * 1e6,
        unit: "us",
        note: format!("{loops} UPDATE statements in one DO loop, one transaction: the statement trigger's own cost"),
    });

    // 100 rows in one statement, spread over the table: live, and the same change to the
    // unwatched copy sent by vitally.sync() (its state first recorded as delivered).
    let ids: Vec<i32> = (0..100).map(|i| (i * 9973) % n as i32 + 1).collect();
    planner_stopped(&mut db);
    let (read_before, scans_before) = rows_read(&mut db, "watched");
    db.execute("UPDATE watched SET seats = -1 WHERE id = ANY($1)", &[&ids]).unwrap();
    let start = Instant::now();
    eventually("100 live changes delivered", Duration::from_secs(600), || ids.iter().all(|&id| seats(&vitally, id as i64) == Some(-1)).then_some(()));
    let live_took = start.elapsed().as_secs_f64();
    planner_stopped(&mut db);
    let (read_after, scans_after) = rows_read(&mut db, "watched");
    // Its first run delivered for real (the worker serves this database).
    let first: i64 = scalar(&mut db, "SELECT vitally.sync('unwatched')");
    let status: String = scalar(&mut db, &format!("SELECT vitally.wait({first}, timeout => '1 hour')"));
    assert_eq!(status, "succeeded");
    db.execute("UPDATE unwatched SET seats = -1 WHERE id = ANY($1)", &[&ids]).unwrap();
    let start = Instant::now();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('unwatched')");
    let status: String = scalar(&mut db, &format!("SELECT vitally.wait({run}, timeout => '1 hour')"));
    let scheduled_took = start.elapsed().as_secs_f64();
    assert_eq!(status, "succeeded");
    table.push(Row {
        what: format!("live: 100 rows in one statement, {n}-row table"),
        value: live_took,
        baseline: scheduled_took,
        unit: "s",
        note: format!(
            "commit to all delivered at 20 ms a request, vs vitally.sync() of the same change; {} rows read (the UPDATE's 100 included), {} index scans; target under 3 s, under 1,000 rows",
            read_after - read_before,
            scans_after - scans_before
        ),
    });

    // One-row changes, one at a time: commit to delivered.
    let mut each = Vec::new();
    for i in 0..20i64 {
        let id = (i * 104_729) % n + 1;
        db.execute("UPDATE watched SET seats = $2 WHERE id = $1", &[&(id as i32), &(-100 - i as i32)]).unwrap();
        let start = Instant::now();
        eventually("a one-row change delivered", Duration::from_secs(60), || (seats(&vitally, id) == Some(-100 - i)).then_some(()));
        each.push(start.elapsed().as_secs_f64());
    }
    each.sort_by(|a, b| a.total_cmp(b));
    let delay: String = scalar(&mut db, "SHOW vitally.live_delay");
    table.push(Row {
        what: "live: one-row change, commit to delivered (median)".into(),
        value: each[each.len() / 2],
        baseline: 1.0,
        unit: "s",
        note: format!("of 20, max {:.2} s; vitally.live_delay {delay}; baseline: the 1 s target", each[each.len() - 1]),
    });

    // A steady stream: 100 rows every 100 ms (distinct rows per batch) for `seconds`;
    // each batch's lag is from its commit to its last row seen by Vitally.
    let batches = (seconds * 10) as usize;
    let mut committed: Vec<Instant> = Vec::with_capacity(batches);
    let mut arrived: Vec<Option<Instant>> = vec![None; batches];
    let mut next_unseen = 0;
    let per_batch = 100i64;
    let update = db.prepare("UPDATE watched SET seats = $3 WHERE id BETWEEN $1 AND $2").unwrap();
    let began = Instant::now();
    let look = |arrived: &mut Vec<Option<Instant>>, next_unseen: &mut usize, upto: usize| {
        while *next_unseen < upto {
            let b = *next_unseen as i64;
            let last = (b * per_batch + per_batch - 1) % n + 1;
            if seats(&vitally, last) != Some(-1000 - b) {
                break;
            }
            arrived[*next_unseen] = Some(Instant::now());
            *next_unseen += 1;
        }
    };
    for b in 0..batches {
        let due = began + Duration::from_millis(100 * b as u64);
        while Instant::now() < due {
            look(&mut arrived, &mut next_unseen, b);
            std::thread::sleep(Duration::from_millis(5));
        }
        let first = (b as i64 * per_batch) % n + 1;
        db.execute(&update, &[&(first as i32), &((first + per_batch - 1) as i32), &(-1000 - b as i32)]).unwrap();
        committed.push(Instant::now());
    }
    let wrote = began.elapsed().as_secs_f64();
    eventually("the stream delivered", Duration::from_secs(600), || {
        look(&mut arrived, &mut next_unseen, batches);
        (next_unseen == batches).then_some(())
    });
    let mut lags: Vec<f64> = committed.iter().zip(&arrived).map(|(c, a)| a.unwrap().duration_since(*c).as_secs_f64()).collect();
    lags.sort_by(|a, b| a.total_cmp(b));
    table.push(Row {
        what: format!("live: {} rows/s for {seconds} s, worst lag", per_batch * 10),
        value: lags[lags.len() - 1],
        baseline: 3.0,
        unit: "s",
        note: format!(
            "commit to delivered per 100-row batch: median {:.2} s; {:.0} rows/s written; baseline: the 3 s target",
            lags[lags.len() / 2],
            (batches as i64 * per_batch) as f64 / wrote
        ),
    });
}
