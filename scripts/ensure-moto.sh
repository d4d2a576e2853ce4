#!/usr/bin/env bash
# Makes sure the SQS test server answers on 127.0.0.1:${WHARF_MOTO_PORT:-15000}.
# Idempotent:
# - installs `moto[server]` (pinned, from PyPI) into .venv-moto at the repo
#   root only when it is missing or at another version. A venv of its own, not
#   the .venv of scripts/python-tools.sh: the two pin different packages and
#   each checks its own stamp, so neither reinstalls because of the other;
# - starts `moto_server` (in memory) only when its port is not answering;
# - waits until it answers.
# The wharf-sqs tests read WHARF_TEST_SQS_URL (default sqs://127.0.0.1:15000?region=us-east-1).
set -uo pipefail
cd "$(dirname "$0")/.."

PORT=${WHARF_MOTO_PORT:-15000}
WANT="moto[server]==5.2.6"
VENV=.venv-moto
STAMP=$VENV/.wharf-moto
LOG=${WHARF_MOTO_LOG:-/tmp/wharf-moto-$PORT.log}

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if up "$PORT"; then echo "moto (sqs): up on :$PORT"; exit 0; fi

if ! [ -x "$VENV/bin/moto_server" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  started=$(date +%s)
  echo "moto (sqs): installing $WANT into $VENV"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" || exit 1
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$WANT" || exit 1
  echo "$WANT" > "$STAMP"
  echo "moto (sqs): installed in $(( $(date +%s) - started )) s"
fi

echo "moto (sqs): starting moto_server on :$PORT (log $LOG)"
# setsid + nohup: the server outlives this script and the test run.
setsid nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 </dev/null &

for _ in $(seq 1 60); do
  up "$PORT" && { echo "moto (sqs): up on :$PORT"; exit 0; }
  sleep 1
done
echo "moto (sqs): NOT answering on :$PORT (see $LOG)" >&2
exit 1
