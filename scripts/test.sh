#!/usr/bin/env bash
# The whole test suite, plus the linters that keep it honest.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
# The network-namespace NAT lab (tests/support/netlab.py) needs root, nftables and iproute2;
# the browser tests (tests/browser) Debian's Chromium, driven by Playwright (pyproject's dev
# extra), which cannot download a browser of its own here.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && { ! command -v nft >/dev/null || ! command -v ip >/dev/null \
         || ! command -v turnutils_uclient >/dev/null || [ ! -x /usr/bin/chromium ] \
         || ! command -v espeak-ng >/dev/null; }; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nftables iproute2 coturn chromium espeak-ng >/dev/null
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
