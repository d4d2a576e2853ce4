#!/usr/bin/env bash
# Makes sure the Google Cloud Pub/Sub emulator answers on
# 127.0.0.1:${WHARF_PUBSUB_PORT:-18085} (not the emulator's default 8085, so a
# developer's own emulator keeps its port). Idempotent:
# - uses the emulator jar of the gcloud SDK in the machine image
#   (cloud-pubsub-emulator-*-all.jar under /usr/lib/google-cloud-sdk, or
#   $WHARF_PUBSUB_JAR) with the system `java`; fails if either is missing;
# - starts it (in memory: it keeps nothing across restarts) only when its
#   port is not answering;
# - waits until it answers.
# The wharf-pubsub tests read WHARF_TEST_PUBSUB_URL (default
# pubsub://127.0.0.1:18085/wharf-test).
set -uo pipefail

PORT=${WHARF_PUBSUB_PORT:-18085}
LOG=${WHARF_PUBSUB_LOG:-/tmp/wharf-pubsub-emulator-$PORT.log}

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if up "$PORT"; then echo "pubsub: up on :$PORT"; exit 0; fi

JAR=${WHARF_PUBSUB_JAR:-}
if [ -z "$JAR" ]; then
  JAR=$(find /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk /opt/google-cloud-sdk \
          -name 'cloud-pubsub-emulator-*-all.jar' 2>/dev/null | sort | tail -n 1)
fi
if [ -z "$JAR" ] || ! [ -f "$JAR" ]; then
  echo "pubsub: no cloud-pubsub-emulator-*-all.jar found (set WHARF_PUBSUB_JAR)" >&2
  exit 1
fi
if ! command -v java >/dev/null; then
  echo "pubsub: java is missing (the emulator is a Java program)" >&2
  exit 1
fi

echo "pubsub: starting $(basename "$JAR") on :$PORT (log $LOG)"
# setsid + nohup: the emulator outlives this script and the test run.
setsid nohup java -jar "$JAR" --host=127.0.0.1 --port="$PORT" \
  >"$LOG" 2>&1 </dev/null &

for _ in $(seq 1 60); do
  up "$PORT" && { echo "pubsub: up on :$PORT"; exit 0; }
  sleep 1
done
echo "pubsub: NOT answering on :$PORT (see $LOG)" >&2
exit 1
