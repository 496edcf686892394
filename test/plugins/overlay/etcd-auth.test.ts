/**
 * The agent's way to a secured etcd: user and password (the password from a
 * file, never on the command line) and TLS files, as flags; and a real etcd
 * with authentication enabled accepting the agent's KV with the right
 * credentials and refusing it (code 7, not 11) with wrong ones.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseArgs } from '../../../plugins/overlay/agent';
import { EtcdKV } from '../../../shared/etcd/kv';
import { loadEtcd3 } from '../../../shared/etcd/load';
import { startEtcd, type EtcdServer } from '../../../testkit/etcd-server';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-agent-auth-'));
let etcd: EtcdServer;

beforeAll(async () => {
  etcd = await startEtcd();
  // etcd needs a root user with the root role before authentication can be switched on
  const { Etcd3 } = loadEtcd3();
  const admin = new Etcd3({ hosts: etcd.endpoint.replace(/^https?:\/\//, '') });
  try {
    await admin.user('root').create('root-secret');
    await admin.user('root').addRole('root');
    await admin.user('agent').create('agent-secret');
    await admin.role('overlay').create();
    await admin.role('overlay').grant({ permission: 'Readwrite', range: admin.range({ prefix: '/cni-ts/overlay' }) });
    await admin.user('agent').addRole('overlay');
    await admin.auth.authEnable();
  } finally {
    admin.close();
  }
});
afterAll(async () => {
  await etcd?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('overlay agent and a secured etcd', () => {
  it('reads TLS files and the password file from its flags', () => {
    const pw = path.join(dir, 'pw');
    const pem = path.join(dir, 'ca.pem');
    fs.writeFileSync(pw, 'agent-secret\n', { mode: 0o600 });
    fs.writeFileSync(pem, '-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n');
    const base = ['--node', 'n1', '--vtep', '10.0.0.1', '--host-id-file', path.join(dir, 'host-id')];
    const { opts } = parseArgs([...base, '--etcd', 'https://e:2379', '--etcd-user', 'agent', '--etcd-password-file', pw, '--etcd-ca', pem]);
    expect(opts.auth).toEqual({ username: 'agent', password: 'agent-secret' });
    expect(opts.tls?.ca.toString()).toContain('BEGIN CERTIFICATE');
    expect(() => parseArgs([...base, '--etcd-user', 'agent'])).toThrow(/go together/);
    expect(() => parseArgs([...base, '--etcd-cert', pem, '--etcd-key', pem])).toThrow(/need --etcd-ca/);
  });

  it('refuses https:// without --etcd-ca (never a silent drop to plaintext), and a password over http:// without --etcd-insecure', () => {
    const pw = path.join(dir, 'pw2');
    fs.writeFileSync(pw, 'agent-secret\n', { mode: 0o600 });
    const base = ['--node', 'n1', '--vtep', '10.0.0.1', '--host-id-file', path.join(dir, 'host-id')];
    expect(() => parseArgs([...base, '--etcd', 'https://e:2379'])).toThrow(/https:\/\/ endpoints need a CA/);
    expect(() => parseArgs([...base, '--etcd', 'e:2379', '--etcd-user', 'agent', '--etcd-password-file', pw])).toThrow(/would travel in clear/);
    expect(parseArgs([...base, '--etcd', 'e:2379', '--etcd-user', 'agent', '--etcd-password-file', pw, '--etcd-insecure']).opts).toMatchObject({ insecure: true, auth: { username: 'agent' } });
    fs.chmodSync(pw, 0o644);
    expect(() => parseArgs([...base, '--etcd', 'e:2379', '--etcd-user', 'agent', '--etcd-password-file', pw, '--etcd-insecure'])).toThrow(/mode 0644; it must be 0600/);
  });

  it('a client given a password over http:// is refused before anything is sent, unless insecure', () => {
    expect(() => new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000, auth: { username: 'agent', password: 'agent-secret' } })).toThrow(expect.objectContaining({ code: 7 }));
    expect(() => new EtcdKV({ endpoints: ['https://127.0.0.1:1'], requestTimeoutMs: 5000 })).toThrow(/need a CA/);
  });

  it('works with the right credentials and is refused with code 7 (not 11) with wrong ones', async () => {
    const deadline = () => Date.now() + 5000;
    const good = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000, auth: { username: 'agent', password: 'agent-secret' }, insecure: true });
    try {
      const put = await good.txn({ success: [{ put: '/cni-ts/overlay/probe', value: 'ok' }, { get: '/cni-ts/overlay/probe' }] }, deadline());
      expect(put.succeeded).toBe(true);
      expect(put.results[1][0].value).toBe('ok');
    } finally {
      good.close();
    }
    const bad = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000, auth: { username: 'agent', password: 'wrong' }, insecure: true });
    try {
      await expect(bad.txn({ success: [{ get: '/cni-ts/overlay/probe' }] }, deadline())).rejects.toMatchObject({ code: 7 });
    } finally {
      bad.close();
    }
  });

  it('a host removed from the cluster (its etcd user deleted) can no longer read anything, the key ring included', async () => {
    const { Etcd3 } = loadEtcd3();
    const admin = new Etcd3({ hosts: etcd.endpoint.replace(/^https?:\/\//, ''), auth: { username: 'root', password: 'root-secret' } });
    try {
      await admin.put('/cni-ts/overlay/ipsec/ring').value('{"keys":"(ring)"}');
      await admin.user('agent').delete();
    } finally {
      admin.close();
    }
    const removed = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000, auth: { username: 'agent', password: 'agent-secret' }, insecure: true });
    try {
      await expect(removed.txn({ success: [{ get: '/cni-ts/overlay/ipsec/ring' }] }, Date.now() + 5000)).rejects.toMatchObject({ code: 7 });
    } finally {
      removed.close();
    }
  });
});
