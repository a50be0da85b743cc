//! The background worker: started by the preload, alive without the extension, back after being killed.

use crate::{cluster, APP_DB};
use std::time::Duration;
use vitally_e2e::{eventually, Client};

crate::trials!("03_worker": worker_lives_through_drop_extension_and_terminate);

fn worker_pid(db: &mut Client) -> Option<i32> {
    db.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'vitally_sync worker' AND datname = $1", &[&APP_DB])
        .unwrap()
        .map(|r| r.get(0))
}

fn worker_lives_through_drop_extension_and_terminate() {
    let mut db = cluster().admin(APP_DB);
    let first = eventually("the worker to start", Duration::from_secs(30), || worker_pid(&mut db));

    // Without the extension the worker waits quietly: same process, no error.
    let before = cluster().log().matches("extension not installed in database \"app\"").count();
    db.batch_execute("DROP EXTENSION vitally_sync").unwrap();
    eventually("the worker to notice the extension is gone", Duration::from_secs(30), || {
        (cluster().log().matches("extension not installed in database \"app\"").count() > before).then_some(())
    });
    assert_eq!(worker_pid(&mut db), Some(first), "the worker kept running");
    db.batch_execute("CREATE EXTENSION vitally_sync").unwrap();

    // Killed, it comes back.
    db.batch_execute(&format!("SELECT pg_terminate_backend({first})")).unwrap();
    let second = eventually("the worker to restart", Duration::from_secs(30), || worker_pid(&mut db).filter(|p| *p != first));
    assert_ne!(first, second);
}
