#!/usr/bin/env bash
# Benchmarks: installs the release build of the extension and prints a table of
# ratios measured side by side in one run. BENCH_ROWS sets the size (default 1,000,000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
install_extension --release >/tmp/vitally-bench-install.log 2>&1 || { cat /tmp/vitally-bench-install.log; exit 1; }
cargo run --release -q -p vitally-bench
