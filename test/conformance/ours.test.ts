/**
 * The suite against this project's own plugins: every config in
 * conformance/configs/ours (one file per plugin, added by the plugin's
 * author) runs against bin/ as ./build.sh leaves it. A rule may be N/A or a
 * deviation listed, with its reason, in conformance/expectations/project-plugins.json;
 * anything else that fails, fails here.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { expandConfigPaths } from '../../conformance/config';
import { formatLine } from '../../conformance/report';
import { runSuite } from '../../conformance/runner';

const BIN = path.resolve(__dirname, '../../bin');
const CONFIGS = expandConfigPaths([path.resolve(__dirname, '../../conformance/configs/ours')]);

// Each test blocks on synchronous plugin runs for seconds; back to back,
// with only promise ticks between them, they would starve the worker's
// event loop and vitest's RPC to its parent times out (60 s). One turn of
// the loop per test keeps it answering.
beforeEach(() => new Promise<void>((resolve) => setImmediate(resolve)));

describe('the suite against our plugins in bin/', () => {
  for (const file of CONFIGS) {
    it(`${path.basename(file, '.json')} breaks no rule beyond its documented deviations`, () => {
      expect(fs.existsSync(path.join(BIN, 'cni-ts')), 'bin/ is empty: run ./build.sh first').toBe(true);
      const report = runSuite({ pluginDirs: [BIN], configs: [{ file }] });
      const failures = report.results.filter((r) => r.status === 'FAIL').map(formatLine);
      expect(failures).toEqual([]);
      // the suite really exercised the plugin: most rules passed
      expect(report.results.filter((r) => r.status === 'PASS').length).toBeGreaterThan(report.rules.length / 2);
    });
  }
});
