#!/usr/bin/env bash
# Makes sure the Kafka-protocol test broker answers on 127.0.0.1:${WHARF_KAFKA_PORT:-19092}
# (not 9092: a real Kafka on this machine keeps its port). Idempotent:
# - installs `nisshi` 0.8.1 (a Kafka-protocol broker from crates.io; it needs
#   the nightly toolchain, ~13 min) only when ~/.cargo/bin/nisshi is missing;
# - starts it, in memory, only when its port is not answering;
# - waits until it answers.
# The wharf-kafka tests read WHARF_TEST_KAFKA_URL (default kafka://127.0.0.1:19092).
set -uo pipefail

PORT=${WHARF_KAFKA_PORT:-19092}
VERSION=0.8.1
BIN="${CARGO_HOME:-$HOME/.cargo}/bin/nisshi"
LOG=${WHARF_KAFKA_LOG:-/tmp/wharf-nisshi-$PORT.log}

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if up "$PORT"; then echo "kafka: up on :$PORT"; exit 0; fi

if ! [ -x "$BIN" ]; then
  echo "kafka: installing nisshi $VERSION (nightly toolchain)"
  if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal || exit 1
  fi
  cargo +nightly install nisshi --version "$VERSION" --locked || exit 1
fi

echo "kafka: starting nisshi on :$PORT (log $LOG)"
# setsid + nohup: the broker outlives this script and the test run.
setsid nohup "$BIN" \
  --listener-url "tcp://127.0.0.1:$PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://nisshi/ \
  --group-initial-rebalance-delay 0s \
  >"$LOG" 2>&1 </dev/null &

for _ in $(seq 1 60); do
  up "$PORT" && { echo "kafka: up on :$PORT"; exit 0; }
  sleep 1
done
echo "kafka: NOT answering on :$PORT (see $LOG)" >&2
exit 1
