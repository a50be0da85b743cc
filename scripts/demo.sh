#!/usr/bin/env bash
# Runs vitally_sync end to end on a throwaway cluster: installs what is missing,
# builds and installs the extension, starts PostgreSQL 15 with it preloaded,
# creates it, registers a destination and shows it.
#
#   scripts/demo.sh          start (or restart) the demo and leave the cluster running
#   scripts/demo.sh stop     stop the demo cluster and remove it
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

DEMO_DIR="${VITALLY_DEMO_DIR:-/tmp/vitally-demo}"
PORT="${VITALLY_DEMO_PORT:-54329}"
BIN=/usr/lib/postgresql/15/bin
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_demo() { psql -X -q -v ON_ERROR_STOP=1 -h "$DEMO_DIR" -p "$PORT" -U postgres "$@"; }

stop_demo() {
    if [ -f "$DEMO_DIR/data/postmaster.pid" ]; then
        as_postgres "$BIN/pg_ctl" -D "$DEMO_DIR/data" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$DEMO_DIR"
}

if [ "${1:-}" = "stop" ]; then
    stop_demo
    echo "demo stopped"
    exit 0
fi

bash scripts/setup.sh
echo "demo: building and installing the extension"
install_extension >/tmp/vitally-demo-install.log 2>&1 || { cat /tmp/vitally-demo-install.log; exit 1; }
stop_demo

mkdir -p "$DEMO_DIR"
[ "$(id -u)" -ne 0 ] || chown postgres:postgres "$DEMO_DIR"
as_postgres "$BIN/initdb" -D "$DEMO_DIR/data" -A trust -U postgres --no-sync >/dev/null
cat >> "$DEMO_DIR/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DEMO_DIR'
shared_preload_libraries = 'vitally_sync'
vitally.database = 'app'
CONF
as_postgres "$BIN/pg_ctl" -D "$DEMO_DIR/data" -l "$DEMO_DIR/server.log" -w start >/dev/null

psql_demo -d postgres -c "CREATE DATABASE app"
psql_demo -d app <<'SQL'
CREATE EXTENSION vitally_sync;
SELECT vitally.create_destination(
    name              => 'demo',
    analytics_api_key => 'demo-analytics-key',
    rest_api_key      => 'demo-rest-token',
    analytics_url     => 'http://127.0.0.1:8787/analytics/v1',
    rest_url          => 'http://127.0.0.1:8787/resources'
) AS destination_id \gset
\echo
\echo 'vitally.destinations (keys are never shown, only whether each is set):'
\x on
SELECT * FROM vitally.destinations;
\x off
SQL
# The worker started before the database existed; the postmaster restarts it within seconds.
for _ in $(seq 1 100); do
    [ -n "$(psql_demo -d app -Atc "SELECT pid FROM pg_stat_activity WHERE backend_type = 'vitally_sync worker'")" ] && break
    sleep 0.1
done
echo 'the background worker:'
psql_demo -d app -c "SELECT pid, backend_type, datname FROM pg_stat_activity WHERE backend_type = 'vitally_sync worker'"
echo
echo "The demo cluster is running. Connect with:  psql -h $DEMO_DIR -p $PORT -U postgres app"
echo "Stop it with:                             scripts/demo.sh stop"
