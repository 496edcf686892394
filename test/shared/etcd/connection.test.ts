/**
 * The etcd connection rules (shared/etcd/connection.ts), one test per rule,
 * and each through the three configurations that use them: the etcd IPAM's
 * section, the overlay plugin's, and the agent's flags (etcd-auth.test.ts).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkConnection, readPasswordFile, resolveConnection } from '../../../shared/etcd/connection';
import { connectEtcd } from '../../../shared/etcd/client';
import { loadEtcdConfig } from '../../../ipam/etcd/config';
import { etcdConnection, schema } from '../../../plugins/overlay/config';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-etcd-conn-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const ca = path.join(dir, 'ca.pem');
fs.writeFileSync(ca, '-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n');
function passwordFile(name: string, mode: number, text = 's3cret\n'): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text, { mode });
  fs.chmodSync(f, mode);
  return f;
}

/** The CniError a call throws (its code and message), or undefined. */
function refusal(fn: () => unknown): { code: number; message: string } | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    return { code: (e as { code: number }).code, message: (e as Error).message };
  }
}

const ipam = (etcd: object) => () => loadEtcdConfig({ ...etcd, nodeName: 'n1', hostId: 'h' }, []);
const overlay = (etcd: object) => () => etcdConnection(schema.parse({ cniVersion: '1.1.0', name: 'ov', type: 'overlay', etcd }));

describe('etcd connection rules', () => {
  it('https:// without a CA is refused with code 7 (no silent plaintext), for IPAM, overlay and the client itself', () => {
    for (const call of [ipam({ endpoints: ['https://e:2379'] }), overlay({ endpoints: ['https://e:2379'] }), () => connectEtcd({ endpoints: ['https://e:2379'], timeoutMs: 100 })]) {
      expect(refusal(call)).toMatchObject({ code: 7, message: expect.stringMatching(/need a CA/) });
    }
  });

  it('https:// with a CA is accepted, and a CA with http:// endpoints is refused (it would be unused)', () => {
    expect(resolveConnection({ endpoints: ['https://e:2379'], caFile: ca }, 'etcd').tls?.ca.toString()).toContain('BEGIN CERTIFICATE');
    expect(refusal(ipam({ endpoints: ['http://e:2379'], caFile: ca }))).toMatchObject({ code: 7, message: expect.stringMatching(/endpoints are http/) });
    expect(refusal(() => checkConnection({ endpoints: ['https://a:1', 'http://b:1'], tls: { ca: Buffer.from('x') } }, 'etcd'))).toMatchObject({ code: 7, message: expect.stringMatching(/mixes/) });
  });

  it('a username and password over http:// are refused unless "insecure": true', () => {
    const pw = passwordFile('pw-ok', 0o600);
    for (const make of [ipam, overlay]) {
      expect(refusal(make({ endpoints: ['http://e:2379'], username: 'u', passwordFile: pw }))).toMatchObject({ code: 7, message: expect.stringMatching(/would travel in clear/) });
    }
    expect(ipam({ endpoints: ['http://e:2379'], username: 'u', passwordFile: pw, insecure: true })()).toMatchObject({ auth: { username: 'u', password: 's3cret' }, insecure: true });
    expect(overlay({ endpoints: ['http://e:2379'], username: 'u', passwordFile: pw, insecure: true })()).toMatchObject({ auth: { username: 'u', password: 's3cret' }, insecure: true });
    expect(refusal(() => connectEtcd({ endpoints: ['e:2379'], auth: { username: 'u', password: 'p' }, timeoutMs: 100 }))).toMatchObject({ code: 7 });
  });

  it('over https:// with a CA, a password file is enough', () => {
    const pw = passwordFile('pw-tls', 0o600);
    expect(overlay({ endpoints: ['https://e:2379'], caFile: ca, username: 'u', passwordFile: pw })()).toMatchObject({ auth: { password: 's3cret' } });
  });

  it('an inline password is refused, in the IPAM section, the overlay section, and an IPAM section the overlay borrows', () => {
    expect(refusal(ipam({ endpoints: ['https://e:2379'], caFile: ca, username: 'u', password: 'p' }))).toMatchObject({ code: 7, message: expect.stringMatching(/ipam\.etcd\.password: an inline password is refused/) });
    expect(refusal(overlay({ endpoints: ['https://e:2379'], caFile: ca, username: 'u', password: 'p' }))).toMatchObject({ code: 7, message: expect.stringMatching(/inline password/) });
    const borrowed = schema.parse({ cniVersion: '1.1.0', name: 'ov', type: 'overlay', ipam: { type: 'cluster-ipam', etcd: { endpoints: ['https://e:2379'], caFile: ca, username: 'u', password: 'p' } } });
    expect(refusal(() => etcdConnection(borrowed))).toMatchObject({ code: 7, message: expect.stringMatching(/inline password/) });
  });

  it('the password file must be a root-owned regular file with mode 0600 (or stricter)', () => {
    expect(readPasswordFile(passwordFile('pw-600', 0o600), 'x')).toBe('s3cret');
    expect(readPasswordFile(passwordFile('pw-400', 0o400), 'x')).toBe('s3cret');
    expect(refusal(() => readPasswordFile(passwordFile('pw-644', 0o644), 'x'))).toMatchObject({ code: 7, message: expect.stringMatching(/mode 0644; it must be 0600/) });
    expect(refusal(() => readPasswordFile(passwordFile('pw-640', 0o640), 'x'))).toMatchObject({ code: 7 });
    const notRoot = passwordFile('pw-nobody', 0o600);
    fs.chownSync(notRoot, 65534, 65534);
    expect(refusal(() => readPasswordFile(notRoot, 'x'))).toMatchObject({ code: 7, message: expect.stringMatching(/owned by uid 65534, not root/) });
    const link = path.join(dir, 'pw-link');
    fs.symlinkSync(passwordFile('pw-target', 0o600), link);
    expect(refusal(() => readPasswordFile(link, 'x'))).toMatchObject({ code: 7, message: expect.stringMatching(/cannot open/) });
    expect(refusal(() => readPasswordFile(dir, 'x'))).toMatchObject({ code: 7 });
    expect(refusal(() => readPasswordFile(passwordFile('pw-empty', 0o600, '\n'), 'x'))).toMatchObject({ code: 7, message: expect.stringMatching(/empty/) });
  });

  it('a refused IPAM section reads no file: the structural rules come first', () => {
    // a password file that does not exist is not even looked at when the scheme is wrong
    expect(refusal(ipam({ endpoints: ['http://e:2379'], username: 'u', passwordFile: path.join(dir, 'missing') }))?.message).toMatch(/would travel in clear/);
  });
});
