#!/usr/bin/env bash
# Runs vitally_sync end to end on this machine: installs what is missing, builds and
# installs the extension, starts the local Vitally emulator and a throwaway
# PostgreSQL 15 with the extension preloaded, loads a small SaaS data set
# (organizations, accounts, users in several accounts, events, NPS responses),
# defines a sync per object, runs them, waits for delivery, and shows the result.
#
#   scripts/demo.sh          run the demo, leaving the cluster and the emulator running
#   scripts/demo.sh stop     stop both and remove the demo's files
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

DEMO_DIR="${VITALLY_DEMO_DIR:-/tmp/vitally-demo}"
PORT="${VITALLY_DEMO_PORT:-54329}"
EMULATOR_PORT="${VITALLY_EMULATOR_PORT:-8787}"
BIN=/usr/lib/postgresql/15/bin
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_demo() { psql -X -q -v ON_ERROR_STOP=1 -h "$DEMO_DIR" -p "$PORT" -U postgres "$@"; }

stop_demo() {
    if [ -f "$DEMO_DIR/data/postmaster.pid" ]; then
        as_postgres "$BIN/pg_ctl" -D "$DEMO_DIR/data" -m fast -w stop >/dev/null || true
    fi
    if [ -f "$DEMO_DIR/emulator.pid" ]; then
        kill "$(cat "$DEMO_DIR/emulator.pid")" 2>/dev/null || true
    fi
    rm -rf "$DEMO_DIR"
}

if [ "${1:-}" = "stop" ]; then
    stop_demo
    echo "demo stopped"
    exit 0
fi

bash scripts/setup.sh
echo "demo: building and installing the extension and the emulator"
install_extension >/tmp/vitally-demo-install.log 2>&1 || { cat /tmp/vitally-demo-install.log; exit 1; }
cargo build -q -p vitally-emulator --bin vitally-emulator
stop_demo

mkdir -p "$DEMO_DIR"
[ "$(id -u)" -ne 0 ] || chown postgres:postgres "$DEMO_DIR"
"$CARGO_TARGET_DIR/debug/vitally-emulator" --listen "127.0.0.1:$EMULATOR_PORT" >"$DEMO_DIR/emulator.log" 2>&1 &
echo $! >"$DEMO_DIR/emulator.pid"

as_postgres "$BIN/initdb" -D "$DEMO_DIR/data" -A trust -U postgres --no-sync >/dev/null
cat >> "$DEMO_DIR/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DEMO_DIR'
shared_preload_libraries = 'vitally_sync, pg_cron'
vitally.allowed_hosts = '127.0.0.1'   # the local emulator; by default only Vitally's own hosts
cron.database_name = 'app'
cron.use_background_workers = on
CONF
as_postgres "$BIN/pg_ctl" -D "$DEMO_DIR/data" -l "$DEMO_DIR/server.log" -w start >/dev/null
psql_demo -d postgres -c "CREATE DATABASE app"

psql_demo -d app <<SQL
CREATE EXTENSION vitally_sync;
CREATE EXTENSION pg_cron;

-- A small B2B SaaS product's data.
CREATE TABLE organizations (id text PRIMARY KEY, name text, industry text);
CREATE TABLE accounts (id text PRIMARY KEY, organization_id text REFERENCES organizations, name text,
                       plan text, mrr numeric, seats int, trial_ends date, created_at timestamptz);
CREATE TABLE users (id text PRIMARY KEY, email text, name text, role text, last_seen timestamptz);
CREATE TABLE memberships (user_id text REFERENCES users, account_id text REFERENCES accounts);
CREATE TABLE events (id bigserial PRIMARY KEY, user_id text, account_id text, name text, at timestamptz, properties jsonb);
CREATE TABLE nps (id text PRIMARY KEY, user_id text, score int, comment text, answered_at timestamptz);

INSERT INTO organizations VALUES ('org_acme', 'Acme Group', 'manufacturing'), ('org_globex', 'Globex', 'energy');
INSERT INTO accounts VALUES
  ('acct_acme_eu', 'org_acme', 'Acme Europe', 'enterprise', 4200, 120, NULL, '2025-02-01T09:00:00Z'),
  ('acct_acme_us', 'org_acme', 'Acme US', 'pro', 1800, 45, NULL, '2025-03-15T14:30:00Z'),
  ('acct_globex', 'org_globex', 'Globex', 'pro', 950, 20, NULL, '2025-06-01T08:00:00Z'),
  ('acct_initech', NULL, 'Initech', 'trial', 0, 5, '2026-12-20', '2026-11-20T10:00:00Z');
INSERT INTO users VALUES
  ('u_jane', 'jane@acme.com', 'Jane Doe', 'admin', now() - interval '1 hour'),
  ('u_raj', 'raj@acme.com', 'Raj Patel', 'member', now() - interval '2 days'),
  ('u_hank', 'hank@globex.com', 'Hank Scorpio', 'owner', now() - interval '5 minutes'),
  ('u_pete', 'peter@initech.com', 'Peter Gibbons', 'member', NULL);
INSERT INTO memberships VALUES ('u_jane', 'acct_acme_eu'), ('u_jane', 'acct_acme_us'), ('u_raj', 'acct_acme_us'),
                               ('u_hank', 'acct_globex'), ('u_pete', 'acct_initech');
