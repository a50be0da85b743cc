-- Upgrade from 0.1.0 to 0.2.0. Unreleased until 0.2.0 ships; from then on never edited.
-- Every change here is also made in bootstrap.sql/finalize.sql (a fresh install), and the
-- end-to-end test upgrades::from_each_released_version checks that both give one schema.
\echo Use "ALTER EXTENSION vitally_sync UPDATE" to load this file. \quit
