import { describe, expect, test } from 'vitest';
import { encodeRecord, outcomes, parseRecords, type GuestRecord } from '../../testkit/vm/protocol';

const a = { file: 'test/vm/guest/a.guest.ts', name: 'first' };
const b = { file: 'test/vm/guest/a.guest.ts', name: 'second' };

describe('parseRecords', () => {
  test('reads back what encodeRecord wrote, one record a line', () => {
    const records: GuestRecord[] = [
      { t: 'init', uptime: 2.5 },
      { t: 'runner-start', uptime: 3.5, kernel: '6.1.0-56-amd64', node: 'v20.0.0' },
      { t: 'plan', tests: [a, b] },
      { t: 'result', ...a, status: 'pass', ms: 3 },
      { t: 'result', ...b, status: 'fail', error: 'Error: x\n  at y', ms: 4 },
      { t: 'runner-end', uptime: 9 },
      { t: 'exit', code: 0, uptime: 9.1 },
    ];
    const text = records.map(encodeRecord).join('');
    expect(parseRecords(text)).toEqual({ records, garbage: [] });
  });

  test('keeps torn and unknown lines as garbage instead of dropping them', () => {
    const text = '{"t":"init","uptime":1}\n{"t":"result","file":"x"\n{"t":"reboot"}\nnot json\n\n';
    const { records, garbage } = parseRecords(text);
    expect(records).toEqual([{ t: 'init', uptime: 1 }]);
    expect(garbage).toEqual(['{"t":"result","file":"x"', '{"t":"reboot"}', 'not json']);
  });

  test('rejects a result whose status is neither pass nor fail', () => {
    const { records, garbage } = parseRecords('{"t":"result","file":"f","name":"n","status":"skip","ms":1}\n');
    expect(records).toEqual([]);
    expect(garbage).toHaveLength(1);
  });
});

describe('outcomes', () => {
  test('fails an expected test the guest never reported, with the reason given', () => {
    const got = outcomes([a, b], [{ t: 'result', ...a, status: 'pass', ms: 1 }], 'the VM died');
    expect(got).toEqual([
      { ...a, status: 'pass', ms: 1, error: undefined },
      { ...b, status: 'fail', error: 'the VM died' },
    ]);
  });

  test('keeps the guest error message of a failed test', () => {
    const got = outcomes([a], [{ t: 'result', ...a, status: 'fail', error: 'AssertionError: 1 !== 2', ms: 1 }], 'x');
    expect(got[0]).toMatchObject({ status: 'fail', error: 'AssertionError: 1 !== 2' });
  });

  test('appends results nobody planned (a failing afterAll) after the planned ones', () => {
    const extra = { file: a.file, name: '(afterAll)' };
    const got = outcomes([a], [
      { t: 'result', ...extra, status: 'fail', error: 'cleanup broke', ms: 1 },
      { t: 'result', ...a, status: 'pass', ms: 1 },
    ], 'x');
    expect(got.map((o) => [o.name, o.status])).toEqual([['first', 'pass'], ['(afterAll)', 'fail']]);
  });

  test('fails a test reported twice, even if both reports passed', () => {
    const got = outcomes([a], [
      { t: 'result', ...a, status: 'pass', ms: 1 },
      { t: 'result', ...a, status: 'pass', ms: 1 },
    ], 'x');
    expect(got).toHaveLength(1);
    expect(got[0].status).toBe('fail');
    expect(got[0].error).toMatch(/reported twice/);
  });

  test('fails every expected test when there are no records at all', () => {
    expect(outcomes([a, b], [], 'no boot').map((o) => o.status)).toEqual(['fail', 'fail']);
  });
});