INSERT INTO events (user_id, account_id, name, at, properties) VALUES
  ('u_jane', 'acct_acme_eu', 'Report Exported', now() - interval '3 hours', '{"format": "csv"}'),
  ('u_jane', 'acct_acme_us', 'Dashboard Viewed', now() - interval '2 hours', '{}'),
  ('u_hank', 'acct_globex', 'Integration Connected', now() - interval '1 day', '{"integration": "salesforce"}'),
  ('u_pete', 'acct_initech', 'Signed Up', now() - interval '10 days', '{"source": "ads"}');
INSERT INTO nps VALUES ('nps_1', 'u_jane', 9, 'Love the exports', now() - interval '1 day'),
                       ('nps_2', 'u_hank', 6, NULL, now() - interval '3 days');

SELECT vitally.create_destination(
    name              => 'demo',
    analytics_api_key => 'test-analytics-key',
    rest_api_key      => 'test-rest-token',
    analytics_url     => 'http://127.0.0.1:$EMULATOR_PORT/analytics/v1',
    rest_url          => 'http://127.0.0.1:$EMULATOR_PORT/resources') \gset

SELECT vitally.create_sync('organizations', 'demo', 'organization', 'upsert',
    \$\$SELECT id, name, industry FROM organizations\$\$, 'id');
SELECT vitally.create_sync('accounts', 'demo', 'account', 'upsert',
    \$\$SELECT id, organization_id, name, plan, mrr, seats, trial_ends, created_at FROM accounts\$\$, 'id');
SELECT vitally.create_sync('users', 'demo', 'user', 'upsert',
    \$\$SELECT u.id, array_agg(m.account_id ORDER BY m.account_id) AS account_ids, u.email, u.name, u.role, u.last_seen
        FROM users u JOIN memberships m ON m.user_id = u.id GROUP BY u.id\$\$, 'id');
SELECT vitally.create_sync('events', 'demo', 'event', 'append',
    \$\$SELECT id, name AS event, user_id, account_id, at AS timestamp, properties->>'format' AS format FROM events\$\$, 'id');
SQL

echo
echo "== vitally.sync() for each, then vitally.wait() for each run =="
for s in organizations accounts users events; do
    run=$(psql_demo -d app -Atc "SELECT vitally.sync('$s')")
    status=$(psql_demo -d app -Atc "SELECT vitally.wait($run, timeout => '60 seconds')")
    printf '  %-14s run %-3s %s\n' "$s" "$run" "$status"
done

# NPS responses need their users in Vitally, which the users sync just made.
psql_demo -d app -c "SELECT vitally.create_sync('nps', 'demo', 'nps_response', 'upsert',
    \$\$SELECT id, user_id, score, comment AS feedback, answered_at AS responded_at FROM nps\$\$, 'id')" >/dev/null
run=$(psql_demo -d app -Atc "SELECT vitally.sync('nps')")
printf '  %-14s run %-3s %s\n' nps "$run" "$(psql_demo -d app -Atc "SELECT vitally.wait($run, timeout => '60 seconds')")"

echo
echo "== vitally.sync_status =="
psql_demo -d app -c "SELECT sync_name, object, last_run_status AS status, rows_read, records_queued AS queued,
                            records_delivered AS delivered, records_invalid AS invalid, records_failed AS failed, pending_now
                       FROM vitally.sync_status ORDER BY sync_name"
echo "== a second run sends only what changed =="
psql_demo -d app -c "UPDATE accounts SET seats = seats + 5 WHERE id = 'acct_globex'" >/dev/null
run=$(psql_demo -d app -Atc "SELECT vitally.sync('accounts')")
psql_demo -d app -Atc "SELECT vitally.wait($run, timeout => '60 seconds')" >/dev/null
psql_demo -d app -c "SELECT id AS run, sync_name, status, rows_read, records_queued, records_unchanged, records_delivered
                       FROM vitally.sync_runs WHERE id = $run"

echo "== run it every 15 minutes from now on (pg_cron), and what an operator watches =="
psql_demo -d app -c "SELECT vitally.schedule('accounts', '*/15 * * * *') AS cron_job"
psql_demo -d app -c "SELECT * FROM vitally.metrics"

echo "== what the emulator received =="
python3 - "$EMULATOR_PORT" <<'PY'
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}/_emulator"
get = lambda path: json.load(urllib.request.urlopen(base + path))
for kind in ["organizations", "accounts", "users"]:
    for o in get(f"/objects/{kind}")["results"]:
        extra = f" accounts={o['accountIds']}" if o.get("accountIds") else ""
        print(f"  {kind[:-1]:<12} {o['externalId']:<14} traits={json.dumps(o['traits'], sort_keys=True)}{extra}")
for e in get("/objects/events")["results"]:
    print(f"  event        {e['event']:<22} user={e.get('userId')} account={e.get('accountId')} at={e['timestamp']}")
for n in get("/objects/npsResponses")["results"]:
    print(f"  nps response {n['externalId']:<14} score={n['score']}")
c = get("/counters")
print(f"  requests: {c['requests']} ({c['analytics_requests']} Analytics, {c['rest_requests']} REST), messages: {c['messages']}")
PY

echo
echo "The demo keeps running. Connect with:  psql -h $DEMO_DIR -p $PORT -U postgres app"
echo "The emulator:                         http://127.0.0.1:$EMULATOR_PORT/_emulator/counters"
echo "Stop both with:                       scripts/demo.sh stop"
