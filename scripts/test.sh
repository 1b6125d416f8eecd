#!/usr/bin/env bash
# Quick start, part 2: set up this machine and run the whole test suite (unit, property,
# integration, cross-architecture under qemu, doc tests) of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --locked "$@"
