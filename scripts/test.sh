#!/usr/bin/env bash
# Quick start, command 2: the whole test suite (unit, property and integration tests against
# real throwaway PostgreSQL clusters and librdkafka's mock Kafka cluster), then the PostgreSQL
# version matrix (scripts/matrix.sh; PGOUTBOX_MATRIX="" skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast "$@" || status=$?
else
    cargo test --no-fail-fast "$@" || status=$?
fi
# Then the PostgreSQL version matrix (13-18); PGOUTBOX_MATRIX="" skips it.
if [ $# -eq 0 ] && [ -n "${PGOUTBOX_MATRIX-13 14 16 17 18}" ]; then
    scripts/matrix.sh || status=1
fi
exit $status
