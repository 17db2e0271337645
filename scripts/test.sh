#!/usr/bin/env bash
# Runs all of crik's tests (unit and integration, with real CRIU) on this machine.
# Installs what they need first (scripts/setup.sh). Must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Formatting is part of the build (rustfmt.toml).
cargo fmt --all --check
cargo build --locked --workspace --all-targets
# arm64: crik cross-built, static (the arm64 bundle's test packs it), and its unit tests run
# under qemu-user (docs/arm64.md says what that does and does not verify).
cargo build --locked --release --target aarch64-unknown-linux-gnu
cargo test --locked --release --workspace --lib --target aarch64-unknown-linux-gnu
# Container images for the podman tests (debootstrap + CRIU; rebuilt only when their recipe changes).
python3 scripts/images/test_images.py
if cargo nextest --version >/dev/null 2>&1; then
    # Per-test timeouts and serial execution come from .config/nextest.toml.
    cargo nextest run --locked --workspace --no-fail-fast "$@"
else
    cargo test --locked --workspace --no-fail-fast -- --test-threads 1 "$@"
fi
# What ships: Dockerfiles (lint, and their build steps run outside Docker), Kubernetes examples.
python3 scripts/images/check_shipping.py
