-- Upgrade from 0.1.0 to 0.2.0. Unreleased until 0.2.0 ships; from then on never edited.
-- Every change here is also made in bootstrap.sql/finalize.sql (a fresh install), and the
-- end-to-end test upgrades::from_each_released_version checks that both give one schema.
\echo Use "ALTER EXTENSION vitally_sync UPDATE" to load this file. \quit

-- Scheduling with pg_cron (src/api/scheduling.rs).
CREATE FUNCTION vitally."schedule"(
	"name" TEXT,
	"cron" TEXT
) RETURNS bigint
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'schedule_wrapper';
CREATE FUNCTION vitally."unschedule"(
	"name" TEXT
) RETURNS bool
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'unschedule_wrapper';
REVOKE ALL ON FUNCTION vitally.schedule(text, text), vitally.unschedule(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vitally.schedule(text, text), vitally.unschedule(text) TO vitally_user;

-- Retention and monitoring.
CREATE TABLE vitally.delivery_stats (
    destination_id bigint NOT NULL,
    minute         timestamptz NOT NULL,
    delivered      bigint NOT NULL DEFAULT 0,
    skipped        bigint NOT NULL DEFAULT 0,
    failed         bigint NOT NULL DEFAULT 0,
    retried        bigint NOT NULL DEFAULT 0,
    rate_limited   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (destination_id, minute)
);
REVOKE ALL ON vitally.delivery_stats FROM PUBLIC;

CREATE FUNCTION vitally."worker_pid"() RETURNS INT
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'worker_pid_wrapper';
REVOKE ALL ON FUNCTION vitally.worker_pid() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vitally.worker_pid() TO vitally_user, pg_monitor;

CREATE FUNCTION vitally."worker_status"() RETURNS TEXT
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'worker_status_wrapper';
REVOKE ALL ON FUNCTION vitally.worker_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vitally.worker_status() TO vitally_user, pg_monitor;

-- Runs count their pending records (see below), and say whether a watch planned them.
ALTER TABLE vitally.sync_run ADD COLUMN records_pending bigint NOT NULL DEFAULT 0;
-- Live syncs (src/watching.rs, src/live_planner.rs, src/api/watches.rs), before the revocations below.
ALTER TABLE vitally.sync_run ADD COLUMN live boolean NOT NULL DEFAULT false;
CREATE TABLE vitally.watch (
    id             bigserial PRIMARY KEY,
    sync_id        bigint NOT NULL REFERENCES vitally.sync (id) ON DELETE CASCADE,
    relid          regclass NOT NULL,
    key_expr       text NOT NULL,
    search_path    text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_change_at timestamptz,
    last_error     text,
    failed_at      timestamptz,
    UNIQUE (sync_id, relid)
);
CREATE TABLE vitally.change (
    watch_id   bigint NOT NULL,
    sync_id    bigint NOT NULL,
    sync_key   text,
    changed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
REVOKE ALL ON vitally.watch, vitally.change FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('vitally.watch', '');
SELECT pg_catalog.pg_extension_config_dump('vitally.watch_id_seq', '');
CREATE FUNCTION vitally."watch"(
	"name" TEXT,
	"table" TEXT,
	"key" TEXT DEFAULT 'id'
) RETURNS bigint
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'watch_wrapper';
CREATE FUNCTION vitally."unwatch"(
	"name" TEXT,
	"table" TEXT
) RETURNS bool
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'unwatch_wrapper';
CREATE FUNCTION vitally."explain_live"(
	"name" TEXT,
	"keys" TEXT[] DEFAULT NULL
) RETURNS SETOF TEXT
VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'explain_live_wrapper';
CREATE FUNCTION vitally."watch_trigger"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'watch_trigger_wrapper';
CREATE FUNCTION vitally."new_message_id"() RETURNS uuid
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'new_message_id_wrapper';
CREATE OR REPLACE VIEW vitally.sync_runs WITH (security_barrier) AS
SELECT r.id,
       s.name AS sync_name,
       r.status,
       r.full_resync,
       r.started_at,
       r.planned_at,
       r.finished_at,
       r.rows_read,
       r.records_queued,
       r.records_unchanged,
       r.records_invalid,
       r.records_delivered,
       r.records_skipped,
       r.records_failed,
       r.live
  FROM vitally.sync_run r
  JOIN vitally.sync s ON s.id = r.sync_id
 WHERE pg_catalog.pg_has_role(s.owner, 'USAGE');

-- After vitally.change, which it counts.
-- One row per destination with the figures an operator alerts on; one flat row of
-- numbers each, so a Prometheus postgres_exporter query can scrape it as it is.
-- Members of pg_monitor see every destination (figures only, never data or keys).
CREATE VIEW vitally.metrics WITH (security_barrier) AS
SELECT d.name AS destination,
       coalesce(q.pending, 0) AS pending,
       coalesce(EXTRACT(epoch FROM pg_catalog.now() - q.oldest)::float8, 0) AS oldest_pending_seconds,
       coalesce(st.delivered_5m, 0)::float8 / 300 AS delivered_per_second,
       coalesce(st.delivered_1h, 0) AS delivered_last_hour,
       coalesce(st.failed_1h, 0) AS failed_last_hour,
       coalesce(st.retried_1h, 0) AS retried_last_hour,
       coalesce(st.rate_limited_1h, 0) AS rate_limited_last_hour,
       coalesce(f.failed, 0) AS failed_now,
       vitally.worker_pid() IS NOT NULL AS worker_up,
       vitally.worker_status() AS worker_status,
       coalesce(lc.pending, 0) AS live_changes_pending,
       coalesce(EXTRACT(epoch FROM pg_catalog.clock_timestamp() - lc.oldest)::float8, 0) AS live_lag_seconds
  FROM vitally.destination d
  LEFT JOIN LATERAL (SELECT pg_catalog.count(*) AS pending, pg_catalog.min(r.queued_at) AS oldest
                       FROM vitally.sync s JOIN vitally.record r ON r.sync_id = s.id AND r.status = 'pending'
                      WHERE s.destination_id = d.id) q ON true
  LEFT JOIN LATERAL (SELECT pg_catalog.count(*) AS failed
                       FROM vitally.sync s JOIN vitally.record r
                            ON r.sync_id = s.id AND r.status = 'failed' AND r.replaced_at IS NULL
                      WHERE s.destination_id = d.id) f ON true
  LEFT JOIN LATERAL (SELECT pg_catalog.sum(x.delivered) FILTER (WHERE x.minute >= pg_catalog.now() - interval '5 minutes')::bigint AS delivered_5m,
                            pg_catalog.sum(x.delivered)::bigint AS delivered_1h,
                            pg_catalog.sum(x.failed)::bigint AS failed_1h,
                            pg_catalog.sum(x.retried)::bigint AS retried_1h,
                            pg_catalog.sum(x.rate_limited)::bigint AS rate_limited_1h
                       FROM vitally.delivery_stats x
                      WHERE x.destination_id = d.id AND x.minute >= pg_catalog.now() - interval '1 hour') st ON true
  LEFT JOIN LATERAL (SELECT pg_catalog.count(*) AS pending, pg_catalog.min(c.changed_at) AS oldest
                       FROM vitally.sync s JOIN vitally.change c ON c.sync_id = s.id
                      WHERE s.destination_id = d.id) lc ON true
 WHERE pg_catalog.pg_has_role(d.owner, 'USAGE') OR pg_catalog.pg_has_role('pg_monitor', 'USAGE');

REVOKE ALL ON vitally.metrics FROM PUBLIC;
GRANT SELECT ON vitally.metrics TO vitally_user, pg_monitor;
GRANT USAGE ON SCHEMA vitally TO pg_monitor;

CREATE VIEW vitally.watches WITH (security_barrier) AS
SELECT s.name AS sync_name,
       w.relid AS table_name,
       w.key_expr AS key,
       w.created_at,
       coalesce(c.pending, 0) AS pending_changes,
       coalesce(pg_catalog.clock_timestamp() - c.oldest, interval '0') AS lag,
       GREATEST(w.last_change_at, c.newest) AS last_change_at,
       w.last_error,
       w.failed_at
  FROM vitally.watch w
  JOIN vitally.sync s ON s.id = w.sync_id
  LEFT JOIN LATERAL (SELECT pg_catalog.count(*) AS pending, pg_catalog.min(x.changed_at) AS oldest, pg_catalog.max(x.changed_at) AS newest
                       FROM vitally.change x WHERE x.watch_id = w.id) c ON true
 WHERE pg_catalog.pg_has_role(s.owner, 'USAGE');

-- The keys a sync's last full pass read, in its order: 64-bit hashes (little-endian
-- int8s), for the next pass to find what was delivered in that order (comparison.rs).
-- Only a hint: lost or stale, a pass gives the same result, more slowly. So unlogged
-- (a sync whose query's order moves rewrites it each run: no WAL, nothing shipped to
-- standbys; emptied by a crash) and not dumped.
CREATE UNLOGGED TABLE vitally.read_order (
    sync_id bigint PRIMARY KEY,
    keys    bytea NOT NULL
);
ALTER TABLE vitally.read_order ALTER COLUMN keys SET STORAGE EXTERNAL;  -- hashes do not compress
REVOKE ALL ON vitally.read_order FROM PUBLIC;

-- Keys compare as bytes (see bootstrap.sql); the view that shows them is made again
-- around the change, and gets its grant back below.
DROP VIEW vitally.records;
ALTER TABLE vitally.record ALTER COLUMN sync_key TYPE text COLLATE "C";
ALTER TABLE vitally.delivery_state ALTER COLUMN sync_key TYPE text COLLATE "C";
CREATE VIEW vitally.records WITH (security_barrier) AS
SELECT r.id,
       r.run_id,
       s.name AS sync_name,
       r.sync_key COLLATE "default" AS sync_key,  -- joins with users' text columns as before
       r.status,
       r.attempts,
       r.http_status,
       r.error,
       r.payload,
       r.message_id,
       r.queued_at,
       r.next_attempt_at,
       r.delivered_at
  FROM vitally.record r
  JOIN vitally.sync s ON s.id = r.sync_id
 WHERE pg_catalog.pg_has_role(s.owner, 'USAGE');

-- Whatever ALTER DEFAULT PRIVILEGES said before CREATE EXTENSION (for the installing role
-- or for all roles), no role but the owner keeps a privilege on any object of the
-- extension; the documented grants follow.
DO $$
DECLARE
    ext oid := (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'vitally_sync');
    obj record;
    who oid;
BEGIN
    FOR obj IN
        SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END AS kind,
               pg_catalog.format('%I.%I', n.nspname, c.relname) AS name,
               coalesce(c.relacl, pg_catalog.acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner)) AS acl,
               c.relowner AS owner
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_class c ON c.oid = d.objid
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = ext AND d.deptype = 'e'
        UNION ALL
        SELECT 'FUNCTION', pg_catalog.format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)),
               coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner)), p.proowner
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_proc p ON p.oid = d.objid
          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
         WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.refobjid = ext AND d.deptype = 'e'
        UNION ALL
        SELECT 'SCHEMA', pg_catalog.quote_ident(n.nspname), coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner)), n.nspowner
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_namespace n ON n.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND d.refobjid = ext AND d.deptype = 'e'
        UNION ALL
        SELECT 'TYPE', pg_catalog.format('%I.%I', n.nspname, t.typname), coalesce(t.typacl, pg_catalog.acldefault('T', t.typowner)), t.typowner
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_type t ON t.oid = d.objid
          JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
         WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.refobjid = ext AND d.deptype = 'e'
    LOOP
        FOR who IN SELECT DISTINCT a.grantee FROM pg_catalog.aclexplode(obj.acl) a WHERE a.grantee <> obj.owner LOOP
            EXECUTE pg_catalog.format('REVOKE ALL ON %s %s FROM %s', obj.kind, obj.name,
                                      CASE WHEN who = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(who)) END);
        END LOOP;
    END LOOP;
