#!/usr/bin/env bash
# Builds what an operator installs: `cargo install` of the offload command into
# target/install (the README's install step, checked), and from the same release build
# a Debian package with cargo-deb into target/debian/ (the binary, the offload-node
# systemd unit with its own user, /etc/offload/node.toml). The integration test
# `install::` inspects both. Needs cargo-deb (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo install --path . --locked (release, into target/install)" >&2
# --target-dir: the same release build serves cargo-deb below.
cargo install --path . --locked --force --root target/install --target-dir target --quiet
echo "== cargo deb (target/debian/)" >&2
rm -rf target/debian
cargo deb --no-build --output target/debian/
ls target/debian/*.deb
