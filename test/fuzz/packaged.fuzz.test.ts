/**
 * Issue 12.7, the packaged path: generated calls (the same generators as
 * plugins.fuzz.test.ts) run through the real executables, bin/<plugin>, the
 * way a runtime runs them (argv, environment, stdin), inside the throwaway
 * "host" namespace (lab.ts). Each answer must be the spec's error JSON or a
 * valid result, and no stack trace may leak on stdout or (without CNI_DEBUG)
 * on stderr; a rejected call must leave the host's links, addresses, routes,
 * ruleset and state files as they were.
 *
 * The process this test spawns starts in the lab's namespace (the thread
 * that forks is in it), so the shim finds no daemon of its own namespace and
 * runs the packaged executable; CNI_TS_NO_DAEMON=1 makes that explicit.
 * Each call is a whole process start, so the count is a few hundred
 * (FUZZ_BIN_RUNS overrides).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NFT_PLUGINS, callArb, type Call } from './arbitraries';
import { FuzzLab, type Snapshot } from './lab';
import { describeCall, judge, type Answer } from './judge';

const RUNS = Number(process.env.FUZZ_BIN_RUNS ?? 200);
const SEED = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);
const BIN = path.resolve(__dirname, '../../bin');

let lab: FuzzLab;
const stats = { calls: 0, rejected: 0, accepted: 0 };

beforeAll(() => {
  lab = new FuzzLab();
  lab.enter();
});

afterAll(() => {
  lab?.cleanup();
  process.stderr.write(`fuzz (packaged): ${stats.calls} generated calls through bin/, ${stats.rejected} rejected, ${stats.accepted} accepted\n`);
});

function run(call: Call, command?: string): Answer {
  // what a runtime passes, minus anything that would change what runs
  const env: Record<string, string> = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', CNI_TS_NO_DAEMON: '1' };
  for (const [k, v] of Object.entries(call.env)) env[k] = v.replace(/\0/g, '');
  if (command) env.CNI_COMMAND = command;
  const r = spawnSync(path.join(BIN, call.plugin), [], { env, input: call.stdin, encoding: 'utf8', timeout: 60_000, maxBuffer: 64 << 20 });
  // A plugin that refuses its environment (CNI_ARGS, CNI_NETNS, ...) answers
  // without reading its config; a config
  // larger than the pipe then meets a closed pipe. libcni's Go exec ignores
  // that EPIPE once the plugin has exited, and so does this runtime.
  if (r.error && !((r.error as NodeJS.ErrnoException).code === 'EPIPE' && r.status !== null)) throw r.error;
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

let baseline: Snapshot | undefined;

async function property(call: Call): Promise<void> {
  const nft = NFT_PLUGINS.has(call.plugin);
  if (!baseline || (nft && baseline.nft === '')) baseline = lab.snapshot();
  const answer = run(call);
  stats.calls++;
  const why = judge(call, answer, false);
  expect(why, `${why}\n${describeCall(call)}\nstdout: ${answer.stdout}\nstderr: ${answer.stderr.slice(0, 3000)}`).toBe('');
  if (answer.status === 1) {
    stats.rejected++;
    const after = lab.snapshot({ nft });
    const changed = (Object.keys(after) as Array<keyof Snapshot>).filter((k) => (k !== 'nft' || nft) && after[k] !== baseline![k]);
    const before = baseline;
    baseline = nft ? after : { ...after, nft: before.nft };
    expect(changed, `a rejected call changed ${changed.join(', ')}\n${describeCall(call)}\nstdout: ${answer.stdout}\n${changed.map((k) => `before ${before[k].slice(0, 1500)}\nafter  ${after[k].slice(0, 1500)}`).join('\n')}`).toEqual([]);
  } else {
    stats.accepted++;
    if (call.env.CNI_COMMAND === 'ADD') {
      const del = run(call, 'DEL');
      expect(del.status, `DEL after a successful ADD failed\n${describeCall(call)}\nDEL: ${del.stdout}`).toBe(0);
    }
    baseline = lab.snapshot({ nft });
  }
  await new Promise((r) => setImmediate(r));
}

describe('fuzz through the packaged executables: no stack trace leaks, a rejected call changes nothing', () => {
  it(`${RUNS} generated calls through bin/<plugin>`, async () => {
    expect(fs.existsSync(path.join(BIN, 'bridge')), 'bin/ missing: run ./build.sh first').toBe(true);
    // the overlay's etcd is unreachable here (127.0.0.1 in the lab namespace):
    // each valid overlay config costs its requestTimeoutMs, which the generator keeps small
    await fc.assert(fc.asyncProperty(callArb(lab), property), { numRuns: RUNS, seed: SEED, endOnFailure: true });
  }, 900_000);
});
