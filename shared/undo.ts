/**
 * Rollback for multi-step ADDs, in the shape of the reference bridge
 * plugin's "success flag + deferred undo": push the undo of each step right
 * after the step succeeds; if the ADD fails, the undos run newest first and
 * the original error is what the caller sees. A failing undo is logged
 * (to the call's logger: pass ctx.log) but never hides the error that
 * caused the rollback.
 */
import { stderrLog, type Logger } from './log';

export class UndoStack {
  private readonly steps: Array<{ what: string; undo: () => unknown }> = [];

  constructor(private readonly log: Logger = stderrLog) {}

  push(what: string, undo: () => unknown): void {
    this.steps.push({ what, undo });
  }

  async unwind(): Promise<void> {
    while (this.steps.length) {
      const { what, undo } = this.steps.pop()!;
      try {
        await undo();
      } catch (e) {
        this.log(`rollback: undo "${what}" failed: ${(e as Error).message}`);
      }
    }
  }

  /** Run fn; on any failure unwind (failed undos go to log), then rethrow the failure. */
  static async run<T>(fn: (undo: UndoStack) => Promise<T> | T, log: Logger = stderrLog): Promise<T> {
    const undo = new UndoStack(log);
    try {
      return await fn(undo);
    } catch (e) {
      await undo.unwind();
      throw e;
    }
  }
}
