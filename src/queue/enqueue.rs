//! Into the queue: a planned stage becomes records; failed records are queued again;
//! dropped syncs and forgotten deliveries leave.

use crate::elevation::with_settings;
use crate::errors::{Result, Row};
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use vitally_model::Behavior;
use vitally_planner::sql::{quote_literal, MAX_RECORD_BYTES};

/// The records of one planning pass, built by `planning::stage` in a temporary table
/// `(sync_key, hash, payload, error)` that lives until commit: the new, changed and
/// invalid rows of a run (every row, for a preview).
pub struct Staged {
    pub sync_id: i64,
    /// The destination's name: part of an event's messageId.
    pub destination: String,
    pub behavior: Behavior,
    pub unlink_removed_accounts: bool,
    /// How many rows the query gave.
    pub rows: i64,
    pub table: &'static str,
}

/// For the statements that look keys up one by one: never by scanning the queue, whose
/// statistics may say it is small while it is not; and no JIT, which the cost of a
/// disabled plan node (the temporary table has no other) would otherwise set off: 0.4 s
/// of compiling for a few hundred records.
const BY_KEY: &[(&std::ffi::CStr, &std::ffi::CStr)] = &[(c"enable_seqscan", c"off"), (c"jit", c"off")];

/// What `enqueue` did.
pub struct Enqueued {
    pub queued: i64,
    pub invalid: i64,
}

