import { describe, expect, it } from 'vitest';
import { formatLine, formatReport, formatTable } from '../../conformance/report';
import type { SuiteReport } from '../../conformance/runner';

const report: SuiteReport = {
  configs: ['ref-bridge', 'none'],
  rules: ['del.twice', 'gc.frees-unlisted'],
  results: [
    { config: 'ref-bridge', rule: 'del.twice', status: 'PASS', reason: 'both DELs succeeded' },
    { config: 'ref-bridge', rule: 'gc.frees-unlisted', status: 'N/A', reason: 'bridge does not advertise CNI 1.1.0' },
    { config: 'none', rule: 'del.twice', status: 'DEVIATION', reason: 'known' },
    { config: 'none', rule: 'gc.frees-unlisted', status: 'FAIL', reason: 'GC failed' },
  ],
  failed: true,
  calls: {},
};

describe('the report', () => {
  it('prints one line per rule per network with its status and reason', () => {
    expect(formatLine(report.results[1])).toBe('[ref-bridge] N/A  gc.frees-unlisted — bridge does not advertise CNI 1.1.0');
  });

  it('prints a table with rules down and networks across', () => {
    expect(formatTable(report).split('\n')).toEqual([
      'rule               ref-bridge  none',
      '-----------------  ----------  ----',
      'del.twice          PASS        DEV',
      'gc.frees-unlisted  N/A         FAIL',
    ]);
  });

  it('ends with counts and the verdict', () => {
    expect(formatReport(report)).toContain('4 results: 1 passed, 1 failed, 1 known deviations, 1 not applicable — FAILED');
  });
});
