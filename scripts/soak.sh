#!/usr/bin/env bash
# The long fault soak: the kill -9 scenario with 200 cycles (CI runs 20), then 10 failovers of
# a PostgreSQL 18 primary (CI runs 3), printing each run's report (events inserted, delivered,
# lost, duplicates). Takes several minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
PGOUTBOX_KILL_CYCLES="${PGOUTBOX_KILL_CYCLES:-200}" \
    cargo test --release --test it -- --nocapture crash_restart::
# Then failover: PGOUTBOX_FAILOVERS primaries killed and standbys promoted (CI runs 3).
PGOUTBOX_FAILOVERS="${PGOUTBOX_FAILOVERS:-10}" PGOUTBOX_PG_BIN="$(scripts/pg-fetch.sh 18-full)" \
    cargo test --release --test it -- --nocapture failover::primary_failover
