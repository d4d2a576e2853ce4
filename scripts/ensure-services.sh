#!/usr/bin/env bash
# Makes sure the local services the adapter tests use are answering, starting
# any that are not with this machine's start commands. Idempotent.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_up() {
  local name=$1 port=$2
  for _ in $(seq 1 60); do
    up "$port" && { echo "$name: up on :$port"; return 0; }
    sleep 1
  done
  echo "$name: NOT answering on :$port" >&2
  return 1
}

start() {
  local name=$1 port=$2; shift 2
  if up "$port"; then echo "$name: up on :$port"; return 0; fi
  echo "$name: starting"
  "$@" >/dev/null 2>&1 || true
  wait_up "$name" "$port"
}

status=0
start nats 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || status=1
start redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
  --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || status=1
# RabbitMQ boots slowly (Erlang VM + plugins): allow it up to ~60 s.
start rabbitmq 5672 rabbitmq-server -detached || status=1
start postgres 5432 pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || status=1
# Mosquitto (MQTT 5) from Debian's packages (installed when missing), with
# scripts/mosquitto.conf: anonymous connections on 127.0.0.1:1883.
if [ ! -x /usr/sbin/mosquitto ] && ! up 1883; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto) >/dev/null 2>&1 ||
    echo "mosquitto: could not be installed" >&2
fi
start mosquitto 1883 bash -c "install -d -o mosquitto -g mosquitto /run/mosquitto /var/log/mosquitto /var/lib/mosquitto &&
  exec /usr/sbin/mosquitto -d -c '$(cd "$(dirname "$0")" && pwd)/mosquitto.conf'" || status=1
# The SQS test server, moto (installed from PyPI into .venv-moto when missing).
bash "$(dirname "$0")/ensure-moto.sh" || status=1
# The Google Cloud Pub/Sub emulator (the gcloud SDK's jar in the image).
bash "$(dirname "$0")/ensure-pubsub.sh" || status=1
# The Kafka-protocol test broker (built from crates.io when missing: the
# slow one, so last).
bash "$(dirname "$0")/ensure-kafka.sh" || status=1
exit $status
