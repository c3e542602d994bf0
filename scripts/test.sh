#!/usr/bin/env bash
# Quick start, command 2: the whole test suite (unit, property and integration tests against
# real throwaway PostgreSQL clusters and librdkafka's mock Kafka cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --no-fail-fast "$@"
else
    exec cargo test --no-fail-fast "$@"
fi