/// Queues a stage in run `run_id`: invalid rows as invalid records, the others pending,
/// each replacing the key's pending record if there is one; records the run's figures.
pub fn enqueue(client: &mut SpiClient<'_>, staged: &Staged, run_id: i64) -> Result<Enqueued> {
    let records = staged.table;
    // An event's messageId comes from what identifies it in Vitally, its destination,
    // name and key, never from the sync: a re-created sync, reset() or full_resync
    // sends it under the same id and Vitally drops the repeat. (A JSON array keeps
    // the parts apart whatever they contain.) A change gets a fresh id, kept across
    // its retries (src/message_ids.rs: a counter, not a random read per record).
    let message_id = match staged.behavior {
        Behavior::Append => format!(
            "pg_catalog.md5(pg_catalog.jsonb_build_array('event', {}::text, s.payload->>'event', s.sync_key)::text)::uuid",
            quote_literal(&staged.destination)
        ),
        _ => "vitally.new_message_id()".to_string(),
    };
    // With unlink_removed_accounts, a user's record also names the accounts it was
    // delivered with and has left: the worker sends an unlink for each. Only then is
    // the delivery state joined: in an UPDATE ... FROM the planner keeps even an unused
    // outer join (it marks the rows it reads), a sequential scan of every sync's state.
    let (payload, state) = if staged.unlink_removed_accounts {
        (
            "s.payload || coalesce((SELECT pg_catalog.jsonb_build_object('unlinkAccountIds', pg_catalog.jsonb_agg(a))
                                  FROM pg_catalog.jsonb_array_elements_text(d.account_ids) a
                                 WHERE NOT EXISTS (SELECT FROM pg_catalog.jsonb_array_elements_text(s.payload->'accountIds') c WHERE c = a)
                                HAVING pg_catalog.count(*) > 0), '{}')",
            "LEFT JOIN vitally.delivery_state d ON d.sync_id = $1 AND d.sync_key = s.sync_key",
        )
    } else {
        ("s.payload", "")
    };
    let invalid = format!(
        "INSERT INTO vitally.record (sync_id, run_id, sync_key, status, payload, error)
         SELECT $1, $2, s.sync_key, 'invalid',
                CASE WHEN pg_catalog.octet_length(s.payload::text) <= {MAX_RECORD_BYTES} THEN s.payload END, s.error
           FROM {records} s WHERE s.error IS NOT NULL"
    );
    // What replacing a pending record sets, and the runs it leaves (either way below).
    let replacement = format!(
        "SET payload = {payload}, payload_hash = s.hash, message_id = {message_id}, run_id = $2,
                    version = r.version + 1, attempts = 0, next_attempt_at = pg_catalog.now(),
                    queued_at = pg_catalog.now(), http_status = NULL, error = NULL"
    );
    let left_runs = "left_runs AS (
             UPDATE vitally.sync_run sr SET records_pending = sr.records_pending - m.n
               FROM (SELECT old_run, pg_catalog.count(*) AS n FROM upd GROUP BY old_run) m
              WHERE sr.id = m.old_run AND sr.id <> $2
             RETURNING sr.id)
         SELECT (SELECT pg_catalog.count(*) FROM upd) AS replaced, (SELECT pg_catalog.array_agg(id) FROM left_runs) AS left_runs";
    // A newer change replaces the pending one (a new version, so the worker can
    // tell); an event already pending stays as it is. The replaced record leaves its
    // old run (`o`, the row as it was), which may be over now. In one pass over the
    // sync's entries in the index of pending keys, when many keys changed.
    let replace_by_join = format!(
        "WITH upd AS (
             UPDATE vitally.record r
                {replacement}
               FROM {records} s {state},
                    vitally.record o
              WHERE r.sync_id = $1 AND r.status = 'pending' AND r.sync_key = s.sync_key
                AND o.id = r.id AND o.sync_id = $1 AND o.status = 'pending'
                AND s.error IS NULL AND r.payload_hash IS DISTINCT FROM s.hash
             RETURNING o.run_id AS old_run),
         {left_runs}"
    );
    // The same when few keys changed: each staged key is looked up in the index of
    // pending keys by itself (a lateral subquery the planner cannot flatten into a
    // join), because one pass over the sync's entries there also walks those of every
    // record delivered since the last vacuum, and the heap pages they point to. The
    // records found are updated by id, through the primary key; one the worker delivered
    // meanwhile is left (its status is checked again), and the key queued anew. (The
    // status is checked as `status || ''` so that no partial index of pending records
    // matches it: with the queue's statistics saying "few pending", the planner walked
    // that index again instead of the primary key.)
    let replace_by_key = format!(
        "WITH found AS MATERIALIZED (
             SELECT s.sync_key, s.hash, s.payload, p.id, p.old_run
               FROM {records} s
              CROSS JOIN LATERAL (SELECT p.id, p.run_id AS old_run FROM vitally.record p
                                   WHERE p.sync_id = $1 AND p.status = 'pending' AND p.sync_key = s.sync_key
                                     AND p.payload_hash IS DISTINCT FROM s.hash OFFSET 0) p
              WHERE s.error IS NULL),
         upd AS (
             UPDATE vitally.record r
                {replacement}
               FROM found s {state}
              WHERE r.id = ANY (ARRAY(SELECT f.id FROM found f)) AND r.id = s.id
                AND r.sync_id = $1 AND (r.status || '') = 'pending'
             RETURNING s.old_run),
         {left_runs}"
    );
    // A failed record whose key is queued again is no longer "failed now".
    let supersede = format!(
        "UPDATE vitally.record f SET replaced_at = pg_catalog.now()
           FROM {records} s
          WHERE f.sync_id = $1 AND f.status = 'failed' AND f.replaced_at IS NULL
            AND f.sync_key = s.sync_key AND s.error IS NULL"
    );
    let (sync, run) = (staged.sync_id, run_id);
    let replaces = staged.behavior != Behavior::Append;
    // A statement that could touch nothing is not run: each reads every staged record.
    // Whether anything is pending comes from the runs' counts: the queue's index of
    // pending records still holds the entries of records delivered since the last
    // vacuum (a million after a large run: half a second to walk).
    let (pending, failed): (bool, bool) = {
        let row = client
            .select(
                "SELECT EXISTS (SELECT FROM vitally.sync_run WHERE sync_id = $1 AND status = 'running' AND records_pending > 0) AS pending,
                        EXISTS (SELECT FROM vitally.record WHERE sync_id = $1 AND status = 'failed' AND replaced_at IS NULL) AS failed",
                Some(1),
                &[sync.into()],
            )?
            .first();
        (row.required("pending")?, row.required("failed")?)
    };
    // Key by key when the changed rows are few against the query's (a probe per key,
    // against a pass over what the sync has pending and delivered since the last vacuum).
    let by_key = pending && {
        let staged_n = client
            .select(&format!("SELECT pg_catalog.count(*) FROM {records} WHERE error IS NULL"), Some(1), &[])?
            .first()
            .required::<i64>("count")?;
        staged_n.saturating_mul(4) < staged.rows
    };
    let settings: &[(&std::ffi::CStr, &std::ffi::CStr)] = if by_key { BY_KEY } else { &[] };
    let invalid = client.update(&invalid, None, &[sync.into(), run.into()])?.len() as i64;
    let (replaced, left_runs) = if pending && replaces {
        let replace = if by_key { &replace_by_key } else { &replace_by_join };
        let replaced = with_settings(settings, || client.update(replace, None, &[sync.into(), run.into()]))?.first();
        (replaced.required::<i64>("replaced")?, replaced.optional::<Vec<i64>>("left_runs")?.unwrap_or_default())
    } else {
        (0, Vec::new())
    };
    // Looked up per key, as above, when few changed (NOT EXISTS becomes an anti join
    // over every entry).
    let not_pending = if by_key {
        "AND (SELECT true FROM vitally.record p WHERE p.sync_id = $1 AND p.sync_key = s.sync_key AND p.status = 'pending') IS NULL"
    } else if pending {
        "AND NOT EXISTS (SELECT FROM vitally.record p WHERE p.sync_id = $1 AND p.sync_key = s.sync_key AND p.status = 'pending')"
    } else {
        ""
    };
    // In key order: the unique index of pending keys then grows at its right edge
    // instead of splitting pages all over (a million records queued 2 s faster, and its
    // pages full instead of about two-thirds full).
    let insert = format!(
        "INSERT INTO vitally.record (sync_id, run_id, sync_key, status, payload, payload_hash, message_id)
         SELECT $1, $2, s.sync_key, 'pending', {payload}, s.hash, {message_id}
           FROM {records} s {state}
          WHERE s.error IS NULL {not_pending}
          ORDER BY s.sync_key"
    );
    let inserted = with_settings(settings, || client.update(&insert, None, &[sync.into(), run.into()]))?.len() as i64;
    if failed {
        client.update(&supersede, None, &[sync.into()])?;
    }
    let queued = replaced + inserted;
    client.update(
        "UPDATE vitally.sync_run SET rows_read = $2, records_queued = $3, records_invalid = $4, records_pending = $3,
                records_unchanged = $2 - $3 - $4, planned_at = pg_catalog.clock_timestamp()
          WHERE id = $1",
        None,
        &[run.into(), staged.rows.into(), queued.into(), invalid.into()],
    )?;
    // Runs whose last pending records this one took over are over.
    super::finish_if_done(client, &left_runs)?;
    Ok(Enqueued { queued, invalid })
}

