#!/usr/bin/env bash
# The GPU check, run from an unpacked bundle of `scripts/gpu-bundle.sh` on a machine with
# an NVIDIA GPU (no Rust, LLVM or OpenCL headers needed there):
#
#   tar xf offload-gpu-bundle.tar.xz && offload-gpu-check/gpu-check.sh [--budget SECONDS]
#
# It finds or registers NVIDIA's OpenCL ICD, runs `offload devices`, then every example
# job of cases.txt on the CPU JIT, on the OpenCL devices (`--device opencl`) through each
# route the devices have (OFFLOAD_GPU_ROUTE = opencl-c, ptx-opencl, ptx-cuda) and with
# `--device auto`, compares each output with the CPU JIT's made where the bundle was
# built (integers exactly, floats within the conformance tests' ULP bounds), and prints
# one table: result, wall time, items/s and the packets per device kind. Every command
# runs under `timeout` within a total budget (default 480 s); what did not fit is listed
# as not run. Exit status: 0 when every row that ran passed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
budget=480
while [ $# -gt 0 ]; do
    case "$1" in
        --budget) budget=$2; shift 2 ;;
        *) echo "usage: $0 [--budget SECONDS]" >&2; exit 2 ;;
    esac
done
started=$(date +%s)
left() { echo $((budget - ($(date +%s) - started))); }

export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The JIT links kernels with `ld`; the bundle carries one for machines without binutils.
command -v ld >/dev/null 2>&1 || export PATH="$here/bin:$PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OFFLOAD_CACHE_DIR="$work/cache"
bin="$here/bin/offload"

