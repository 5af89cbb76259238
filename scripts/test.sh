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
  # A cluster whose layout was just applied can answer 404 for a key written a moment before
  # (seen once in CI, in the first test): wait until an object written through node 1 reads back
  # through every node (bounded), so the tests start on a settled cluster.
  python3 - <<'PY'
import os, sys, time, boto3
from botocore.config import Config
eps = os.environ["BARGE_GARAGE_ENDPOINTS"].split(",")
bucket = os.environ["BARGE_GARAGE_BUCKET"]
c = [boto3.client("s3", endpoint_url=e, config=Config(s3={"addressing_style": "path"})) for e in eps]
c[0].put_object(Bucket=bucket, Key="barge-ready", Body=b"ready")
deadline = time.monotonic() + 60
for client in c:
    while True:
        try:
            if client.get_object(Bucket=bucket, Key="barge-ready")["Body"].read() == b"ready":
                break
        except Exception as e:
            if time.monotonic() > deadline:
                sys.exit("garage did not settle: %s" % e)
        time.sleep(0.2)
c[0].delete_object(Bucket=bucket, Key="barge-ready")
PY
fi
echo "== cargo test --workspace"
cargo test --workspace --locked "$@"
