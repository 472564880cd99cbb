#!/usr/bin/env bash
# Install (with dev tools) and run the default test suite. Slow tests: add `-m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
# The page's browser tests drive Debian's Chromium (never a downloaded one). Install it when it
# is missing and we may (root, apt); otherwise those tests skip and say why.
if [ ! -x /usr/bin/chromium ] && [ -z "${RBC_CHROMIUM:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing chromium for the browser tests (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "no /usr/bin/chromium and not root: the browser tests will be skipped" >&2
    fi
fi
exec .venv/bin/python -m pytest -m "not slow" "$@"
