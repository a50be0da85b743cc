-- The extension's tables. Users never touch them directly: they call the functions in
-- schema vitally and read its views. Only the extension's owner has privileges here.

CREATE SCHEMA IF NOT EXISTS vitally;
REVOKE ALL ON SCHEMA vitally FROM PUBLIC;

-- One role to grant: GRANT vitally_user TO alice; lets alice use the extension.
-- Roles are cluster-wide, so another database's install may have made it already.
-- A vitally_user that can log in, or has attributes or memberships of its own, was not
-- made by us: granting it would hand those to every user of the extension.
DO $$
DECLARE
    r pg_catalog.pg_roles;
BEGIN
    SELECT * INTO r FROM pg_catalog.pg_roles WHERE rolname = 'vitally_user';
    IF NOT FOUND THEN
        CREATE ROLE vitally_user NOLOGIN;
    ELSIF r.rolcanlogin OR r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls
          OR EXISTS (SELECT FROM pg_catalog.pg_auth_members m WHERE m.member = r.oid) THEN
        RAISE EXCEPTION 'role vitally_user already exists and can log in, has attributes or is a member of other roles'
            USING ERRCODE = '42710',
                  HINT = 'vitally_sync grants this role to its users; drop or rename the existing role (ALTER ROLE vitally_user RENAME TO ...) and create the extension again.';
    END IF;
END
$$;
GRANT USAGE ON SCHEMA vitally TO vitally_user;

