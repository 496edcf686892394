#!/usr/bin/env bash
# Runs guest tests in a qemu VM booting Debian's kernel (see README.md).
#   bash test/vm/run.sh [--keep] [--quiet] [--timeout s] [guest files...]
# Default: every test/vm/guest/*.guest.ts. Exit 0 only if all passed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$repo/.vm"
# The CLI is TypeScript; bundle it (esbuild stays external: it finds its own
# native binary at run time).
"$repo/node_modules/.bin/esbuild" "$repo/test/vm/cli.ts" --bundle --platform=node \
  --format=cjs --external:esbuild --log-level=warning --outfile="$repo/.vm/cli.js"
exec node "$repo/.vm/cli.js" "$@"
