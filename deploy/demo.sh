#!/usr/bin/env bash
# THE demo command: builds (release) and runs `xueliang demo`, passing any arguments on.
#
#   bash deploy/demo.sh [DEMO ARGS...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash deploy/install-deps.sh build
exec cargo run --release --locked -p xueliang -- demo "$@"
