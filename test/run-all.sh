#!/usr/bin/env bash
# The one command that runs every test: installs what it needs, builds the
# executable, lints (eslint), then runs unit, kernel, conformance, runtime (podman) and VM
# tests with vitest, and ends with one "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."
unset NODE_EXTRA_CA_CERTS

bash scripts/deps.sh
bash build.sh

# the linter first (seconds); its verdict joins the tests' at the end
lint=0
npx --no-install eslint . || lint=$?

report=$(mktemp /tmp/cni-ts-vitest.XXXXXX.json)
status=0
npx --no-install vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@" || status=$?

node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed` + (skipped ? `, ${skipped} skipped` : ""));
' "$report" || echo "0 passed, 1 failed"
rm -f "$report"
# vitest also fails a run whose tests all passed when something broke outside them
[ "$status" -eq 0 ] || echo "vitest exited with status $status: see its report above (failed tests, or errors outside the tests)"
[ "$lint" -eq 0 ] || { echo "eslint found problems (above)"; [ "$status" -ne 0 ] || status=$lint; }
exit $status
