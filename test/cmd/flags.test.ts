/**
 * The commands' bad flags, in-process: one line naming the flag, then the
 * usage, on stderr, exit code 2, and nothing started (shared/flags.ts).
 */
import { describe, expect, it } from 'vitest';
import { daemonMain } from '../../cmd/daemon';
import { maintMain } from '../../ipam/etcd/maint';
import { agentMain } from '../../plugins/overlay/agent';

// Each command takes its logger by injection (stderr by default): collect its lines.
function captureStderr(): { sink: (line: string) => void; text: () => string } {
  let text = '';
  return { sink: (line) => void (text += `${line}\n`), text: () => text };
}

describe('bad flags', () => {
  it('cni-ts daemon: exit 2 with the flag named and the usage, for each kind of mistake', async () => {
    const cases: [string[], string][] = [
      [['--bogus'], 'cni-ts daemon: unknown flag --bogus'],
      [['--workers'], 'cni-ts daemon: --workers needs a value'],
      [['--workers', '65'], 'cni-ts daemon: --workers: expected an integer from 1 to 64, got "65"'],
      [['--idle-exit', 'soon'], 'cni-ts daemon: --idle-exit: "soon" is not a duration'],
      [['--call-timeout', '30d'], 'cni-ts daemon: --call-timeout: "30d" is not a duration'],
      [['--log-calls=yes'], 'cni-ts daemon: --log-calls takes no value'],
      [['stray'], 'cni-ts daemon: unexpected argument "stray"'],
    ];
    for (const [args, first] of cases) {
      const { sink, text: err } = captureStderr();
      expect(await daemonMain(args, sink), args.join(' ')).toBe(2);
      const lines = err().split('\n');
      expect(lines[0], args.join(' ')).toContain(first);
      expect(lines[1]).toMatch(/^usage: cni-ts daemon /);
      expect(err()).not.toMatch(/\n\s+at /);
    }
  });

  it('cni-ts overlay-agent: exit 2 before anything reaches etcd; durations in the one syntax', async () => {
    for (const [args, first] of [
      [['--vtep', '192.0.2.1', '--bogus', '1'], 'overlay-agent: unknown flag --bogus'],
      [['--vtep', '192.0.2.1', '--resync-ms', '50'], 'overlay-agent: --resync-ms must be at least 100ms, got "50"'],
      [['--vtep', '192.0.2.1', '--ttl', '2.5s'], 'overlay-agent: --ttl must be whole seconds, got "2.5s"'],
      [['--vtep', '192.0.2.1', 'join'], 'overlay-agent: unexpected argument "join"'],
      [['leave', 'now', '--node', 'n'], 'overlay-agent: unexpected argument "now"'],
    ] as [string[], string][]) {
      const { sink, text: err } = captureStderr();
      expect(await agentMain(args, sink), args.join(' ')).toBe(2);
      expect(err().split('\n')[0]).toBe(first);
      expect(err()).toContain('usage: cni-ts overlay-agent');
    }
  });

  it('cni-ts ipam-maint: exit 2 with one line and the short usage', async () => {
    const err: string[] = [];
    const io = { out: () => undefined, err: (l: string) => void err.push(l) };
    expect(await maintMain(['--config'], io)).toBe(2);
    expect(await maintMain(['--config', 'x', 'decommission'], io)).toBe(2);
    expect(await maintMain(['report', '--config', 'x'], io)).toBe(2);
    expect(err.map((e) => e.split('\n')[0])).toEqual([
      'ipam-maint: --config needs a value',
      'ipam-maint: decommission needs a node name',
      'ipam-maint: unknown argument "report"',
    ]);
  });
});
