#!/usr/bin/env bash
# The whole test suite twice while another process keeps one core busy: as README runs it (xdist hands
# out the files with the most tests first), then with the files in reverse order, handed out in that
# order (--no-loadscope-reorder). Prints each run's result line and wall time; the logs stay in $LOGS
# (default: a temporary folder). Run from the project root in the README's venv:
#   bash benchmarks/suite_under_load.sh [default] [reversed]      (both when none is named)
set -u
cd "$(dirname "$0")/.."
LOGS=${LOGS:-$(mktemp -d -t isles-suite-XXXXXX)}
mkdir -p "$LOGS"
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
for name in ${*:-default reversed}; do
    case $name in
        default) run default ;;
        reversed) run reversed --no-loadscope-reorder $(ls isles_pipeline_tests/test_*.py | sort -r) ;;
        *) echo "unknown run $name (default, reversed)" >&2; exit 2 ;;
    esac
done