# NVIDIA's OpenCL: an ICD file naming libnvidia-opencl.so.1, or one of our own (the
# driver's folder may be a read-only mount without /etc/OpenCL/vendors/nvidia.icd).
icd_note="system ICD files"
if ! grep -qs nvidia /etc/OpenCL/vendors/*.icd; then
    nv=$( (ldconfig -p 2>/dev/null | awk '/libnvidia-opencl\.so\.1/ { print $NF; exit }') )
    for d in /usr/lib/x86_64-linux-gnu /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib64 /usr/lib; do
        [ -z "$nv" ] && [ -e "$d/libnvidia-opencl.so.1" ] && nv="$d/libnvidia-opencl.so.1"
    done
    if [ -n "$nv" ]; then
        mkdir -p "$work/icd"
        echo "$nv" > "$work/icd/nvidia.icd"
        for f in /etc/OpenCL/vendors/*.icd; do [ -e "$f" ] && cp "$f" "$work/icd/"; done
        export OCL_ICD_VENDORS="$work/icd"
        icd_note="registered $nv through OCL_ICD_VENDORS"
    else
        icd_note="no libnvidia-opencl.so.1 found: NVIDIA's OpenCL is not installed"
    fi
fi
if [ -z "${OFFLOAD_LIBDEVICE:-}" ]; then
    for f in /usr/local/cuda/nvvm/libdevice/libdevice.10.bc /usr/lib/nvidia-cuda-toolkit/libdevice/libdevice.10.bc; do
        [ -e "$f" ] && export OFFLOAD_LIBDEVICE="$f" && break
    done
fi

rows=()
failed=0
row() { rows+=("$1"); }

echo "== bundle"; head -3 "$here/MANIFEST"
echo "== OpenCL ICD: $icd_note"
echo "== libdevice: ${OFFLOAD_LIBDEVICE:-none (PTX routes refuse kernels with transcendental math)}"
echo "== offload devices"
t0=$(date +%s%N)
if timeout 60 "$bin" devices > "$work/devices.txt" 2>&1; then
    cat "$work/devices.txt"
    row "devices | - | PASS | $(( ($(date +%s%N) - t0) / 1000000 )) ms | | $(grep -c '^opencl[0-9]' "$work/devices.txt") OpenCL/CUDA devices"
else
    cat "$work/devices.txt"; failed=1
    row "devices | - | FAIL | | | offload devices failed"
fi
modes="cpu"
grep -q '^opencl[0-9]' "$work/devices.txt" && modes="cpu opencl auto"
# The routes some device has (`offload devices` lists them), each run with --device opencl.
route_names=""
grep -q '^  routes: opencl-c' "$work/devices.txt" && route_names+=" opencl-c"
grep -q '^  routes: .*ptx (opencl binary)' "$work/devices.txt" && route_names+=" ptx-opencl"
grep -q '^  routes: .*ptx (cuda)' "$work/devices.txt" && route_names+=" ptx-cuda"

expand() { # args name outdir -> argument list (IN/ inputs, OUT outputs, COPY: inout)
    local args=$1 name=$2 dir=$3
    args=${args//IN\//$here/in/}
    if [[ "$args" == *COPY:* ]]; then
        local src=${args#*COPY:}; src=${src%% *}
        cp "$src" "$dir/$name.inout.bin"
        args=${args//COPY:$src/$dir/$name.inout.bin}
    fi
    echo "${args//=OUT/=$dir/$name.bin}"
}
output_of() { # args name -> the file compared
    if [[ "$1" == *=OUT* ]]; then echo "$2.bin"; else echo "$2.inout.bin"; fi
}

run_case() { # name pkg kernel items elem ulp args mode route
    local name=$1 pkg=$2 kernel=$3 items=$4 elem=$5 ulp=$6 args=$7 mode=$8 route=$9
    local label="$mode${route:+ [$route]}"
    local t=$(( $(left) < 120 ? $(left) : 120 ))
    if [ "$t" -le 5 ]; then
        row "$name | $label | NOT RUN | | | over the time budget"
        return
    fi
    local dir="$work/$name-$mode-${route:-default}"
    mkdir -p "$dir"
    local log="$dir/log"
    # shellcheck disable=SC2046
    if OFFLOAD_GPU_ROUTE=$route timeout "$t" "$bin" -v run "$here/pkg/$pkg.okp" --kernel "$kernel" \
        --items "$items" $(expand "$args" "$name" "$dir") --device "$mode" </dev/null > "$log" 2>&1; then
        local ms packets out verdict
        ms=$(sed -n 's/^ran .*: \([0-9.]*\) ms$/\1/p' "$log" | tail -1)
        packets=$(sed -n 's/^packets: //p' "$log" | tail -1)
        out=$(output_of "$args" "$name")
        # The route each OpenCL device took (`-v` prints "device: opencl NAME [ROUTE]").
        local used
        used=$(sed -n 's/^device: opencl .*\[\(.*\)\]$/\1/p' "$log" | sort -u | paste -sd, -)
        if verdict=$("$bin" __compare --elem "$elem" --ulp "$ulp" "$here/ref/$out" "$dir/$out" 2>&1); then
            local rate="" result=PASS
            [ -n "$ms" ] && rate=$(awk -v n="$items" -v ms="$ms" 'BEGIN { if (ms > 0) printf "%.3e", n / (ms / 1000) }')
            # A route that refused the kernel hands over to the next: that row did not
            # test the route it names.
            case "$route" in
                ptx-cuda) [[ "$used" == *"ptx (cuda)"* ]] || result="FELL BACK" ;;
                ptx-opencl) [[ "$used" == *"ptx (opencl binary)"* ]] || result="FELL BACK" ;;
            esac
            [ "$result" = PASS ] || failed=1
            row "$name | $label | $result | ${ms:-?} ms | $rate | ${packets:-}${used:+ via $used} ($verdict)"
        else
            failed=1
            row "$name | $label | FAIL | ${ms:-?} ms | | ${verdict//$'\n'/ }"
        fi
    else
        failed=1
        row "$name | $label | FAIL | | | $(grep -m1 -i 'error' "$log" || tail -1 "$log")"
    fi
}

while IFS='|' read -r name pkg kernel items elem ulp args; do
    for mode in $modes; do
        if [ "$mode" = opencl ]; then
            for route in $route_names; do
                run_case "$name" "$pkg" "$kernel" "$items" "$elem" "$ulp" "$args" opencl "$route"
            done
        else
            run_case "$name" "$pkg" "$kernel" "$items" "$elem" "$ulp" "$args" "$mode" ""
        fi
    done
done < "$here/cases.txt"

echo
echo "== offload GPU check: $(($(date +%s) - started)) s of a ${budget} s budget"
echo "| job | device [route] | result | time | items/s | packets / comparison |"
echo "|---|---|---|---|---|---|"
for r in "${rows[@]}"; do echo "| $r |"; done
exit $failed
