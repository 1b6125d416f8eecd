#!/usr/bin/env bash
# Quick start, part 1: set up this machine and run the main job (`offload demo`) on the
# embedded local node. Extra arguments go to `offload demo` (e.g. -o out.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo run --release --quiet --bin offload -- demo "$@"
