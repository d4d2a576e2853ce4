#!/usr/bin/env bash
# The project's test command (README): every crate's unit, integration,
# conformance and doc tests, then the `wharf` facade's with the router. Starts the local services the adapter tests use
# if they are down; with WHARF_REQUIRE_SERVICES=1 (CI) a missing service fails
# its tests, otherwise they print that they skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-services.sh || echo "some services are down: their tests will skip (or fail under WHARF_REQUIRE_SERVICES=1)"
# The OpenAPI validator and schemathesis for the HTTP API's contract tests.
bash scripts/python-tools.sh || echo "python tools missing: the OpenAPI tests will skip (or fail under WHARF_REQUIRE_SERVICES=1)"
cargo test --workspace --no-fail-fast "$@"
# The facade's router docs, guide pages and examples need its `router`
# feature, which no other crate turns on.
exec cargo test -p wharf --features router --no-fail-fast "$@"
