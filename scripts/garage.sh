#!/usr/bin/env bash
# A real 3-node garage cluster (replication factor 3) on loopback, for barge's S3 store tests.
#
#   scripts/garage.sh up [DIR]    install garage if missing, start 3 nodes, make a bucket and a
#                                 key; writes DIR/env (shell) and prints it. DIR defaults to
#                                 $BARGE_GARAGE_DIR, else /tmp/barge-garage.
#   scripts/garage.sh down [DIR]  stop exactly the processes `up` started (their PIDs are in DIR)
#   scripts/garage.sh kill N [DIR]  kill -9 node N (1-3), for failure tests
#   scripts/garage.sh start N [DIR] start node N again (after kill)
#
# Ports: node N serves S3 on 127.0.0.1:BASE+10N and RPC on BASE+10N+1 (N = 1, 2, 3), BASE being
# $BARGE_GARAGE_PORT_BASE or 3900: 3910/3911, 3920/3921, 3930/3931.
set -euo pipefail
base=${BARGE_GARAGE_PORT_BASE:-3900}

cmd=${1:-}
case "$cmd" in
  kill|start) node=${2:?node number}; dir=${3:-${BARGE_GARAGE_DIR:-/tmp/barge-garage}} ;;
  *) dir=${2:-${BARGE_GARAGE_DIR:-/tmp/barge-garage}} ;;
esac

garage_bin() {
  if command -v garage >/dev/null 2>&1; then command -v garage; return; fi
  if [ -x "$HOME/.cargo/bin/garage" ]; then echo "$HOME/.cargo/bin/garage"; return; fi
  echo "garage not found: installing it (cargo install garage --locked, ~10-15 minutes)" >&2
  cargo install garage --locked >&2
  echo "$HOME/.cargo/bin/garage"
}

stop_all() {
  for n in 1 2 3; do
    pidfile="$dir/$n/pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

case "$cmd" in
  up)
    bin=$(garage_bin)
    stop_all
    rm -rf "$dir"
    mkdir -p "$dir"
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    for n in 1 2 3; do
      mkdir -p "$dir/$n/meta" "$dir/$n/data"
      cat > "$dir/$n/garage.toml" <<TOML
metadata_dir = "$dir/$n/meta"
data_dir = "$dir/$n/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$((base + 10 * n + 1))"
rpc_public_addr = "127.0.0.1:$((base + 10 * n + 1))"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$((base + 10 * n))"
root_domain = ".s3.garage.localhost"
TOML
      "$bin" -c "$dir/$n/garage.toml" server > "$dir/$n/log" 2>&1 &
      echo $! > "$dir/$n/pid"
    done
    g() { "$bin" -c "$dir/1/garage.toml" "$@"; }
    # A node that cannot start (a port in use) is said, with its log, and nothing is left running.
    sleep 0.5
    for n in 1 2 3; do
      if ! kill -0 "$(cat "$dir/$n/pid")" 2>/dev/null; then
        echo "garage node $n did not start (ports $((base + 10 * n)), $((base + 10 * n + 1)) in use?):" >&2
        grep -i -m 3 "error" "$dir/$n/log" >&2 || tail -5 "$dir/$n/log" >&2
        stop_all
        exit 1
      fi
    done
    # Wait for node 1's RPC to answer (bounded).
    for _ in $(seq 100); do g status >/dev/null 2>&1 && break; sleep 0.1; done
    g status >/dev/null
    for n in 2 3; do
      id=""
      for _ in $(seq 100); do
        id=$("$bin" -c "$dir/$n/garage.toml" node id -q 2>/dev/null) && break
        sleep 0.1
      done
      [ -n "$id" ] || { echo "node $n did not start" >&2; exit 1; }
      g node connect "$id" >/dev/null
    done
    # Every node known to node 1, then each gets a role in one zone.
    for _ in $(seq 100); do
      [ "$(g status 2>/dev/null | grep -c "127.0.0.1:$((base / 100))")" -ge 3 ] && break
      sleep 0.1
    done
    for id in $(g status 2>/dev/null | grep "127.0.0.1:$((base / 100))" | awk '{print $1}'); do
      g layout assign -z dc1 -c 1G "$id" >/dev/null
    done
    g layout apply --version 1 >/dev/null
    g bucket create barge >/dev/null
    keyinfo=$(g key create barge-key)
    key_id=$(echo "$keyinfo" | awk '/Key ID/ {print $NF}')
    key_secret=$(echo "$keyinfo" | awk '/Secret key/ {print $NF}')
    g bucket allow --read --write --owner barge --key barge-key >/dev/null
    cat > "$dir/env" <<ENV
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$key_secret
export AWS_DEFAULT_REGION=garage
export AWS_REGION=garage
export BARGE_GARAGE_BUCKET=barge
export BARGE_GARAGE_ENDPOINTS=http://127.0.0.1:$((base + 10)),http://127.0.0.1:$((base + 20)),http://127.0.0.1:$((base + 30))
export BARGE_GARAGE_DIR=$dir
ENV
    cat "$dir/env"
    ;;
  down)
    stop_all
    ;;
  kill)
    pid=$(cat "$dir/$node/pid")
    kill -9 "$pid"
    rm -f "$dir/$node/pid"
    ;;
  start)
    bin=$(garage_bin)
    "$bin" -c "$dir/$node/garage.toml" server >> "$dir/$node/log" 2>&1 &
    echo $! > "$dir/$node/pid"
    for _ in $(seq 100); do
      "$bin" -c "$dir/$node/garage.toml" status >/dev/null 2>&1 && break
      sleep 0.1
    done
    ;;
  *)
    sed -n '2,10p' "$0"
    exit 2
    ;;
esac
