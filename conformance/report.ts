/**
 * The human report: one line per rule per network as results arrive, then a
 * table (rules down, networks across) to see at a glance who meets what.
 */
import type { RuleResult, Status, SuiteReport } from './runner';

const MARK: Record<Status, string> = { PASS: 'PASS', FAIL: 'FAIL', 'N/A': 'N/A', DEVIATION: 'DEV' };

export function formatLine(r: RuleResult): string {
  return `[${r.config}] ${MARK[r.status].padEnd(4)} ${r.rule} — ${r.reason}`;
}

export function formatTable(report: SuiteReport): string {
  const cell = new Map(report.results.map((r) => [`${r.rule}\0${r.config}`, MARK[r.status]]));
  const ruleWidth = Math.max(4, ...report.rules.map((r) => r.length));
  const widths = report.configs.map((c) => Math.max(c.length, 4));
  const row = (first: string, cells: string[]): string =>
    `${first.padEnd(ruleWidth)}  ${cells.map((c, i) => c.padEnd(widths[i])).join('  ')}`.trimEnd();
  const lines = [row('rule', report.configs), row('-'.repeat(ruleWidth), widths.map((w) => '-'.repeat(w)))];
  for (const rule of report.rules) {
    lines.push(row(rule, report.configs.map((c) => cell.get(`${rule}\0${c}`) ?? '-')));
  }
  return lines.join('\n');
}

export function formatSummary(report: SuiteReport): string {
  const count = (s: Status): number => report.results.filter((r) => r.status === s).length;
  return (
    `${report.results.length} results: ${count('PASS')} passed, ${count('FAIL')} failed, ` +
    `${count('DEVIATION')} known deviations, ${count('N/A')} not applicable` +
    (report.failed ? ' — FAILED' : ' — OK')
  );
}

/** The whole report as text: lines, table, summary. */
export function formatReport(report: SuiteReport): string {
  return [
    ...report.results.map(formatLine),
    '',
    formatTable(report),
    '',
    'PASS: meets the rule  FAIL: breaks it  DEV: breaks it, listed as a known deviation  N/A: does not apply (see its line)',
    formatSummary(report),
    '',
  ].join('\n');
}
