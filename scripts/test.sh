#!/usr/bin/env bash
# Runs every test: the pure-Rust crates with cargo test, then the end-to-end suite
# against a real PostgreSQL 15 cluster with the freshly built extension preloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

bash scripts/setup.sh
echo "== released SQL scripts are unchanged =="
(cd sql/releases && sha256sum --quiet -c SHA256SUMS)
echo "== format and lint (rustfmt.toml; clippy with warnings as errors) =="
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== client, emulator and planner tests (no Postgres; real HTTP over loopback) =="
cargo test -p vitally-model -p vitally-client -p vitally-emulator -p vitally-planner --lib --tests
echo "== building and installing the extension =="
install_extension >/tmp/vitally-test-install.log 2>&1 || { cat /tmp/vitally-test-install.log; exit 1; }
echo "== end-to-end tests (real cluster) =="
cargo test -p vitally-e2e --test e2e
