//! The fixed statements of the queue's transitions. Plain text with no dependency, so
//! that the test harness (`tests/e2e/src/lib.rs`) runs these very statements instead of
//! a copy of them. Every name is schema-qualified except multi-array `unnest`, which
//! cannot be: the worker pins `search_path` to `pg_catalog, pg_temp`.

/// Every sync with its destination and pair (for the route): few rows, read each round.
pub const SYNCS: &str = "SELECT s.id, s.destination_id, s.object, s.behavior FROM vitally.sync s ORDER BY s.id";

/// Up to `$2` due records of sync `$1` that come after `($3, $4)` in the order of the
/// index `(sync_id, next_attempt_at, id)`, leaving out the ids `$5` (in flight). The scan
/// starts where the last claim ended, so it never walks the index entries that delivered
/// records leave behind until vacuum; `('-infinity', 0)` starts from the beginning. No
/// lease is written: only the worker claims, and it keeps what it sent in memory. The ids
/// in flight are a subquery, looked up in a hash: as `<> ALL ($5)` the planner estimated
/// each of them (hundreds, on every claim of every sync) and each row was compared with all.
pub const CLAIM: &str = "SELECT r.id, r.version, r.sync_key, r.payload, r.payload_hash, r.message_id::pg_catalog.text AS message_id, r.attempts,
            pg_catalog.to_char(r.queued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS queued_at, r.next_attempt_at
       FROM vitally.record r
      WHERE r.sync_id = $1 AND r.status = 'pending' AND r.next_attempt_at <= pg_catalog.now()
        AND (r.next_attempt_at, r.id) > ($3::timestamptz, $4::bigint) AND r.id NOT IN (SELECT pg_catalog.unnest($5::bigint[]))
      ORDER BY r.next_attempt_at, r.id
      LIMIT $2";

/// Records outcomes, one array element per record: `$1` id, `$2` version claimed, `$3`
/// status (delivered, skipped, failed, or pending for a retry), `$4` attempts it counts
/// for, `$5` retry delay in seconds, `$6` HTTP status, `$7` error, `$8` destination id.
/// A record whose version moved on (replaced by a newer change in flight) is not
/// touched. Delivered records advance their delivery state; the runs' figures (and their
/// count of pending records) and the
/// per-minute figures of `vitally.metrics` follow. Returns each updated `id, run_id`.
pub const RECORD_OUTCOMES: &str = "WITH o AS (
         SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::float8[], $6::int[], $7::text[], $8::bigint[])
                AS o(id, version, status, inc, delay, http, error, destination_id)),
     stats AS (
         INSERT INTO vitally.delivery_stats AS t (destination_id, minute, delivered, skipped, failed, retried, rate_limited)
         SELECT destination_id, pg_catalog.date_trunc('minute', pg_catalog.now()),
                pg_catalog.count(*) FILTER (WHERE status = 'delivered'),
                pg_catalog.count(*) FILTER (WHERE status = 'skipped'),
                pg_catalog.count(*) FILTER (WHERE status = 'failed'),
                pg_catalog.count(*) FILTER (WHERE status = 'pending' AND inc > 0),
                pg_catalog.count(*) FILTER (WHERE status = 'pending' AND inc = 0)
           FROM o GROUP BY destination_id
         ON CONFLICT (destination_id, minute) DO UPDATE
            SET delivered = t.delivered + EXCLUDED.delivered, skipped = t.skipped + EXCLUDED.skipped,
                failed = t.failed + EXCLUDED.failed, retried = t.retried + EXCLUDED.retried,
                rate_limited = t.rate_limited + EXCLUDED.rate_limited),
     upd AS (
         UPDATE vitally.record r
            SET status = o.status,
                attempts = r.attempts + o.inc,
                next_attempt_at = CASE WHEN o.status = 'pending'
                                       THEN pg_catalog.now() + pg_catalog.make_interval(secs => o.delay)
                                       ELSE r.next_attempt_at END,
                http_status = o.http,
                error = o.error,
                delivered_at = CASE WHEN o.status = 'delivered' THEN pg_catalog.now() END
           FROM o
          -- Each record is found by primary key from its outcome. `status || ''`: no
          -- partial index of pending records matches it, so none is walked whole (when
          -- the statistics said few were pending, the planner scanned one of them for every
          -- outcome, and-ed with the ids or hashed to join: 10 to 30 ms each with 300,000
          -- queued). Run with `RECORD_OUTCOMES_SETTINGS`, below.
          WHERE r.id = o.id AND r.version = o.version AND (r.status || '') = 'pending'
         RETURNING r.id, r.sync_id, r.sync_key, r.payload_hash, r.run_id, o.status,
                   CASE WHEN pg_catalog.jsonb_typeof(r.payload->'accountIds') = 'array' THEN r.payload->'accountIds' END AS account_ids),
     state AS (
         INSERT INTO vitally.delivery_state (sync_id, sync_key, payload_hash, account_ids, delivered_at)
         SELECT sync_id, sync_key, payload_hash, account_ids, pg_catalog.now() FROM upd WHERE status = 'delivered'
         ON CONFLICT (sync_id, sync_key) DO UPDATE
            SET payload_hash = EXCLUDED.payload_hash, account_ids = EXCLUDED.account_ids,
                delivered_at = EXCLUDED.delivered_at),
     counts AS (
         UPDATE vitally.sync_run sr
            SET records_delivered = sr.records_delivered + c.delivered,
                records_skipped = sr.records_skipped + c.skipped,
                records_failed = sr.records_failed + c.failed,
                records_pending = sr.records_pending - c.delivered - c.skipped - c.failed
           FROM (SELECT run_id,
                        pg_catalog.count(*) FILTER (WHERE status = 'delivered') AS delivered,
                        pg_catalog.count(*) FILTER (WHERE status = 'skipped') AS skipped,
                        pg_catalog.count(*) FILTER (WHERE status = 'failed') AS failed
                   FROM upd GROUP BY run_id) c
          WHERE sr.id = c.run_id)
     SELECT id, run_id FROM upd";

