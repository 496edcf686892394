import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatDuration, MAX_TIMER_MS, parseDuration, parseFlags, UsageError, type FlagSpecs } from '../../shared/flags';

const SPECS = {
  socket: { type: 'string' },
  name: { type: 'string', default: 'n0' },
  verbose: { type: 'boolean', short: 'v' },
  workers: { type: 'integer', default: 4, min: 1, max: 64 },
  timeout: { type: 'duration', default: 2000 },
  'resync-ms': { type: 'duration', bare: 'ms', default: 5000, min: 100 },
  ttl: { type: 'duration', default: 10_000, min: 2000, wholeSeconds: true },
} as const satisfies FlagSpecs;

function usage(args: string[], positionals = false): string {
  try {
    parseFlags(args, SPECS, { positionals });
  } catch (e) {
    expect(e).toBeInstanceOf(UsageError);
    return (e as Error).message;
  }
  throw new Error(`no UsageError for ${JSON.stringify(args)}`);
}

describe('parseDuration', () => {
  it('reads ms, s, m and h, and decimals, to whole milliseconds', () => {
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('2s')).toBe(2000);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('12h')).toBe(12 * 3_600_000);
    expect(parseDuration('0')).toBe(0);
  });

  it('reads a bare number as seconds, or in the unit a flag name states', () => {
    expect(parseDuration('300')).toBe(300_000);
    expect(parseDuration('0.25')).toBe(250);
    expect(parseDuration('1000', 'ms')).toBe(1000);
    expect(parseDuration('2s', 'ms')).toBe(2000);
  });

  it('refuses anything else with a message naming the syntax', () => {
    for (const bad of ['', 'soon', '-1s', '1 s', ' 1s', '1s ', '1e3', '0x10', '1.s', '.5s', '2d', '1sm', 'NaN', 'Infinity', '1_000']) {
      expect(() => parseDuration(bad), bad).toThrow(UsageError);
      expect(() => parseDuration(bad), bad).toThrow(/not a duration \(e\.g\. 500ms, 2s/);
    }
    expect(() => parseDuration('9'.repeat(30) + 'h')).toThrow(/too long/);
  });

  it('formats every whole-millisecond duration so that it parses back to itself', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 45 }), (ms) => {
        expect(parseDuration(formatDuration(ms))).toBe(ms);
        expect(parseDuration(formatDuration(ms), 'ms')).toBe(ms);
      }),
    );
    expect(formatDuration(300_000)).toBe('5m');
    expect(formatDuration(1500)).toBe('1500ms');
    expect(formatDuration(0)).toBe('0ms');
  });

  it('scales each unit exactly: n<unit> is n times the unit', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 10_000_000 }), fc.constantFrom(['ms', 1], ['s', 1000], ['m', 60_000], ['h', 3_600_000]), (n, [unit, ms]) => {
        expect(parseDuration(`${n}${unit}`)).toBe(n * (ms as number));
      }),
    );
  });
});

describe('parseFlags', () => {
  it('gives defaults when flags are absent, false for an absent switch, undefined for a string without default', () => {
    const { values, positionals } = parseFlags([], SPECS);
    expect(values).toEqual({ socket: undefined, name: 'n0', verbose: false, workers: 4, timeout: 2000, 'resync-ms': 5000, ttl: 10_000 });
    expect(positionals).toEqual([]);
  });

  it('reads --flag VALUE, --flag=VALUE, switches and short aliases', () => {
    const { values } = parseFlags(['--socket', '/s', '--name=x', '-v', '--workers', '8', '--timeout=1.5', '--resync-ms', '250', '--ttl', '3s'], SPECS);
    expect(values).toEqual({ socket: '/s', name: 'x', verbose: true, workers: 8, timeout: 1500, 'resync-ms': 250, ttl: 3000 });
  });

  it('takes positionals only where the command allows them', () => {
    expect(parseFlags(['leave', '--name', 'x'], SPECS, { positionals: true }).positionals).toEqual(['leave']);
    expect(usage(['leave'])).toBe('unexpected argument "leave"');
  });

  it('says what is wrong in one line: unknown flag, missing value, value on a switch, bad numbers and bounds', () => {
    expect(usage(['--bogus'])).toBe('unknown flag --bogus');
    expect(usage(['-x'])).toBe('unknown flag -x');
    expect(usage(['--socket'])).toBe('--socket needs a value');
    expect(usage(['--socket', '--verbose'])).toMatch(/^--socket needs a value/);
    expect(usage(['--socket='])).toBe('--socket needs a value');
    expect(usage(['--verbose=yes'])).toBe('--verbose takes no value');
    expect(usage(['--workers', '0'])).toBe('--workers: expected an integer from 1 to 64, got "0"');
    expect(usage(['--workers', '2.5'])).toMatch(/^--workers: expected an integer/);
    expect(usage(['--timeout', 'soon'])).toMatch(/^--timeout: "soon" is not a duration/);
    expect(usage(['--resync-ms', '50'])).toBe('--resync-ms must be at least 100ms, got "50"');
    expect(usage(['--ttl', '1500ms'])).toBe('--ttl must be at least 2s, got "1500ms"');
    expect(usage(['--ttl', '2500ms'])).toBe('--ttl must be whole seconds, got "2500ms"');
    expect(usage(['--timeout', '25d'])).toMatch(/not a duration/);
    expect(usage(['--timeout', `${MAX_TIMER_MS + 1}ms`])).toMatch(/^--timeout must be at most/);
    for (const m of [usage(['--bogus']), usage(['--timeout', 'x'])]) expect(m).not.toContain('\n');
  });

  it('on any argument list, either parses or throws UsageError, never anything else', () => {
    const token = fc.oneof(
      fc.constantFrom('--socket', '--name', '--verbose', '-v', '--workers', '--timeout', '--resync-ms', '--ttl', '--', '-', '--bogus', '--verbose=1', '--ttl=', '-vv'),
      fc.string({ maxLength: 8 }),
    );
    fc.assert(
      fc.property(fc.array(token, { maxLength: 8 }), fc.boolean(), (args, positionals) => {
        try {
          const { values } = parseFlags(args, SPECS, { positionals });
          expect(values.workers).toBeGreaterThanOrEqual(1);
          expect(values.timeout).toBeLessThanOrEqual(MAX_TIMER_MS);
          expect(values.ttl % 1000).toBe(0);
        } catch (e) {
          expect(e).toBeInstanceOf(UsageError);
        }
      }),
      { numRuns: 2000 },
    );
  });
});
