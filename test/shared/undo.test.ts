/**
 * UndoStack: undos run newest first, the original failure is what the
 * caller sees, and a failing undo is reported to the call's logger (in the
 * daemon, the caller's stderr), never to this process's stderr.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { UndoStack } from '../../shared/undo';

afterEach(() => vi.restoreAllMocks());

describe('UndoStack', () => {
  it('unwinds newest first and rethrows the failure that caused it', async () => {
    const ran: string[] = [];
    const failure = UndoStack.run(async (undo) => {
      undo.push('first', () => ran.push('first'));
      undo.push('second', () => ran.push('second'));
      throw new Error('step 3 failed');
    }, () => {});
    await expect(failure).rejects.toThrow('step 3 failed');
    expect(ran).toEqual(['second', 'first']);
  });

  it("reports a failing undo to the logger it was given, not to process.stderr, and still runs the rest", async () => {
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const lines: string[] = [];
    const ran: string[] = [];
    const failure = UndoStack.run(async (undo) => {
      undo.push('delete veth', () => ran.push('veth'));
      undo.push('release address', () => {
        throw new Error('etcd unreachable');
      });
      throw new Error('route add failed');
    }, (line) => lines.push(line));
    await expect(failure).rejects.toThrow('route add failed');
    expect(lines).toEqual(['rollback: undo "release address" failed: etcd unreachable']);
    expect(ran).toEqual(['veth']);
    expect(stderr).not.toHaveBeenCalled();
  });

  it('returns what the steps return and undoes nothing when they succeed', async () => {
    const ran: string[] = [];
    const out = await UndoStack.run(async (undo) => {
      undo.push('x', () => ran.push('x'));
      return 42;
    }, () => {});
    expect(out).toBe(42);
    expect(ran).toEqual([]);
  });
});
