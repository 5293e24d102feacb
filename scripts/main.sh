#!/usr/bin/env bash
# The main job: a 12-node peerphone network on loopback (real processes, real QUIC),
# exercised (registration, contacts, lookups between every pair, presence changes),
# reported and torn down. Extra arguments go to `peerphone demo` (e.g. --json out.json).
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec .venv/bin/peerphone demo "$@"
