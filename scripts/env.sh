# Sourced by the other scripts: one build cache outside the work tree, so that a fresh
# clone (as CI makes) reuses the last build on the same machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vitally_sync/target}"
export PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
export PATH="$HOME/.cargo/bin:$PATH"

# Builds the extension and installs it into Debian's PostgreSQL 15.
install_extension() {
    local sudo_flag=""
    [ "$(id -u)" -eq 0 ] || sudo_flag="--sudo"
    # `|| return`: callers run this in an `||` list, where `set -e` does not stop a failed build.
    cargo pgrx install --pg-config "$PG_CONFIG" $sudo_flag "$@" || return 1
    # Released versions' install scripts, so that an older version can be installed and
    # upgraded (cargo pgrx installs only the current one and the upgrade scripts).
    local dir; dir="$("$PG_CONFIG" --sharedir)/extension"
    if [ "$(id -u)" -eq 0 ]; then cp sql/releases/vitally_sync--*.sql "$dir/"; else sudo cp sql/releases/vitally_sync--*.sql "$dir/"; fi
}
