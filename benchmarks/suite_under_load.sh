#!/usr/bin/env bash
# The whole test suite twice while another process keeps one core busy: the test files in their
# default order, then in reverse order. Prints each run's result line and wall time; the logs stay in
# $LOGS (default: a temporary folder). Run from the project root in the README's venv:
#   bash benchmarks/suite_under_load.sh
set -u
cd "$(dirname "$0")/.."
LOGS=${LOGS:-$(mktemp -d -t isles-suite-XXXXXX)}
eval "$(bash scripts/postgres.sh)"
python3 -c "while True: pass" &   # the other CPU-heavy process
hog=$!
trap 'kill $hog 2>/dev/null; eval "$ISLES_PG_STOP"' EXIT

run() {  # name, pytest arguments...
    local name=$1 start rc
    shift
    start=$(date +%s)
    python -m pytest -p no:cacheprovider "$@" > "$LOGS/$name.log" 2>&1
    rc=$?
    echo "$name: $(tail -n 1 "$LOGS/$name.log" | tr -d '=') rc=$rc wall=$(( $(date +%s) - start )) s, log $LOGS/$name.log"
}
run default
run reversed $(ls isles_pipeline_tests/test_*.py | sort -r)
