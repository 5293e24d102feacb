# Sourced by the README's commands: make .venv with peerphone and its dev tools installed.
# Safe to run again: it only installs when pyproject.toml changed since the last install.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    if ! "$py" -m venv .venv 2>/dev/null; then
        # Debian ships venv/ensurepip separately.
        rm -rf .venv
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        else
            echo "python3 -m venv failed: install python3-venv (sudo apt-get install python3-venv)" >&2
            exit 1
        fi
        "$py" -m venv .venv
    fi
fi
# Calls decode and encode with the system's libopus (media/libopus.py).
if ! ldconfig -p 2>/dev/null | grep -q 'libopus\.so\.0'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq libopus0 >/dev/null
    else
        echo "libopus is missing: install it (sudo apt-get install libopus0)" >&2
        exit 1
    fi
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
