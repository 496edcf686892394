#!/usr/bin/env bash
# README's first command: install, build, and run the demo (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
unset NODE_EXTRA_CA_CERTS
bash scripts/deps.sh
bash build.sh
node dist/demo.js
