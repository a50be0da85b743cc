-- The extension's tables. Users never touch them directly: they call the functions in
-- schema vitally and read its views. Only the extension's owner has privileges here.

CREATE SCHEMA IF NOT EXISTS vitally;
REVOKE ALL ON SCHEMA vitally FROM PUBLIC;

-- One role to grant: GRANT vitally_user TO alice; lets alice use the extension.
-- Roles are cluster-wide, so another database's install may have made it already.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'vitally_user') THEN
        CREATE ROLE vitally_user NOLOGIN;
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
