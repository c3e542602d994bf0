#!/usr/bin/env bash
# Quick start, command 1: the whole flow on a throwaway PostgreSQL and an in-process broker.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
exec cargo run --release --quiet -- demo "$@"
