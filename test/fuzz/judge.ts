/**
 * What every answer of a plugin call must look like (not a test file
 * itself), whatever the input: the spec's error JSON (cniVersion, an integer
 * code, a message) with exit 1, or a valid answer for the command with exit
 * 0; one JSON document at most on stdout; never a stack trace on stdout, and
 * on stderr only when CNI_DEBUG asked for it.
 */
import type { Call } from './arbitraries';

export interface Answer {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** A JavaScript stack frame line ("    at foo (file.js:1:2)"). */
const STACK_FRAME = /^\s+at .+(:\d+:\d+\)?|\(native\)|\(<anonymous>\))$/m;

/**
 * Errors that mean the plugin met input it did not expect (a crash turned
 * into code 999), as opposed to a system or kernel error it reports: seen in
 * the stack the skel prints under CNI_DEBUG.
 */
const CRASH = /^(?:Uncaught )?(TypeError|RangeError|ReferenceError|SyntaxError|EvalError|URIError|AggregateError|ZodError)\b/m;

/** '' when the answer is acceptable, else why not. */
export function judge(call: Call, a: Answer, debugStacks: boolean): string {
  const command = call.env.CNI_COMMAND;
  if (a.status !== 0 && a.status !== 1) return `exit status ${a.status} (expected 0 or 1)`;
  if (STACK_FRAME.test(a.stdout)) return 'a stack trace on stdout';
  if (!debugStacks && call.env.CNI_DEBUG === undefined && STACK_FRAME.test(a.stderr)) return 'a stack trace on stderr without CNI_DEBUG';
  const text = a.stdout.trim();
  let doc: any;
  if (text !== '') {
    try {
      doc = JSON.parse(text);
    } catch {
      return 'stdout is not one JSON document';
    }
  }
  if (a.status === 1) {
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) return 'exit 1 without an error object on stdout';
    if (typeof doc.cniVersion !== 'string' || doc.cniVersion === '') return 'error without cniVersion';
    if (!Number.isInteger(doc.code) || doc.code <= 0) return `error code ${JSON.stringify(doc.code)} is not a positive integer`;
    if (typeof doc.msg !== 'string' || doc.msg === '') return 'error without msg';
    if (doc.details !== undefined && typeof doc.details !== 'string') return 'error details not a string';
    if (doc.code === 999) {
      const m = CRASH.exec(a.stderr);
      if (m) return `code 999 from an unexpected ${m[1]} (a crash): ${doc.msg}`;
    }
    return '';
  }
  // exit 0
  if (command === undefined || command === '') return text === '' ? '' : 'output without CNI_COMMAND';
  if (command === 'VERSION') {
    return doc && typeof doc.cniVersion === 'string' && Array.isArray(doc.supportedVersions) ? '' : 'VERSION answer malformed';
  }
  if (command === 'ADD') {
    if (doc === null || typeof doc !== 'object' || typeof doc.cniVersion !== 'string') return 'ADD succeeded without a result';
    for (const k of ['interfaces', 'ips', 'routes']) {
      if (doc[k] !== undefined && !Array.isArray(doc[k])) return `result ${k} is not an array`;
    }
    for (const ip of doc.ips ?? []) if (typeof ip.address !== 'string') return 'result ip without address';
    return '';
  }
  return text === '' ? '' : `${command} succeeded with output on stdout`;
}

/** A short, printable account of a call for failure messages. */
export function describeCall(call: Call): string {
  const stdin = call.stdin.length > 600 ? `${call.stdin.subarray(0, 600).toString('utf8')}... (${call.stdin.length} bytes)` : call.stdin.toString('utf8');
  const env = Object.fromEntries(Object.entries(call.env).map(([k, v]) => [k, v.length > 80 ? `${v.slice(0, 80)}... (${v.length})` : v]));
  return `${call.plugin} env=${JSON.stringify(env)} stdin=${stdin}`;
}
