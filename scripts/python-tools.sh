#!/usr/bin/env bash
# Installs the Python tools the HTTP API tests run — an OpenAPI validator
# (openapi-spec-validator) and schemathesis — into .venv at the repo root,
# pinned, and only when they are missing or at other versions; a second run
# does nothing. scripts/test.sh calls it; crates/wharf-cli/tests/openapi.rs
# runs the tools (and fails under WHARF_REQUIRE_SERVICES=1 without them).
set -euo pipefail
cd "$(dirname "$0")/.."
want="openapi-spec-validator==0.9.0 schemathesis==4.32.5"
stamp=.venv/.wharf-python-tools
if [ -x .venv/bin/st ] && [ -x .venv/bin/openapi-spec-validator ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
started=$(date +%s)
[ -x .venv/bin/pip ] || python3 -m venv .venv
# shellcheck disable=SC2086
.venv/bin/pip install --quiet --disable-pip-version-check $want
echo "$want" > "$stamp"
echo "python tools installed in .venv in $(( $(date +%s) - started )) s: $want"
