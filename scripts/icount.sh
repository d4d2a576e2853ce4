#!/usr/bin/env bash
# Instruction-count regression gate for the hot paths (CI runs it; see
# BENCHMARKS.md). Counts instructions per message with callgrind — repeatable
# on a noisy shared machine where seconds are not — for the broker's publish
# and consume paths and the router's dispatch, and compares them with the
# committed baseline (scripts/icount-baseline.txt).
#
#   bash scripts/icount.sh            # check: fail if a path costs more than
#                                     # baseline + ICOUNT_TOLERANCE percent (default 3)
#   bash scripts/icount.sh --update   # measure and write the baseline
#
# Per message = (Ir at 22,000 messages - Ir at 2,000) / 20,000, counting only
# inside the workload's phase function (--toggle-collect), so set-up and the
# fixed costs cancel out. Installs valgrind if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

BASELINE=scripts/icount-baseline.txt
TOLERANCE=${ICOUNT_TOLERANCE:-3}
SMALL=2000
BIG=22000

if ! command -v valgrind >/dev/null; then
    echo "installing valgrind"
    (apt-get update -qq && apt-get install -y -qq valgrind) >/dev/null
fi

cargo build -q --profile profiling -p wharf-broker --example broker_icount
cargo build -q --profile profiling -p wharf-router --example router_icount
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/profiling/examples"

# collected <binary> <phase function> <mode> <n>: instructions counted inside the phase.
collected() {
    local out
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        --collect-atstart=no --toggle-collect="*$2*" "$bin/$1" "$3" "$4" 2>"$out" >/dev/null
    local ir
    ir=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out")
    rm -f "$out"
    [ -n "$ir" ] || { echo "callgrind printed no count for $1 $3" >&2; exit 1; }
    echo "$ir"
}

# path name, binary, phase function, mode
PATHS=(
    "broker-publish broker_icount publish_phase publish"
    "broker-consume broker_icount consume_phase consume"
    "router-dispatch router_icount route_phase dispatch"
    "router-stack router_icount route_phase stack"
)

declare -A measured
for p in "${PATHS[@]}"; do
    read -r name binary phase mode <<<"$p"
    small=$(collected "$binary" "$phase" "$mode" $SMALL)
    big=$(collected "$binary" "$phase" "$mode" $BIG)
    measured[$name]=$(( (big - small) / (BIG - SMALL) ))
done

if [ "${1:-}" = "--update" ]; then
    {
        echo "# Instructions per message on the hot paths (scripts/icount.sh --update)."
        for p in "${PATHS[@]}"; do
            read -r name _ <<<"$p"
            echo "$name ${measured[$name]}"
        done
    } >"$BASELINE"
    cat "$BASELINE"
    exit 0
fi

status=0
printf '%-18s %10s %10s %8s\n' path baseline now change
for p in "${PATHS[@]}"; do
    read -r name _ <<<"$p"
    base=$(awk -v n="$name" '$1 == n { print $2 }' "$BASELINE")
    now=${measured[$name]}
    if [ -z "$base" ]; then
        echo "$name: no baseline in $BASELINE (run with --update)"; status=1; continue
    fi
    change=$(awk -v a="$base" -v b="$now" 'BEGIN { printf "%+.1f%%", (b - a) * 100 / a }')
    printf '%-18s %10s %10s %8s\n' "$name" "$base" "$now" "$change"
    if awk -v a="$base" -v b="$now" -v t="$TOLERANCE" 'BEGIN { exit !(b > a * (1 + t / 100)) }'; then
        echo "  REGRESSION: $name costs more than $TOLERANCE % over its baseline"; status=1
    elif awk -v a="$base" -v b="$now" -v t="$TOLERANCE" 'BEGIN { exit !(b < a * (1 - t / 100)) }'; then
        echo "  faster than the baseline: lower it with 'bash scripts/icount.sh --update' in the same commit"
    fi
done
exit $status
