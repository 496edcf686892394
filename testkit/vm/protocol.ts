/**
 * The records the VM sends back to the host, and how the host turns them
 * into one outcome per guest test.
 *
 * The guest (its init script and the guest runner) appends one JSON object
 * per line to `results.jsonl` in the run directory, which the VM sees through
 * a writable 9p share. A file rather than the serial console: kernel messages
 * and a test's own console output can interleave with console lines, and a
 * file written with cache=none reaches the host before the VM powers off.
 *
 * Pure code, no I/O: it is bundled into the guest and imported by the host.
 */

/** One test as the guest runner registered it. */
export interface PlannedTest {
  /** guest file, relative to the repository root */
  file: string;
  name: string;
}

export type GuestRecord =
  /** written by the init script right before it starts node */
  | { t: 'init'; uptime: number }
  /** the init script could not prepare the guest (a module, a mount) */
  | { t: 'init-error'; message: string }
  /** first thing the guest runner does: node is up */
  | { t: 'runner-start'; uptime: number; kernel: string; node: string }
  /** every test of every file, before any runs */
  | { t: 'plan'; tests: PlannedTest[] }
  | { t: 'result'; file: string; name: string; status: 'pass' | 'fail'; error?: string; ms: number }
  | { t: 'runner-end'; uptime: number }
  /** written by the init script once node has exited */
  | { t: 'exit'; code: number; uptime: number };

export function encodeRecord(record: GuestRecord): string {
  return JSON.stringify(record) + '\n';
}

/**
 * Parses results.jsonl. A line that is not a known record is kept as an
 * error rather than dropped: a torn or foreign line means the protocol broke,
 * and the host reports it instead of silently passing.
 */
export function parseRecords(text: string): { records: GuestRecord[]; garbage: string[] } {
  const records: GuestRecord[] = [];
  const garbage: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      garbage.push(line);
      continue;
    }
    if (isRecord(value)) records.push(value);
    else garbage.push(line);
  }
  return { records, garbage };
}

function isRecord(v: unknown): v is GuestRecord {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as Record<string, unknown>;
  switch (r.t) {
    case 'init':
    case 'runner-end':
      return typeof r.uptime === 'number';
    case 'init-error':
      return typeof r.message === 'string';
    case 'runner-start':
      return typeof r.uptime === 'number' && typeof r.kernel === 'string' && typeof r.node === 'string';
    case 'plan':
      return Array.isArray(r.tests) && r.tests.every((x) => isPlanned(x));
    case 'result':
      return (
        typeof r.file === 'string' &&
        typeof r.name === 'string' &&
        (r.status === 'pass' || r.status === 'fail') &&
        (r.error === undefined || typeof r.error === 'string') &&
        typeof r.ms === 'number'
      );
    case 'exit':
      return typeof r.code === 'number' && typeof r.uptime === 'number';
    default:
      return false;
  }
}

function isPlanned(v: unknown): v is PlannedTest {
  if (typeof v !== 'object' || v === null) return false;
  const p = v as Record<string, unknown>;
  return typeof p.file === 'string' && typeof p.name === 'string';
}

export interface Outcome {
  file: string;
  name: string;
  status: 'pass' | 'fail';
  error?: string;
  ms?: number;
}

/** Key under which a test's outcome is looked up. */
export function testKey(t: PlannedTest): string {
  return `${t.file}\u0000${t.name}`;
}

/**
 * One outcome for every expected test, in plan order, then any extra results
 * (an afterAll that failed, a file that failed to load).
 *
 * A test that was expected but never reported fails with `missingReason`:
 * the VM died, node crashed, or the run timed out. A test is never counted
 * as passed unless the guest said so.
 */
export function outcomes(
  expected: PlannedTest[],
  records: GuestRecord[],
  missingReason: string,
): Outcome[] {
  const results = new Map<string, Outcome>();
  const extras: Outcome[] = [];
  for (const r of records) {
    if (r.t !== 'result') continue;
    const o: Outcome = { file: r.file, name: r.name, status: r.status, error: r.error, ms: r.ms };
    const key = testKey(r);
    // A name reported twice is a failure of both: names must be unique per file.
    const prev = results.get(key);
    if (prev) {
      results.set(key, { ...o, status: 'fail', error: `reported twice (test names must be unique per file); ${o.error ?? prev.error ?? ''}`.trim() });
      continue;
    }
    results.set(key, o);
    if (!expected.some((e) => testKey(e) === key)) extras.push(o);
  }
  const planned = expected.map(
    (e): Outcome => results.get(testKey(e)) ?? { file: e.file, name: e.name, status: 'fail', error: missingReason },
  );
  return [...planned, ...extras.map((x) => results.get(testKey(x))!)];
}
