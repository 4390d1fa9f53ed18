#!/usr/bin/env bash
# The report's browser test needs Debian's chromium. Install it when it is missing and we can
# (root with apt-get, as in CI); otherwise say so: that one test then skips, naming the reason.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the report's browser test"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
else
    echo "chromium is not installed and cannot be installed here (needs root and apt-get);" \
         "the report's browser test will be skipped" >&2
fi
