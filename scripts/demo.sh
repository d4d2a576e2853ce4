#!/usr/bin/env bash
# Wharf in one minute (after the build): build the `wharf` binary, start `wharf serve` on a
# temporary data dir and a free port, publish a few messages with
# `wharf pub`, consume them with `wharf sub`, then stop the server with
# SIGTERM (graceful: flush and persist group positions).
set -euo pipefail

cd "$(dirname "$0")/.."
# The release build the README's server section uses, so the binary built
# here is the one you go on with (target/release/wharf). The first build
# compiles every dependency and takes a few minutes; cargo shows progress.
echo "==> building wharf (cargo build --release -p wharf-cli)"
cargo build --release -p wharf-cli
WHARF="${CARGO_TARGET_DIR:-target}/release/wharf"

DATA="$(mktemp -d)"
LOG="$DATA/serve.log"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null || echo 7420)"
export WHARF_URL="http://127.0.0.1:$PORT"

"$WHARF" serve --data-dir "$DATA/data" --listen "127.0.0.1:$PORT" >"$LOG" 2>&1 &
SERVER=$!
cleanup() {
    kill "$SERVER" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

echo "==> waiting for $WHARF_URL/healthz"
for _ in $(seq 1 100); do
    if curl -fsS "$WHARF_URL/healthz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fsS "$WHARF_URL/healthz" >/dev/null
cat "$LOG"

echo "==> wharf topic create demo.orders --partitions 2"
"$WHARF" topic create demo.orders --partitions 2
echo "==> wharf pub demo.orders 'order 1' and two more from stdin"
"$WHARF" pub demo.orders --key customer-7 --header source=demo "order 1"
printf 'order 2\norder 3\n' | "$WHARF" pub demo.orders
echo "==> wharf sub demo.orders --group demo --from earliest --count 3"
"$WHARF" sub demo.orders --group demo --from earliest --count 3 --timeout 10
echo "==> wharf group list"
"$WHARF" group list

echo "==> stopping the server (SIGTERM)"
kill -TERM "$SERVER"
wait "$SERVER"
cat "$LOG" | tail -n 1
echo "==> demo finished"