END
$$;

-- The documented grants, and nothing else.
GRANT USAGE ON SCHEMA vitally TO vitally_user, pg_monitor;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA vitally TO vitally_user;
-- Fired by the triggers vitally.watch() creates, never named in anyone's trigger.
REVOKE EXECUTE ON FUNCTION vitally.watch_trigger() FROM vitally_user;
REVOKE EXECUTE ON FUNCTION vitally.new_message_id() FROM vitally_user;
GRANT SELECT ON vitally.destinations, vitally.syncs, vitally.sync_runs, vitally.records, vitally.sync_status, vitally.watches TO vitally_user;
GRANT SELECT ON vitally.metrics TO vitally_user, pg_monitor;
GRANT EXECUTE ON FUNCTION vitally.worker_pid(), vitally.worker_status() TO pg_monitor;

-- The queue at scale (src/queue/): runs count their pending records, claims resume from
-- where the last one ended, and the worker keeps no lease (lease_until stays, unused).
UPDATE vitally.sync_run r SET records_pending = (SELECT pg_catalog.count(*) FROM vitally.record p WHERE p.run_id = r.id AND p.status = 'pending')
 WHERE r.status = 'running';
-- 0.1.0 never finished a run whose last pending records a newer run took over.
UPDATE vitally.sync_run r
   SET status = CASE WHEN r.records_failed + r.records_invalid = 0 THEN 'succeeded'
                     WHEN r.records_delivered + r.records_skipped + r.records_unchanged = 0 THEN 'failed'
                     ELSE 'partially_failed' END,
       finished_at = pg_catalog.clock_timestamp()
 WHERE r.status = 'running' AND r.records_pending = 0 AND r.planned_at IS NOT NULL;
DROP INDEX vitally.record_run;
DROP INDEX vitally.record_due;
CREATE INDEX record_due ON vitally.record (sync_id, next_attempt_at, id) WHERE status = 'pending';
UPDATE vitally.record SET lease_until = NULL WHERE lease_until IS NOT NULL;
