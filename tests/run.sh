#!/usr/bin/env bash
# The test command: installs what the tests need (tests/setup.sh, quick when done once
# on this machine), builds cairn's binaries and runs every test. As root.
#
#   sudo ./tests/run.sh                 # everything
#   sudo ./tests/run.sh -p cairn-tests  # arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast "$@"
