#!/usr/bin/env bash
# Makes the GPU check bundle: everything `scripts/gpu-check.sh` needs on a machine with an
# NVIDIA GPU and no Rust or LLVM installed.
#
#   scripts/gpu-bundle.sh [--binary PATH] [--out FILE] [--compress xz|zstd|none] [--quick]
#
#   --binary    the offload binary to bundle (default: builds target/release/offload)
#   --out       the bundle (default: target/gpu-bundle.tar.xz, .tar.zst or .tar)
#   --compress  xz -9 (default: the smallest), zstd -19, or none (fast, for tests)
#   --quick     small jobs (for the test that runs the check against PoCL here)
#
# Contents: bin/offload (stripped), lib/ (the binary's `ldd` closure minus the C library,
# and libLLVM, which offload dlopens, with its closure: libOpenCL, libstdc++, ...), bin/ld and its libraries (the JIT
# links kernels with `ld`; used only where the target has none), pkg/*.okp packaged here
# by the bundled binary itself (the package format is versioned: packages are never
# carried from another build), in/ the inputs, ref/ the outputs of the CPU JIT here,
# cases.txt (one example job per line), gpu-check.sh, MANIFEST (sizes, versions).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
binary=""
out=""
compress=xz
quick=0
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --compress) compress=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        *) echo "usage: $0 [--binary PATH] [--out FILE] [--compress xz|zstd|none] [--quick]" >&2; exit 2 ;;
    esac
done
case "$compress" in
    xz) ext=.tar.xz ;;
    zstd) ext=.tar.zst ;;
    none) ext=.tar ;;
    *) echo "--compress takes xz, zstd or none" >&2; exit 2 ;;
esac
if [ -z "$binary" ]; then
    (cd "$root" && cargo build --release --locked --bin offload)
    binary=$root/target/release/offload
fi
[ -x "$binary" ] || { echo "no executable offload binary at $binary" >&2; exit 1; }
out=${out:-$root/target/gpu-bundle$ext}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
b=$stage/offload-gpu-check
mkdir -p "$b/bin" "$b/lib" "$b/pkg" "$b/in" "$b/ref"

# The C library stays the target's own: a newer glibc runs binaries built for an older one.
is_libc() {
    case "$(basename "$1")" in
        libc.so.* | ld-linux*.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | \
        libutil.so.* | libresolv.so.* | libnsl.so.* | libanl.so.* | libmvec.so.*) return 0 ;;
        *) return 1 ;;
    esac
}
closure() { # binary -> libraries to bundle, one path a line
    ldd "$1" | awk '/=> \// { print $3 } /^\s*\// { print $1 }' | while read -r lib; do
        is_libc "$lib" || echo "$lib"
    done
}

cp "$binary" "$b/bin/offload"
strip "$b/bin/offload"
for lib in $(closure "$binary"); do cp -L "$lib" "$b/lib/"; done
# libLLVM is loaded when first needed (dlopen), so ldd does not list it: bundle it by its
# soname (the name offload asks for first) with its own closure.
llvm_config=${LLVM_SYS_221_PREFIX:-/usr/lib/llvm-22}/bin/llvm-config
llvm_lib=$(readlink -f "$("$llvm_config" --libdir)/$("$llvm_config" --libnames --link-shared)")
cp -L "$llvm_lib" "$b/lib/"
for lib in $(closure "$llvm_lib"); do cp -Ln "$lib" "$b/lib/" 2>/dev/null || true; done
ld_bin=$(command -v ld.bfd || command -v ld || true)
if [ -n "$ld_bin" ]; then
    cp -L "$ld_bin" "$b/bin/ld"
    for lib in $(closure "$ld_bin"); do cp -Ln "$lib" "$b/lib/" 2>/dev/null || true; done
fi
cp "$root/scripts/gpu-check.sh" "$b/"

offload() { LD_LIBRARY_PATH=$b/lib "$b/bin/offload" --cache-dir "$stage/cache" "$@"; }
for ex in saxpy mandelbrot nbody dot raytrace; do
    offload package -o "$b/pkg/$ex.okp" --manifest "$root/examples/$ex/manifest.toml" \
        "$root/examples/$ex/kernel.rs" >/dev/null
done

# Job sizes: the GPU figures of issue 16 (Mandelbrot 3840x2160, n-body), or small ones.
if [ "$quick" = 1 ]; then
    saxpy_n=65536; mw=256; mh=144; miter=200; nbody_n=512; dot_n=65536; rw=64; rh=40
else
    saxpy_n=16777216; mw=3840; mh=2160; miter=1000; nbody_n=16384; dot_n=16777216; rw=1280; rh=720
fi
python3 - "$b/in" "$saxpy_n" "$nbody_n" "$dot_n" <<'PY'
import struct, sys, random
d, saxpy_n, nbody_n, dot_n = sys.argv[1], *map(int, sys.argv[2:])
rng = random.Random(16)
# Random values over a period of 4099 elements, repeated: full-size inputs (and the
# outputs computed from them) then compress to almost nothing under xz's 64 MiB window,
# while every element of a period still differs from its neighbours.
PERIOD = 4099
def periodic(n, draw):
    base = [draw() for _ in range(min(n, PERIOD))]
    return [base[i % len(base)] for i in range(n)]
