//! The delivery worker of database `app`: started by the launcher, stopped by DROP
//! EXTENSION and started again by CREATE EXTENSION, back after being killed; and the
//! launcher, back after being killed, without a second worker.

use crate::{cluster, APP_DB};
use std::time::Duration;
use vitally_e2e::{eventually, Client};

crate::trials!("03_worker": the_worker_follows_the_extension_and_comes_back_when_killed);

fn pids(db: &mut Client, backend_type: &str) -> Vec<i32> {
    db.query("SELECT pid FROM pg_stat_activity WHERE backend_type = $1 AND (datname = $2 OR datname IS NULL)", &[&backend_type, &APP_DB])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn worker_pid(db: &mut Client) -> Option<i32> {
    pids(db, "vitally_sync worker").first().copied()
}

fn the_worker_follows_the_extension_and_comes_back_when_killed() {
    let mut db = cluster().admin(APP_DB);
    let first = eventually("the worker to start", Duration::from_secs(30), || worker_pid(&mut db));

    // Without the extension the database's worker stops (its slot is free for another)...
    db.batch_execute("DROP EXTENSION vitally_sync").unwrap();
    // (stopped before the DROP runs: a round of its in between would deadlock with it).
    assert_eq!(worker_pid(&mut db), None, "the worker stopped before DROP EXTENSION ran");
    // ... and CREATE EXTENSION brings one within seconds.
    db.batch_execute("CREATE EXTENSION vitally_sync").unwrap();
    let second = eventually("a worker to start after CREATE EXTENSION", Duration::from_secs(10), || worker_pid(&mut db));
    assert_ne!(first, second);

    // Killed, it comes back.
    db.batch_execute(&format!("SELECT pg_terminate_backend({second})")).unwrap();
    let third = eventually("the worker to restart", Duration::from_secs(30), || worker_pid(&mut db).filter(|p| *p != second));

    // So does the launcher, and it adopts the running worker instead of starting another.
    let launcher = pids(&mut db, "vitally_sync launcher");
    assert_eq!(launcher.len(), 1, "one launcher");
    db.batch_execute(&format!("SELECT pg_terminate_backend({})", launcher[0])).unwrap();
    eventually("the launcher to restart", Duration::from_secs(30), || {
        pids(&mut db, "vitally_sync launcher").first().filter(|p| **p != launcher[0]).map(|_| ())
    });
    eventually("the new launcher to adopt the running worker", Duration::from_secs(30), || {
        cluster().log().contains(&format!("vitally_sync launcher: the worker of database \"app\" (pid {third}) runs on")).then_some(())
    });
    assert_eq!(pids(&mut db, "vitally_sync worker"), vec![third], "the same one worker");
}