/// One row of `vitally.preview`.
pub struct PreviewRow {
    pub sync_key: Option<String>,
    pub action: String,
    pub payload: Option<JsonB>,
    pub error: Option<String>,
}

/// What a run would do with each staged record, against what was delivered and what is pending.
pub fn preview(client: &SpiClient<'_>, staged: &Staged) -> Result<Vec<PreviewRow>> {
    let unchanged = match staged.behavior {
        Behavior::Append => "d.sync_key IS NOT NULL OR p.id IS NOT NULL",
        _ => "d.payload_hash = s.hash OR p.payload_hash = s.hash",
    };
    let sql = format!(
        "SELECT s.sync_key,
                CASE WHEN s.error IS NOT NULL THEN 'invalid' WHEN {unchanged} THEN 'unchanged' ELSE '{action}' END AS action,
                s.payload, s.error
           FROM {records} s
           LEFT JOIN vitally.delivery_state d ON d.sync_id = $1 AND d.sync_key = s.sync_key
           LEFT JOIN vitally.record p ON p.sync_id = $1 AND p.sync_key = s.sync_key AND p.status = 'pending'",
        action = staged.behavior.action(),
        records = staged.table,
    );
    let mut rows = Vec::new();
    for row in client.select(&sql, None, &[staged.sync_id.into()])? {
        rows.push(PreviewRow {
            sync_key: row.optional("sync_key")?,
            action: row.required("action")?,
            payload: row.optional("payload")?,
            error: row.optional("error")?,
        });
    }
    Ok(rows)
}

/// Queues a sync's failed records again, in a new run; returns how many (no run is
/// left behind when there were none).
pub fn requeue_failed(client: &mut SpiClient<'_>, sync_id: i64) -> Result<i64> {
    // Two statements: in one, the run a CTE inserts would be invisible to the update.
    let run = super::start_run(client, sync_id, false, true, false)?;
    let count = client
        .update(
            "UPDATE vitally.record r
                SET status = 'pending', attempts = 0, next_attempt_at = pg_catalog.now(),
                    error = NULL, http_status = NULL, run_id = $2, queued_at = pg_catalog.now()
              WHERE r.sync_id = $1 AND r.status = 'failed' AND r.replaced_at IS NULL
                AND NOT EXISTS (SELECT FROM vitally.record p
                                 WHERE p.sync_id = $1 AND p.sync_key = r.sync_key AND p.status = 'pending')",
            None,
            &[sync_id.into(), run.into()],
        )?
        .len() as i64;
    if count == 0 {
        client.update("DELETE FROM vitally.sync_run WHERE id = $1", None, &[run.into()])?;
    } else {
        client.update("UPDATE vitally.sync_run SET records_queued = $2, records_pending = $2 WHERE id = $1", None, &[run.into(), count.into()])?;
    }
    Ok(count)
}

/// Forgets what was delivered for a sync: its next run sends every row. Returns how many
/// keys. The order its last run read them in goes too (nothing left to lay out in it).
pub fn forget_delivered(client: &mut SpiClient<'_>, sync_id: i64) -> Result<i64> {
    client.update("DELETE FROM vitally.read_order WHERE sync_id = $1", None, &[sync_id.into()])?;
    Ok(client.update("DELETE FROM vitally.delivery_state WHERE sync_id = $1", None, &[sync_id.into()])?.len() as i64)
}

/// Removes the records and delivery state of syncs being dropped (they have no foreign
/// keys, see bootstrap.sql, so that the queue's writes check none; runs go with their
/// sync by cascade).
pub fn forget_syncs(client: &mut SpiClient<'_>, sync_ids: &[i64]) -> Result<()> {
    if sync_ids.is_empty() {
        return Ok(());
    }
    client.update(
        "WITH records AS (DELETE FROM vitally.record WHERE sync_id = ANY($1)),
              changes AS (DELETE FROM vitally.change WHERE sync_id = ANY($1)),
              orders AS (DELETE FROM vitally.read_order WHERE sync_id = ANY($1))
         DELETE FROM vitally.delivery_state WHERE sync_id = ANY($1)",
        None,
        &[sync_ids.to_vec().into()],
    )?;
    Ok(())
}
