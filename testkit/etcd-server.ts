/**
 * A real etcd for the etcd store's tests: the Debian etcd-server binary on
 * 127.0.0.1, random free ports, a temp data dir, killed and removed by stop().
 * kill() and start() stop and restart the same member on the same data dir
 * and ports, for the tests of an etcd restarted mid-run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export interface EtcdServer {
  /** http://127.0.0.1:<port> */
  readonly endpoint: string;
  /** SIGKILLs the member, keeping its data dir (a crash, not a shutdown). */
  kill(): Promise<void>;
  /** Starts the killed member again on the same data dir and ports; resolves when healthy. */
  start(): Promise<void>;
  /** Kills the member and removes its data dir. */
  stop(): Promise<void>;
}

/** A port nothing listens on right now (the kernel's choice for port 0). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export async function startEtcd(): Promise<EtcdServer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-etcd-'));
  const client = await freePort();
  const peer = await freePort();
  const endpoint = `http://127.0.0.1:${client}`;
  const peerUrl = `http://127.0.0.1:${peer}`;
  const logFile = path.join(dir, 'etcd.log');
  let child: ChildProcess | undefined;
  let exited = true;

  const kill = async (): Promise<void> => {
    if (child && !exited) {
      const gone = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGKILL');
      await gone;
    }
  };
  const stop = async (): Promise<void> => {
    await kill();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const start = async (): Promise<void> => {
    if (!exited) throw new Error('etcd is already running');
    const log = fs.openSync(logFile, 'a');
    child = spawn(
      'etcd',
      [
        '--name', 'default',
        '--data-dir', path.join(dir, 'data'),
        '--listen-client-urls', endpoint,
        '--advertise-client-urls', endpoint,
        '--listen-peer-urls', peerUrl,
        '--initial-advertise-peer-urls', peerUrl,
        '--initial-cluster', `default=${peerUrl}`,
      ],
      { stdio: ['ignore', log, log] },
    );
    fs.closeSync(log);
    exited = false;
    child.once('exit', () => (exited = true));
    for (let i = 0; i < 200; i++) {
      if (exited) break;
      try {
        const res = await fetch(`${endpoint}/health`);
        if (res.ok && ((await res.json()) as { health?: string }).health === 'true') return;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    const text = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').slice(-2000) : '';
    await kill();
    throw new Error(`etcd did not become healthy at ${endpoint}:\n${text}`);
  };

  try {
    await start();
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return { endpoint, kill, start, stop };
}
