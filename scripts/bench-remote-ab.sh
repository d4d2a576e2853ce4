#!/usr/bin/env bash
# A/B of the remote publish path: two `wharf` builds, each as client and as
# server, against the in-process broker, in the same rounds.
#
#   OLD=/path/to/old/wharf NEW=target/release/wharf bash scripts/bench-remote-ab.sh [ROUNDS] [COUNT]
#
# Build the old binary from another checkout into its own CARGO_TARGET_DIR
# (never the same target dir: cargo would reuse one tree's artifacts for the
# other). Each round runs embedded, old remote and new remote in a rotating
# order (this VM changes speed between minutes, so only same-round ratios
# compare); prints remote/embedded per round and the medians.
set -euo pipefail

NEW=${NEW:-target/release/wharf}
OLD=${OLD:?set OLD to the wharf binary to compare against}
ROUNDS=${1:-12}
COUNT=${2:-800000}
OLD_PORT=${OLD_PORT:-7498}
NEW_PORT=${NEW_PORT:-7499}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$OLD" serve --data-dir "$work/old" --listen "127.0.0.1:$OLD_PORT" >"$work/old.log" 2>&1 &
pids+=($!)
"$NEW" serve --data-dir "$work/new" --listen "127.0.0.1:$NEW_PORT" >"$work/new.log" 2>&1 &
pids+=($!)
for port in "$OLD_PORT" "$NEW_PORT"; do
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
        sleep 0.1
    done
done

rate() { # binary backend -> msgs/s
    "$1" bench --backend "$2" --count "$COUNT" --batch 1000 --producers 8 --size 100 --json \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["msgs_per_sec"])'
}
ratio() { python3 -c "print(f'{$1 / $2:.3f}')"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

old_ratios=()
new_ratios=()
for i in $(seq 1 "$ROUNDS"); do
    case $((i % 3)) in
    0) e=$(rate "$NEW" embedded); o=$(rate "$OLD" "http://127.0.0.1:$OLD_PORT"); n=$(rate "$NEW" "http://127.0.0.1:$NEW_PORT") ;;
    1) o=$(rate "$OLD" "http://127.0.0.1:$OLD_PORT"); n=$(rate "$NEW" "http://127.0.0.1:$NEW_PORT"); e=$(rate "$NEW" embedded) ;;
    2) n=$(rate "$NEW" "http://127.0.0.1:$NEW_PORT"); e=$(rate "$NEW" embedded); o=$(rate "$OLD" "http://127.0.0.1:$OLD_PORT") ;;
    esac
    a=$(ratio "$o" "$e")
    b=$(ratio "$n" "$e")
    printf 'round %2d  embedded %9.0f/s  old %9.0f/s (%s)  new %9.0f/s (%s)\n' "$i" "$e" "$o" "$a" "$n" "$b"
    old_ratios+=("$a")
    new_ratios+=("$b")
done
echo "median remote/embedded: old $(median "${old_ratios[@]}")  new $(median "${new_ratios[@]}")"
