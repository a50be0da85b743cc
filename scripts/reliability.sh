#!/usr/bin/env bash
# The reliability and security suite: the end-to-end scenarios that break things on
# purpose (faults, crashes, hostile input, roles that try what they should not). They are
# part of scripts/test.sh too; this runs them alone, with a summary per scenario.
# VITALLY_OUTAGE_SECS sets how long Vitally is down in the outage case (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
install_extension >/tmp/vitally-reliability-install.log 2>&1 || { cat /tmp/vitally-reliability-install.log; exit 1; }
status=0
for scenario in 02_security 06_sync_security 07_delivery 08_durability 11_faults 12_hostile_input 13_elevation 14_new_user 16_databases; do
    echo "== $scenario =="
    log="/tmp/vitally-reliability-$scenario.log"
    cargo test -p vitally-e2e --test e2e -- "$scenario" >"$log" 2>&1 || { status=1; echo "FAILED: see $log"; }
    grep -E '^test |^test result' "$log" || true
    # A renamed scenario must not pass by running nothing.
    if grep -qE '^test result: [a-zA-Z]+\. 0 passed; 0 failed' "$log"; then
        status=1
        echo "FAILED: no test matches $scenario"
    fi
done
exit $status
