#!/usr/bin/env bash
# Soak test: 10 minutes (or $1 seconds) of mixed uploads, downloads, SIGKILLed clients and server,
# a nearly full file system, a quota and idle connections, all on 127.0.0.1; then every stored file
# is checked against its source, leftover partials and the server's RSS/open files. See soak.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/barge ] || cargo build --release --locked
exec python3 scripts/soak.py "${1:-600}"
