#!/usr/bin/env bash
# Fuzzes every decoder and request parser of barge-proto for a bounded time each, on stable Rust
# (`-s none`: libFuzzer's coverage guidance without sanitizers, which need nightly). Starts from the
# committed seed corpus (fuzz/corpus/<target>/seed-*); fails on the first crash, whose input is
# left in fuzz/artifacts/<target>/.
#   usage: scripts/fuzz.sh [seconds per target, default 60] [target...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(legacy wire request line name)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
# libFuzzer itself is C++.
if ! command -v c++ >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq g++
fi

cargo fuzz build -s none -O
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${seconds}s"
    # A scratch copy of the corpus, so CI's findings do not dirty the checkout.
    work="$(mktemp -d)"
    cp corpus/"$t"/* "$work"/
    status=0
    cargo fuzz run -s none -O "$t" "$work" -- -max_total_time="$seconds" >"$work.log" 2>&1 || status=$?
    grep -E "^(Done|INFO: seed corpus)|panicked|ERROR|SUMMARY" "$work.log" || true
    rm -rf "$work" "$work.log"
    if [ "$status" -ne 0 ]; then
        echo "fuzz: $t failed (exit $status); the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
