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

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA vitally FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA vitally TO vitally_user;
REVOKE ALL ON vitally.destinations FROM PUBLIC;
GRANT SELECT ON vitally.destinations TO vitally_user;
