//! `vitally.sync`, `preview`, `reset`: working out what changed and queueing it.

use pgrx::prelude::*;

#[pg_schema]
mod vitally {
    use crate::catalog::{owned_sync, SyncRow};
    use crate::elevation::{as_extension_owner, caller, with_settings};
    use crate::errors::internal;
    use crate::errors::UserError;
    use crate::planning::{drop_stage, prepare_stored, stage, Pass, Prepared, PLANNING_SETTINGS, RECORDS};
    use crate::progress::Progress;
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use vitally_planner::sql::MAX_RECORD_BYTES;
    use vitally_planner::Behavior;

    /// Runs the sync's query now, in the caller's transaction, and queues the records
    /// that changed since their last delivery (or whose last try failed); the worker
    /// sends them after commit. Returns the run's id at once.
    #[pg_extern(volatile)]
    fn sync(name: &str, full_resync: default!(bool, false)) -> i64 {
        let me = caller();
        let sync = as_extension_owner(|| Spi::connect(|client| owned_sync(client, name, me, true)));
        if !sync.enabled {
            UserError::new(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("sync \"{name}\" is disabled"))
                .hint(format!("SELECT vitally.alter_sync('{}', enabled => true);", name.replace('\'', "''")))
                .raise();
        }
        let prepared = prepare_stored(&sync);
        let run_id = as_extension_owner(|| {
            Spi::get_one_with_args::<i64>(
                "INSERT INTO vitally.sync_run (sync_id, full_resync) VALUES ($1, $2) RETURNING id",
                &[sync.id.into(), full_resync.into()],
            )
            .unwrap_or_else(|e| internal(e))
            .expect("an id")
        });
        let mut progress = Progress::new(name);
        let rows = stage(&sync, &prepared, Pass::Run { full_resync }, &mut progress);
        let (queued, invalid) = as_extension_owner(|| with_settings(PLANNING_SETTINGS, || queue(&sync, &prepared, run_id, rows)));
        progress.phase(|| format!("queued {queued} records, {invalid} invalid, {} unchanged; run {run_id}", rows - queued - invalid));
        drop_stage();
        as_extension_owner(|| Spi::connect_mut(|client| crate::runs::finish_if_done(client, &[run_id])));
        crate::worker::wake_on_commit();
        crate::worker::warn_if_not_delivering();
        run_id
    }

