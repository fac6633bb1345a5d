#!/bin/sh
# Builds the {{id}} skill for wasm32-wasip2 and packages it into ./package.
# Needs: rustup and cargo (the wasm32-wasip2 target is added when missing), and agentd
# ($AGENTD, else `agentd` on PATH).
set -eu
cd "$(dirname "$0")"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2
"${AGENTD:-agentd}" skill pack . --component "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm"
