#!/usr/bin/env bash
# The project's test command (README): every crate's unit, integration,
# conformance and doc tests, the `wharf` facade's with all its features. Starts the local services the adapter tests use
# if they are down; with WHARF_REQUIRE_SERVICES=1 (CI) a missing service fails
# its tests, otherwise they print that they skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-services.sh || echo "some services are down: their tests will skip (or fail under WHARF_REQUIRE_SERVICES=1)"
# The OpenAPI validator and schemathesis for the HTTP API's contract tests.
bash scripts/python-tools.sh || echo "python tools missing: the OpenAPI tests will skip (or fail under WHARF_REQUIRE_SERVICES=1)"
# Debian's chromium and playwright-core for the web console's browser tests.
bash scripts/console-tools.sh || echo "chromium or playwright-core missing: the console's browser tests will skip (or fail under WHARF_REQUIRE_SERVICES=1)"
# The `wharf` facade's features, which no other crate turns on: its router
# docs, guide pages and examples need `router`, the guide's adapter page the
# rest. Named here rather than in a second run, so one build serves both.
# `wharf-eventstore/postgres` builds and runs the PostgreSQL event store's
# suite (tests/postgres.rs).
FACADE=wharf/router,wharf/client,wharf/nats,wharf/redis,wharf/amqp,wharf/kafka,wharf/sqs,wharf/mqtt,wharf/pubsub,wharf/postgres,wharf/eventstore,wharf-eventstore/postgres
cargo test --workspace --no-fail-fast --features "$FACADE" "$@"
# `wharf bench`'s bare-client baselines need the CLI's `adapters` feature;
# Kafka's its `kafka` feature, SQS's `sqs` (aws-sdk-sqs), MQTT's `mqtt`
# (rumqttc) and Pub/Sub's `pubsub` (gcloud-pubsub), each of which includes
# `adapters` (one build for all; the CLI's tests without them check the
# message that names the feature).
exec cargo test -p wharf-cli --features kafka,sqs,mqtt,pubsub --test bench_bare --test bench_kafka --test bench_sqs --test bench_mqtt --test bench_pubsub "$@"
