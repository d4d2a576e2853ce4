#!/usr/bin/env bash
# Installs what the web console's browser tests run: Debian's `chromium`
# (apt, only when /usr/bin/chromium is missing) and `playwright-core` from
# npm, pinned in tools/console-e2e/package.json, into
# tools/console-e2e/node_modules (only when missing or at another version).
# A second run does nothing. scripts/test.sh calls it;
# crates/wharf-cli/tests/console.rs runs the scripts (and fails under
# WHARF_REQUIRE_SERVICES=1 without chromium or node).
# The console itself has no build step: Node is only for these tests.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
if [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
    echo "chromium installed: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
fi
command -v npm >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nodejs npm >/dev/null
}
dir=tools/console-e2e
want=$(node -p "require('./$dir/package.json').dependencies['playwright-core']")
have=$(node -p "try { require('./$dir/node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$have" != "$want" ]; then
    (cd "$dir" && npm install --no-audit --no-fund --silent --no-package-lock)
    echo "playwright-core $want installed in $dir in $(( $(date +%s) - started )) s"
fi