CREATE TABLE vitally.destination (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    owner         regrole NOT NULL,
    region        text NOT NULL CHECK (region IN ('us', 'eu')),
    subdomain     text,
    analytics_url text,          -- override; NULL: Vitally's host for the region
    rest_url      text,          -- override; NULL: Vitally's host for region and subdomain
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- The keys, apart, so that nothing that reads destinations reads keys by accident.
CREATE TABLE vitally.destination_secret (
    destination_id    bigint PRIMARY KEY REFERENCES vitally.destination (id) ON DELETE CASCADE,
    analytics_api_key text,
    rest_api_key      text,
    CHECK (analytics_api_key IS NOT NULL OR rest_api_key IS NOT NULL)
);

REVOKE ALL ON vitally.destination, vitally.destination_secret FROM PUBLIC;

-- pg_dump keeps users' configuration (and the keys: dump files are secrets too).
SELECT pg_catalog.pg_extension_config_dump('vitally.destination', '');
SELECT pg_catalog.pg_extension_config_dump('vitally.destination_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('vitally.destination_secret', '');

-- A sync: a query, mapped to one kind of Vitally object, sent to one destination.
CREATE TABLE vitally.sync (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    owner          regrole NOT NULL,
    destination_id bigint NOT NULL REFERENCES vitally.destination (id),
    object         text NOT NULL CHECK (object IN ('user', 'account', 'organization', 'event', 'nps_response')),
    behavior       text NOT NULL CHECK (behavior IN ('upsert', 'update_only', 'append')),
    query          text NOT NULL,
    sync_key       text NOT NULL,
    mappings       jsonb,          -- NULL: the conventions
    options        jsonb NOT NULL DEFAULT '{}',
    enabled        boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX ON vitally.sync (destination_id);

-- One vitally.sync() call. Its figures are final once no record of it is pending.
CREATE TABLE vitally.sync_run (
    id                bigserial PRIMARY KEY,
    sync_id           bigint NOT NULL REFERENCES vitally.sync (id) ON DELETE CASCADE,
    status            text NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'succeeded', 'partially_failed', 'failed')),
    full_resync       boolean NOT NULL DEFAULT false,
    started_at        timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    planned_at        timestamptz,
    finished_at       timestamptz,
    rows_read         bigint NOT NULL DEFAULT 0,
    records_queued    bigint NOT NULL DEFAULT 0,
    records_unchanged bigint NOT NULL DEFAULT 0,
    records_invalid   bigint NOT NULL DEFAULT 0,
    records_delivered bigint NOT NULL DEFAULT 0,
    records_skipped   bigint NOT NULL DEFAULT 0,
    records_failed    bigint NOT NULL DEFAULT 0,
    -- Its records still pending: the queue keeps it (src/queue/), so that telling
    -- whether a run is over needs no scan of the queue.
    records_pending   bigint NOT NULL DEFAULT 0,
    -- Planned by a watch (src/live_planner.rs), one run per sync and coalescing window.
    live              boolean NOT NULL DEFAULT false
);
CREATE INDEX ON vitally.sync_run (sync_id, id);
CREATE INDEX ON vitally.sync_run (id) WHERE status = 'running';

-- The queue, and the history of every record's fate. Logged, so a crash loses nothing.
CREATE TABLE vitally.record (
    id              bigserial PRIMARY KEY,
    -- No foreign keys here or in delivery_state: checking two per row doubled the cost
    -- of queueing a million records. drop_sync deletes a sync's rows itself.
    sync_id         bigint NOT NULL,
    run_id          bigint NOT NULL,
    -- Keys compare as bytes: the same equality as any deterministic collation, but
    -- no strcoll() per comparison in the indexes below (a first run of a million
    -- records queued about 40% faster than under C.UTF-8; more under en_US).
    sync_key        text COLLATE "C",
    status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'skipped', 'failed', 'invalid')),
    payload         jsonb,
    payload_hash    bigint,        -- hash of the mapped values (see planning.rs)
    message_id      uuid,          -- minted when queued, kept across retries
    version         integer NOT NULL DEFAULT 1,   -- bumped when a newer payload replaces a pending one
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    lease_until     timestamptz,   -- unused since 0.2.0 (the worker keeps what it sends in memory); kept for one layout with upgraded installs
    http_status     integer,
    error           text,
    queued_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    delivered_at    timestamptz,
    replaced_at     timestamptz    -- a failed record whose key was queued again
) WITH (fillfactor = 80);         -- room for updates to stay in their page
-- One pending record per key: a newer change replaces the pending one.
CREATE UNIQUE INDEX record_pending_key ON vitally.record (sync_id, sync_key) WHERE status = 'pending';
-- The worker claims due records per sync, oldest first, from where its last claim ended
-- (next_attempt_at, id): it never walks the entries delivered records leave behind.
CREATE INDEX record_due ON vitally.record (sync_id, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX record_failed ON vitally.record (sync_id, sync_key) WHERE status = 'failed' AND replaced_at IS NULL;

-- What was last delivered per key: the payload's hash (append: that the event was sent).
CREATE TABLE vitally.delivery_state (
    sync_id      bigint NOT NULL,
    sync_key     text COLLATE "C" NOT NULL,   -- as in vitally.record
    payload_hash bigint NOT NULL,
    account_ids  jsonb,            -- users: the accounts delivered, for unlink_removed_accounts
    delivered_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (sync_id, sync_key)
);

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

-- What Vitally answered, per destination and minute: vitally.metrics reads it instead of
-- counting records. Kept as long as records (at least a day).
CREATE TABLE vitally.delivery_stats (
    destination_id bigint NOT NULL,
    minute         timestamptz NOT NULL,
    delivered      bigint NOT NULL DEFAULT 0,
    skipped        bigint NOT NULL DEFAULT 0,
    failed         bigint NOT NULL DEFAULT 0,
    retried        bigint NOT NULL DEFAULT 0,   -- answers that will be tried again (5xx, timeouts, ...)
    rate_limited   bigint NOT NULL DEFAULT 0,   -- records put back by a 429 (no attempt used)
    PRIMARY KEY (destination_id, minute)
);

-- A table a sync watches (vitally.watch()): its statement triggers (src/watching.rs) mark
-- the sync keys a committed change touches, and the live planner plans just those.
CREATE TABLE vitally.watch (
    id             bigserial PRIMARY KEY,
    sync_id        bigint NOT NULL REFERENCES vitally.sync (id) ON DELETE CASCADE,
    relid          regclass NOT NULL,   -- regclass: pg_dump keeps it by name
    key_expr       text NOT NULL,       -- an expression over the table's row giving the sync key
    search_path    text NOT NULL,       -- the watcher's, in force whenever key_expr is read
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_change_at timestamptz,         -- the latest change planned
    last_error     text,                -- the last live plan's failure, until one succeeds
    failed_at      timestamptz,
    UNIQUE (sync_id, relid)
);

-- Keys marked by watches, not planned yet. Writers only append (no key, no index: a
-- unique key would make a writer wait for the planner's transaction); the live planner
-- deletes what it plans in the transaction that queues it, so a crash loses no mark.
CREATE TABLE vitally.change (
    watch_id   bigint NOT NULL,
    sync_id    bigint NOT NULL,
    sync_key   text,                    -- NULL: every key (a TRUNCATE, a key that failed)
    changed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

REVOKE ALL ON vitally.sync, vitally.sync_run, vitally.record, vitally.delivery_state, vitally.read_order, vitally.delivery_stats, vitally.watch, vitally.change FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('vitally.sync', '');
SELECT pg_catalog.pg_extension_config_dump('vitally.sync_id_seq', '');
-- So that a restore into a new cluster does not resend what was already delivered.
SELECT pg_catalog.pg_extension_config_dump('vitally.delivery_state', '');
SELECT pg_catalog.pg_extension_config_dump('vitally.watch', '');
SELECT pg_catalog.pg_extension_config_dump('vitally.watch_id_seq', '');
