#!/usr/bin/env bash
# Every test: installs the peers the tests run (tus-js-client, tuspy, curl, boto3, localsend-cli,
# iproute2 for the network namespaces of the LAN tests), starts what
# they need (a 3-node garage cluster for the S3 store, installed on first use), runs `cargo test
# --workspace`, and stops the cluster by its PIDs, pass or fail.
#   scripts/test.sh [cargo test args...]     e.g. scripts/test.sh -- cluster
# BARGE_NO_CLUSTER=1 runs without garage (the cluster tests then say they were skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

# The HTTP face's real clients: tus-js-client (Node, from the lockfile), tuspy, curl, and
# Debian's Chromium (driven by playwright-core) and Firefox ESR (driven by puppeteer-core over
# WebDriver BiDi), both from the lockfile, for the browser page.
need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v node >/dev/null && command -v npm >/dev/null || need_apt+=(nodejs npm)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v firefox-esr >/dev/null || need_apt+=(firefox-esr)
command -v ip >/dev/null || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
(cd barge/tests/http && npm ci --no-audit --no-fund --silent)
# pip may be missing (Debian's python3), or refuse system-wide installs (PEP 668).
pip_install() {
  python3 -m pip --version >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-pip; }
  python3 -m pip install --quiet "$@" 2>/dev/null || python3 -m pip install --quiet --break-system-packages "$@"
}
python3 -c "import tusclient" 2>/dev/null || pip_install tuspy
# A LocalSend client barge did not write; its package does not declare what it imports.
command -v localsend-cli >/dev/null && python3 -c "import cryptography, requests" 2>/dev/null ||
  pip_install localsend-cli cryptography requests

if [ -z "${BARGE_NO_CLUSTER:-}" ]; then
  # boto3 plays the S3 client that is not barge.
  python3 -c "import boto3" 2>/dev/null || pip_install boto3
  export BARGE_GARAGE_DIR=${BARGE_GARAGE_DIR:-$(mktemp -d /tmp/barge-garage.XXXXXX)}
  trap 'scripts/garage.sh down "$BARGE_GARAGE_DIR"' EXIT
  echo "== garage: 3 nodes, replication factor 3, in $BARGE_GARAGE_DIR"
  scripts/garage.sh up "$BARGE_GARAGE_DIR" > /dev/null
  # shellcheck disable=SC1091
  source "$BARGE_GARAGE_DIR/env"
  export BARGE_TEST_S3="${BARGE_GARAGE_ENDPOINTS%%,*}/$BARGE_GARAGE_BUCKET"
fi
echo "== cargo test --workspace"
cargo test --workspace --locked "$@"
