#!/usr/bin/env bash
# The benchmark, one command: starts its own PostgreSQL, Kafka-protocol broker, NATS server and
# RabbitMQ node, runs the release binary, prints a markdown table and writes
# target/bench/results.{json,md} and
# target/bench/latency.svg. Then the criterion micro-benchmarks (decoder, mapper) in MB/s.
#   scripts/bench.sh                 # 1M-event backlogs, 3 runs each, 10 s per load level
#   BENCH_EVENTS=100000 BENCH_REPS=1 BENCH_SECONDS=3 scripts/bench.sh   # a quick look
# NATS: a current nats-server (scripts/nats-fetch.sh), because Debian's 2.9.10 stalls
# publishes to file-backed streams (docs/nats.md); PGOUTBOX_NATS_SERVER picks another,
# BENCH_NATS_SERVER=debian Debian's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
if [ -z "${PGOUTBOX_NATS_SERVER:-}" ] && [ "${BENCH_NATS_SERVER:-}" != debian ]; then
    PGOUTBOX_NATS_SERVER=$(scripts/nats-fetch.sh)
    export PGOUTBOX_NATS_SERVER
fi
mkdir -p target/bench
: > target/bench/pgoutbox.log
cargo bench --bench e2e
if [ "${BENCH_MICRO:-1}" = 1 ]; then
    cargo bench --bench decode -- --warm-up-time 1 --measurement-time 3
fi