/// What `RECORD_OUTCOMES` runs with: each outcome finds its record by a probe of the
/// primary key, whatever the statistics say. The filter's guessed selectivity makes the
/// queue look a few hundred rows long, so for a job's 3,200 outcomes the planner hashed
/// a sequential scan of all of it (200,000 rows read per job with 200,000 queued, a cost
/// that grows with the backlog), or compared every record found with every outcome.
pub const RECORD_OUTCOMES_SETTINGS: &[(&std::ffi::CStr, &std::ffi::CStr)] = &[(c"enable_hashjoin", c"off"), (c"enable_mergejoin", c"off")];

/// For records replaced while in flight whose older copy was delivered (`$1` ids, `$2`
/// their delivered hashes): that older copy is what Vitally has now.
pub const KEEP_DELIVERED_OF_REPLACED: &str = "WITH d AS (SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS d(id, hash))
     INSERT INTO vitally.delivery_state (sync_id, sync_key, payload_hash)
     SELECT r.sync_id, r.sync_key, d.hash FROM d JOIN vitally.record r ON r.id = d.id WHERE r.id = ANY ($1::bigint[]) AND d.hash IS NOT NULL
     ON CONFLICT (sync_id, sync_key) DO UPDATE SET payload_hash = EXCLUDED.payload_hash, delivered_at = pg_catalog.now()";

/// Seconds until the next pending record is due (NULL: nothing pending). Asked only when
/// nothing is in flight.
pub const NEXT_DUE: &str = "SELECT EXTRACT(epoch FROM pg_catalog.min(x.at) - pg_catalog.now())::float8 AS secs
       FROM vitally.sync s,
            LATERAL (SELECT r.next_attempt_at AS at FROM vitally.record r
                      WHERE r.sync_id = s.id AND r.status = 'pending'
                      ORDER BY r.next_attempt_at LIMIT 1) x";

/// Finishes those of runs `$1` that have no pending record left (their count, kept by
/// every transition, says so without a look at the queue). The status rule:
/// nothing went wrong: succeeded; something went wrong and nothing went right: failed;
/// else partially_failed. A NOTIFY on channel `vitally_sync` carries only the run's id:
/// any role may LISTEN, and the run's details are in `vitally.sync_runs` for those who
/// may see them.
pub const FINISH_RUNS: &str = "WITH finished AS (
         UPDATE vitally.sync_run r
            SET status = CASE WHEN r.records_failed + r.records_invalid = 0 THEN 'succeeded'
                              WHEN r.records_delivered + r.records_skipped + r.records_unchanged = 0 THEN 'failed'
                              ELSE 'partially_failed' END,
                finished_at = pg_catalog.clock_timestamp()
          WHERE r.id = ANY($1) AND r.status = 'running' AND r.records_pending = 0
         RETURNING r.id)
     SELECT pg_catalog.pg_notify('vitally_sync', f.id::pg_catalog.text) FROM finished f";