def floats(path, fmt, values):
    with open(path, "wb") as f:
        f.write(struct.pack("<%d%s" % (len(values), fmt), *values))
floats(f"{d}/saxpy_x.bin", "f", periodic(saxpy_n, lambda: rng.uniform(-10, 10)))
floats(f"{d}/saxpy_y.bin", "f", periodic(saxpy_n, lambda: rng.uniform(-10, 10)))
bodies = []
for _ in range(nbody_n):
    bodies += [rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.5, 1.5)]
floats(f"{d}/nbody_pos.bin", "f", bodies)
floats(f"{d}/nbody_vel.bin", "f", [0.0] * (3 * nbody_n))
floats(f"{d}/dot_x.bin", "d", periodic(dot_n, lambda: rng.uniform(-1, 1)))
floats(f"{d}/dot_y.bin", "d", periodic(dot_n, lambda: rng.uniform(-1, 1)))
# raytrace: a header (light x y z, ambient), then 4 spheres of 8 floats (centre,
# radius, colour, specular) in front of the camera (which looks down -z).
scene = [2.0, 3.0, 0.0, 0.1]
for s in range(4):
    scene += [s - 1.5, 0.0, -4.0 - s, 0.6, 0.2 * s, 0.5, 1.0 - 0.2 * s, 0.5]
floats(f"{d}/raytrace_scene.bin", "f", scene)
PY

# cases.txt: NAME|PACKAGE|KERNEL|ITEMS|ELEM|ULP|ARGS (the ULP bounds of the conformance
# tests: nbody 4 (fused multiply-adds over the body sum), dot 4096 (partial sums added
# in another order); the rest exact). Outputs are written to OUTDIR/NAME.bin.
mstep=$(python3 -c "print(3.0 / $mw)")
{
    echo "saxpy|saxpy|saxpy|$saxpy_n|f32|0|--arg a=2.5 --in x=IN/saxpy_x.bin --inout y=COPY:IN/saxpy_y.bin"
    echo "mandelbrot-f64|mandelbrot|mandelbrot|$((mw * mh))|u32|0|--arg width=$mw --arg max_iter=$miter --arg x0=-2.2 --arg y0=-1.2 --arg step=$mstep --out iters=OUT"
    echo "nbody|nbody|nbody|$nbody_n|f32|4|--arg n=$nbody_n --arg dt=0.01 --arg softening=0.1 --in pos=IN/nbody_pos.bin --inout vel=COPY:IN/nbody_vel.bin --out new_pos=OUT"
    echo "dot|dot|dot|$dot_n|f64|4096|--in x=IN/dot_x.bin --in y=IN/dot_y.bin --sum acc=OUT"
    echo "raytrace|raytrace|raytrace|$((rw * rh))|u32|0|--arg width=$rw --arg height=$rh --arg nspheres=4 --in spheres=IN/raytrace_scene.bin --out rgb=OUT"
} > "$b/cases.txt"

# The CPU JIT's outputs here are the references.
expand() { # args name outdir -> argument list
    local args=$1 name=$2 dir=$3
    args=${args//IN\//$b/in/}
    if [[ "$args" == *COPY:* ]]; then
        local src=${args#*COPY:}; src=${src%% *}
        cp "$src" "$dir/$name.inout.bin"
        args=${args//COPY:$src/$dir/$name.inout.bin}
    fi
    echo "${args//=OUT/=$dir/$name.bin}"
}
while IFS='|' read -r name pkg kernel items elem ulp args; do
    # shellcheck disable=SC2046
    offload run "$b/pkg/$pkg.okp" --kernel "$kernel" --items "$items" $(expand "$args" "$name" "$b/ref") \
        --device cpu </dev/null >/dev/null
done < "$b/cases.txt"

{
    echo "offload GPU check bundle, made $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "binary: $("$b/bin/offload" --version 2>/dev/null || LD_LIBRARY_PATH=$b/lib "$b/bin/offload" --version)"
    echo "jobs: $([ "$quick" = 1 ] && echo quick || echo full)"
    echo "files (bytes):"
    (cd "$b" && find . -type f -printf '%s %p\n' | sort -k2)
} > "$b/MANIFEST"

mkdir -p "$(dirname "$out")"
case "$compress" in
    xz) tar -C "$stage" -cf - offload-gpu-check | xz -9 -T0 > "$out" ;;
    zstd) tar -C "$stage" -cf - offload-gpu-check | zstd -19 -T0 -q > "$out" ;;
    none) tar -C "$stage" -cf "$out" offload-gpu-check ;;
esac
echo "bundle: $out ($(du -h "$out" | cut -f1), unpacked $(du -sh "$b" | cut -f1))"
