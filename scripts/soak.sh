#!/usr/bin/env bash
# The long fault soak: the kill -9 scenario with 200 cycles (CI runs 20), printing the
# per-run report (events inserted, delivered, lost, duplicates). Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
PGOUTBOX_KILL_CYCLES="${PGOUTBOX_KILL_CYCLES:-200}" \
    cargo test --release --test crash_restart -- --nocapture
