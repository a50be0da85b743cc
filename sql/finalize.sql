-- Views and privileges, once every function exists.

-- What a role may see of destinations: its own (superusers: all), never a key.
CREATE VIEW vitally.destinations WITH (security_barrier) AS
SELECT d.id,
       d.name,
       d.owner,
       d.region,
       d.subdomain,
       vitally.destination_url('analytics', d.region, d.subdomain, d.analytics_url) AS analytics_url,
       vitally.destination_url('rest', d.region, d.subdomain, d.rest_url) AS rest_url,
       s.analytics_api_key IS NOT NULL AS analytics_api_key_set,
       s.rest_api_key IS NOT NULL AS rest_api_key_set,
       d.created_at,
       d.updated_at
  FROM vitally.destination d
  LEFT JOIN vitally.destination_secret s ON s.destination_id = d.id
 WHERE pg_catalog.pg_has_role(d.owner, 'USAGE');

-- Syncs a role may see: its own (superusers: all).
CREATE VIEW vitally.syncs WITH (security_barrier) AS
SELECT s.id,
       s.name,
       d.name AS destination,
       s.object,
       s.behavior,
       s.sync_key,
       s.enabled,
       s.query,
       s.mappings,
       s.options,
       s.owner,
       s.created_at,
       s.updated_at
  FROM vitally.sync s
  JOIN vitally.destination d ON d.id = s.destination_id
 WHERE pg_catalog.pg_has_role(s.owner, 'USAGE');

CREATE VIEW vitally.sync_runs WITH (security_barrier) AS
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

-- One row per sync: its last run's figures, and what is pending and failed now.
CREATE VIEW vitally.sync_status WITH (security_barrier) AS
SELECT s.name AS sync_name,
       d.name AS destination,
       s.object,
       s.behavior,
       s.enabled,
       last.id AS last_run_id,
       last.status AS last_run_status,
       last.started_at AS last_run_started_at,
       last.finished_at AS last_run_finished_at,
       last.rows_read,
       last.records_queued,
       last.records_unchanged,
       last.records_invalid,
       last.records_delivered,
       last.records_skipped,
       last.records_failed,
       (SELECT pg_catalog.count(*) FROM vitally.record p
         WHERE p.sync_id = s.id AND p.status = 'pending') AS pending_now,
       (SELECT pg_catalog.count(*) FROM vitally.record f
         WHERE f.sync_id = s.id AND f.status = 'failed' AND f.replaced_at IS NULL) AS failed_now
  FROM vitally.sync s
  JOIN vitally.destination d ON d.id = s.destination_id
  -- The columns as 0.1.0's `SELECT *` expanded them: a column added since (records_pending)
  -- changes neither this view nor an upgraded one.
  LEFT JOIN LATERAL (SELECT r.id, r.sync_id, r.status, r.full_resync, r.started_at, r.planned_at, r.finished_at, r.rows_read,
                            r.records_queued, r.records_unchanged, r.records_invalid, r.records_delivered, r.records_skipped,
                            r.records_failed
                       FROM vitally.sync_run r WHERE r.sync_id = s.id ORDER BY r.id DESC LIMIT 1) last ON true
 WHERE pg_catalog.pg_has_role(s.owner, 'USAGE');

-- The tables each sync watches: how far behind its live planning is, and its last failure.
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
-- Called by the queue as the extension's owner.
REVOKE EXECUTE ON FUNCTION vitally.new_message_id() FROM vitally_user;
GRANT SELECT ON vitally.destinations, vitally.syncs, vitally.sync_runs, vitally.records, vitally.sync_status, vitally.watches TO vitally_user;
GRANT SELECT ON vitally.metrics TO vitally_user, pg_monitor;
GRANT EXECUTE ON FUNCTION vitally.worker_pid(), vitally.worker_status() TO pg_monitor;
