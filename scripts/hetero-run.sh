#!/usr/bin/env bash
# A real heterogeneous run on this machine: mandelbrot on the CPU JIT alone, on the
# OpenCL devices alone (PoCL here) and on both (`--device auto`, packets split by
# measured speed), REPS times each in turn; prints each run's time (the `ran ...: X ms`
# line: first packet to last result, compile excluded) and the median per device, and
# checks that every output equals the CPU's.
#
# Usage: scripts/hetero-run.sh [OFFLOAD_BINARY] [REPS]
#   OFFLOAD_BINARY defaults to target/release/offload; REPS to 5.
set -euo pipefail

bin=${1:-target/release/offload}
reps=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

width=1024
height=768
max_iter=2000
"$bin" package -o "$work/m.pkg" \
    --manifest "$root/examples/mandelbrot/manifest.toml" \
    "$root/examples/mandelbrot/kernel.rs" >/dev/null

run() { # device rep
    "$bin" run -v "$work/m.pkg" --kernel mandelbrot --items $((width * height)) \
        --arg width=$width --arg max_iter=$max_iter --arg x0=-2.0 --arg y0=-1.25 \
        --arg step=$(echo "2.5 / $width" | bc -l) \
        --out "iters=$work/$1.bin" --device "$1" 2>"$work/$1.log" |
        sed -n 's/.*: \([0-9.]*\) ms$/\1/p'
}

declare -A times
for rep in $(seq "$reps"); do
    for device in cpu opencl auto; do
        ms=$(run "$device")
        times[$device]+="$ms "
        packets=$(grep '^packets:' "$work/$device.log" || true)
        echo "rep $rep  $device  $ms ms  ${packets}"
        cmp -s "$work/cpu.bin" "$work/$device.bin" || { echo "output of $device differs from cpu" >&2; exit 1; }
    done
done
echo
for device in cpu opencl auto; do
    median=$(echo "${times[$device]}" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "median $device: $median ms"
done
