#!/usr/bin/env bash
# The main job: a 5 000-user, 30-minute steady-state simulation with its report.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec .venv/bin/peerphone simulate --users 5000 --duration 1800 --scenario steady --seed 1 "$@"
