#!/usr/bin/env bash
# Transfer benchmark against the usual tools, in one run: installs its peers if missing (Debian's
# netcat-openbsd, rsync, iperf3), then runs scripts/bench_transfer.py (alternating runs, medians,
# ratios). Arguments are passed through, e.g. scripts/bench.sh --size 4G --rounds 3.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v nc >/dev/null || missing+=(netcat-openbsd)
command -v rsync >/dev/null || missing+=(rsync)
command -v iperf3 >/dev/null || missing+=(iperf3)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
exec timeout 900 python3 scripts/bench_transfer.py "$@"
