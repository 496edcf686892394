/**
 * The one logger. Diagnostics are lines of text for an operator; they go to
 * stderr, never stdout, which carries only a plugin's result or error JSON.
 *
 * A Logger is a function taking one line (no trailing newline), so that any
 * module can take one by injection and a test can pass `(l) => lines.push(l)`.
 * Inside a plugin call the logger is the call's own (`ctx.log`, built by the
 * skel from its SkelIO): in the daemon it reaches the caller's stderr, not
 * the daemon's. Long-running code outside a call (the daemon, the overlay
 * agent, the liveness keeper, ipam-maint) takes one as an option and
 * defaults to `stderrLog`.
 *
 * This is the only file that writes to stderr. It writes synchronously
 * (shared/sys/stdio.ts): a plugin exits right after its answer, and a line
 * still queued in a stream would be lost.
 */
import { writeAllSync } from './sys/stdio';

/** One diagnostic line, without its newline. */
export type Logger = (line: string) => void;

/** Writes each line to this process's stderr. */
export const stderrLog: Logger = (line) => {
  try {
    writeAllSync(2, `${line}\n`);
  } catch {
    // stderr closed: nowhere left to complain to
  }
};

/** Drops every line: the default where nobody listens (a SkelIO without a sink). */
export const silentLog: Logger = () => {};

/** A logger that puts `prefix` (e.g. "overlay: ") before each line. */
export function prefixed(log: Logger, prefix: string): Logger {
  return (line) => log(`${prefix}${line}`);
}

/** A logger over a sink of raw text (a stream's write): one line, one newline. */
export function textLogger(write: (text: string) => void): Logger {
  return (line) => write(`${line}\n`);
}
