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