    /// Inserts the invalid records and queues the others (the planning pass kept only
    /// those that need sending); records the run's figures.
    fn queue(sync: &SyncRow, prepared: &Prepared, run_id: i64, rows: i64) -> (i64, i64) {
        // An event's messageId comes from what identifies it in Vitally, its destination,
        // name and key, never from the sync: a re-created sync, reset() or full_resync
        // sends it under the same id and Vitally drops the repeat. (A JSON array keeps
        // the parts apart whatever they contain.) A change gets a fresh id, kept across
        // its retries.
        let message_id = match prepared.behavior {
            Behavior::Append => format!(
                "pg_catalog.md5(pg_catalog.jsonb_build_array('event', {}::text, s.payload->>'event', s.sync_key)::text)::uuid",
                vitally_planner::sql::quote_literal(&sync.destination.name)
            ),
            _ => "pg_catalog.gen_random_uuid()".to_string(),
        };
        // With unlink_removed_accounts, a user's record also names the accounts it was
        // delivered with and has left: the worker sends an unlink for each.
        let payload = if prepared.options.unlink_removed_accounts {
            "s.payload || coalesce((SELECT pg_catalog.jsonb_build_object('unlinkAccountIds', pg_catalog.jsonb_agg(a))
                                      FROM pg_catalog.jsonb_array_elements_text(d.account_ids) a
                                     WHERE NOT EXISTS (SELECT FROM pg_catalog.jsonb_array_elements_text(s.payload->'accountIds') c WHERE c = a)
                                    HAVING pg_catalog.count(*) > 0), '{}')"
        } else {
            "s.payload"
        };
        // A newer change replaces the pending one (a new version, so the worker can
        // tell); an event already pending stays as it is.
        let replace = format!(
            "UPDATE vitally.record r
                SET payload = {payload}, payload_hash = s.hash, message_id = {message_id}, run_id = $2,
                    version = r.version + 1, attempts = 0,
                    next_attempt_at = pg_catalog.now(),
                    queued_at = pg_catalog.now(), http_status = NULL, error = NULL
               FROM {RECORDS} s LEFT JOIN vitally.delivery_state d ON d.sync_id = $1 AND d.sync_key = s.sync_key
              WHERE r.sync_id = $1 AND r.status = 'pending' AND r.sync_key = s.sync_key
                AND s.error IS NULL AND r.payload_hash IS DISTINCT FROM s.hash AND $3"
        );
        let insert = format!(
            "INSERT INTO vitally.record (sync_id, run_id, sync_key, status, payload, payload_hash, message_id)
             SELECT $1, $2, s.sync_key, 'pending', {payload}, s.hash, {message_id}
               FROM {RECORDS} s LEFT JOIN vitally.delivery_state d ON d.sync_id = $1 AND d.sync_key = s.sync_key
              WHERE s.error IS NULL
                AND NOT EXISTS (SELECT FROM vitally.record p WHERE p.sync_id = $1 AND p.sync_key = s.sync_key AND p.status = 'pending')"
        );
        // A failed record whose key is queued again is no longer "failed now".
        let supersede = format!(
            "UPDATE vitally.record f SET replaced_at = pg_catalog.now()
               FROM {RECORDS} s
              WHERE f.sync_id = $1 AND f.status = 'failed' AND f.replaced_at IS NULL
                AND f.sync_key = s.sync_key AND s.error IS NULL"
        );
        let replaces = prepared.behavior != Behavior::Append;
        Spi::connect_mut(|client| {
            let invalid = client
                .update(
                    &format!(
                        "INSERT INTO vitally.record (sync_id, run_id, sync_key, status, payload, error)
                         SELECT $1, $2, s.sync_key, 'invalid',
                                CASE WHEN pg_catalog.octet_length(s.payload::text) <= {MAX_RECORD_BYTES} THEN s.payload END, s.error
                           FROM {RECORDS} s WHERE s.error IS NOT NULL"
                    ),
                    None,
                    &[sync.id.into(), run_id.into()],
                )
                .unwrap_or_else(|e| internal(e))
                .len() as i64;
            let replaced = client.update(&replace, None, &[sync.id.into(), run_id.into(), replaces.into()]).unwrap_or_else(|e| internal(e)).len();
            let inserted = client.update(&insert, None, &[sync.id.into(), run_id.into()]).unwrap_or_else(|e| internal(e)).len();
            client.update(&supersede, None, &[sync.id.into()]).unwrap_or_else(|e| internal(e));
            let queued = (replaced + inserted) as i64;
            client
                .update(
                    "UPDATE vitally.sync_run SET rows_read = $2, records_queued = $3, records_invalid = $4,
                            records_unchanged = $2 - $3 - $4, planned_at = pg_catalog.clock_timestamp()
                      WHERE id = $1",
                    None,
                    &[run_id.into(), rows.into(), queued.into(), invalid.into()],
                )
                .unwrap_or_else(|e| internal(e));
            (queued, invalid)
        })
    }

    /// What a run would do with the first `n` rows of the query, queueing nothing.
    /// (A key repeated beyond those rows is not seen.)
    #[pg_extern(volatile)]
    #[allow(clippy::type_complexity)] // pgrx takes the result's column names from this type
    fn preview(
        name: &str,
        n: default!(i64, 20),
    ) -> TableIterator<'static, (name!(sync_key, Option<String>), name!(action, String), name!(payload, Option<JsonB>), name!(error, Option<String>))>
    {
        let me = caller();
        let sync = as_extension_owner(|| Spi::connect(|client| owned_sync(client, name, me, false)));
        let prepared = prepare_stored(&sync);
        stage(&sync, &prepared, Pass::Preview { limit: n.max(0) }, &mut crate::progress::Progress::new(name));
        let unchanged = match prepared.behavior {
            Behavior::Append => "d.sync_key IS NOT NULL OR p.id IS NOT NULL",
            _ => "d.payload_hash = s.hash OR p.payload_hash = s.hash",
        };
        let sql = format!(
            "SELECT s.sync_key,
                    CASE WHEN s.error IS NOT NULL THEN 'invalid' WHEN {unchanged} THEN 'unchanged' ELSE '{action}' END,
                    s.payload, s.error
               FROM {RECORDS} s
               LEFT JOIN vitally.delivery_state d ON d.sync_id = $1 AND d.sync_key = s.sync_key
               LEFT JOIN vitally.record p ON p.sync_id = $1 AND p.sync_key = s.sync_key AND p.status = 'pending'",
            action = prepared.behavior.action(),
        );
        let rows: Vec<_> = as_extension_owner(|| {
            Spi::connect(|client| {
                client
                    .select(&sql, None, &[sync.id.into()])
                    .unwrap_or_else(|e| internal(e))
                    .map(|row| {
                        (
                            row.get::<String>(1).ok().flatten(),
                            row.get::<String>(2).ok().flatten().unwrap_or_default(),
                            row.get::<JsonB>(3).ok().flatten(),
                            row.get::<String>(4).ok().flatten(),
                        )
                    })
                    .collect()
            })
        });
        drop_stage();
        TableIterator::new(rows)
    }

    /// Forgets what was delivered: the next run sends every row. Returns how many
    /// records' delivery state was forgotten.
    #[pg_extern(volatile)]
    fn reset(name: &str) -> i64 {
        let me = caller();
        as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let sync = owned_sync(client, name, me, true);
                client
                    .update(
                        "WITH gone AS (DELETE FROM vitally.delivery_state WHERE sync_id = $1 RETURNING 1) SELECT pg_catalog.count(*) FROM gone",
                        None,
                        &[sync.id.into()],
                    )
                    .unwrap_or_else(|e| internal(e))
                    .first()
                    .get_one::<i64>()
                    .unwrap_or_else(|e| internal(e))
                    .unwrap_or(0)
            })
        })
    }
}
