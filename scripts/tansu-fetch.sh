#!/usr/bin/env bash
# Prints the path of a tansu broker binary (default 0.6.0), building it first if needed:
# `cargo install tansu` from crates.io, pinned and --locked, with SQLite file storage
# (feature libsql: durable, its schema shipped in the crate) and memory storage (dynostore).
# Cached outside the repository in $PGOUTBOX_TANSU_CACHE (default /var/cache/pgoutbox/tansu);
# the first build takes about ten minutes on two cores. tansu is a second, independent
# Kafka-protocol broker for the Kafka tests, next to librdkafka's mock cluster:
#   PGOUTBOX_TANSU=$(scripts/tansu-fetch.sh) cargo nextest run -E 'test(/^kafka_tansu::/)'
set -euo pipefail

version=${1:-0.6.0}
cache=${PGOUTBOX_TANSU_CACHE:-/var/cache/pgoutbox/tansu}
dir=$cache/$version
if [ ! -x "$dir/bin/tansu" ]; then
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "tansu-fetch: building tansu $version (cargo install, about ten minutes)" >&2
    CARGO_TARGET_DIR=$tmp/target CARGO_INCREMENTAL=0 cargo install --quiet tansu \
        --version "$version" --locked --features libsql,dynostore --root "$tmp/root" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    mv "$tmp/root/bin" "$dir/bin"
fi
echo "$dir/bin/tansu"
