#!/usr/bin/env bash
# Fuzzes the cluster protocol's decoders for SECONDS (default 60) with cargo-fuzz.
#
#   scripts/fuzz.sh [SECONDS]
#
# Installs what it needs when missing: the nightly toolchain (rustup) and cargo-fuzz.
# The target (protocol/fuzz) builds the protocol crate alone, without LLVM or QUIC.
# A crash stops the run and leaves its input under protocol/fuzz/artifacts/decode/;
# replay it with `cargo +nightly fuzz run decode ARTIFACT` from protocol/. Not run in CI
# by default (it needs nightly; the first build takes about 40 s on 2 cores); see
# docs/cluster.md.
set -euo pipefail

seconds="${1:-60}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "$0")/.." && pwd)"

if ! cargo +nightly --version > /dev/null 2>&1; then
    echo "installing the nightly toolchain (cargo-fuzz needs it)" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version > /dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cd "$root/protocol"
# -rss_limit_mb: the decoders must not allocate what a frame's length merely claims.
cargo +nightly fuzz run decode -- -max_total_time="$seconds" -rss_limit_mb=2048
