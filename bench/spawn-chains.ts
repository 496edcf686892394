/**
 * Runs chains of plugin calls through bench/spawn-chains.c: every chain
 * starts at once, a chain's calls one after another, each started with
 * posix_spawn (vfork, as Go's os/exec starts plugins for libcni) and timed
 * from its spawn to its reaping. The header of the C file says why the
 * benchmark's own Node process must not fork the calls.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface ChainCall {
  binary: string;
  env: Record<string, string>;
  /** may hold @PREV@: replaced by the previous call's stdout */
  stdin: string;
}

export interface CallOutcome {
  /** the call's executable */
  binary: string;
  chain: number;
  step: number;
  /** exit status, or minus the signal that ended it */
  status: number;
  /** from posix_spawn to the reaping of the process */
  ms: number;
  /** the process's peak resident set (wait4's ru_maxrss) */
  peakKb: number;
  stdout: string;
  stderr: string;
}

/** The launcher, compiled on first use (or when its source is newer). */
function launcher(root: string): string {
  const src = path.join(root, 'bench/spawn-chains.c');
  const bin = path.join(root, 'dist/bench/spawn-chains');
  const stale = !fs.existsSync(bin) || fs.statSync(bin).mtimeMs < fs.statSync(src).mtimeMs;
  if (stale) {
    fs.mkdirSync(path.dirname(bin), { recursive: true });
    execFileSync(process.env.CC ?? 'cc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', bin, src], { stdio: 'inherit' });
  }
  return bin;
}

const field = (s: string | number): Buffer => {
  const b = Buffer.from(String(s));
  return Buffer.concat([Buffer.from(`${b.length}\n`), b]);
};

export function runChains(chains: readonly (readonly ChainCall[])[], root = process.cwd()): CallOutcome[] {
  const encoded = chains.map((c) =>
    Buffer.concat([
      field(c.length),
      ...c.map((call) => {
        const env = Object.entries(call.env).map(([k, v]) => field(`${k}=${v}`));
        return Buffer.concat([field(call.binary), field(env.length), ...env, field(call.stdin)]);
      }),
    ]),
  );
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spawn-chains-'));
  try {
    const input = path.join(dir, 'chains');
    fs.writeFileSync(input, Buffer.concat([field(chains.length), ...encoded]));
    const out = execFileSync(launcher(root), [input], { maxBuffer: 1 << 28 });
    const results: CallOutcome[] = [];
    let off = 0;
    while (off < out.length) {
      const nl = out.indexOf(10, off);
      const [chain, step, status, us, peakKb, outLen, errLen] = out.subarray(off, nl).toString().split(' ').map(Number);
      off = nl + 1;
      const stdout = out.subarray(off, off + outLen).toString();
      off += outLen;
      const stderr = out.subarray(off, off + errLen).toString();
      off += errLen;
      results.push({ binary: chains[chain][step].binary, chain, step, status, ms: us / 1000, peakKb, stdout, stderr });
    }
    return results;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
