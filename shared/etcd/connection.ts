/**
 * The rules every etcd connection of the project obeys (the IPAM etcd
 * store, the overlay plugin, the overlay agent), in one place:
 *
 *   - endpoints are all http:// or all https:// (a bare host:port is http);
 *   - https:// needs a CA file: without one the client could not verify the
 *     server, and the old behaviour (drop to plaintext, password included)
 *     is exactly what must never happen;
 *   - a CA, client certificate or key with http:// endpoints is refused (it
 *     would be silently unused);
 *   - a username and password travel only over TLS, unless the config says
 *     `"insecure": true` (a lab, or etcd on loopback);
 *   - the password comes from `passwordFile`: a regular file, owned by root,
 *     mode 0600 or stricter. An inline `password` is refused: a conflist is
 *     typically 0644 in /etc/cni/net.d, readable by every local user.
 *
 * fieldsSchema is the zod shape a configuration section embeds;
 * resolveConnection turns a parsed section into an EtcdConnection (reading
 * the files); checkConnection is applied by connectEtcd to whatever it is
 * given, so no caller (the agent's flags included) can get around them.
 * Every refusal is CniError 7 naming the offending field.
 */
import * as fs from 'node:fs';
import { z } from 'zod';
import { CniError, ErrorCode } from '../cni/errors';

export const ENDPOINT_RE = /^(https?:\/\/)?[^\s/]+:\d+$/;

/** The etcd connection fields a configuration section may carry (all optional; defaults are the caller's). */
export const fieldsSchema = {
  endpoints: z.array(z.string().regex(ENDPOINT_RE, 'not host:port or http(s)://host:port')).min(1).optional(),
  caFile: z.string().min(1).optional(),
  certFile: z.string().min(1).optional(),
  keyFile: z.string().min(1).optional(),
  username: z.string().min(1).optional(),
  passwordFile: z.string().min(1).optional(),
  /** allows credentials over http:// (never the default) */
  insecure: z.boolean().optional(),
  /** accepted by the schema only to be refused with a clear message (resolveConnection) */
  password: z.unknown().optional(),
};

export interface ConnectionFields {
  readonly endpoints?: readonly string[];
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly username?: string;
  readonly passwordFile?: string;
  readonly insecure?: boolean;
  readonly password?: unknown;
}

export interface SecureConnection {
  readonly endpoints: readonly string[];
  readonly tls?: { readonly ca: Buffer; readonly cert?: Buffer; readonly key?: Buffer };
  readonly auth?: { readonly username: string; readonly password: string };
  /** credentials over http:// were asked for explicitly */
  readonly insecure?: boolean;
}

function invalid(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.InvalidNetworkConfig, msg, details);
}

/**
 * Refuses a connection that would not be what its endpoints promise:
 * https:// without a CA, TLS material with http://, mixed schemes, or
 * credentials in clear without `insecure`. `where` names the config section.
 */
export function checkConnection(c: SecureConnection, where: string): void {
  if (c.endpoints.length === 0) throw invalid(`${where}: no endpoints`);
  for (const e of c.endpoints) if (!ENDPOINT_RE.test(e)) throw invalid(`${where}.endpoints: "${e}" is not host:port or http(s)://host:port`);
  const https = c.endpoints.filter((e) => e.startsWith('https://')).length;
  if (https > 0 && https < c.endpoints.length) {
    throw invalid(`${where}.endpoints: mixes https:// and http:// endpoints`, 'a client talks TLS to every endpoint or to none');
  }
  const secure = https > 0;
  if (secure && !c.tls) {
    throw invalid(`${where}: https:// endpoints need a CA (caFile, or --etcd-ca for the agent)`, 'without one the server cannot be verified; nothing is sent in plaintext instead');
  }
  if (!secure && c.tls) {
    throw invalid(`${where}: a CA or client certificate is set but the endpoints are http://`, 'TLS endpoints are written https://host:port');
  }
  if (c.auth && !secure && !c.insecure) {
    throw invalid(`${where}: a username and password over http:// would travel in clear`, 'use https:// endpoints with a CA, or set "insecure": true (--etcd-insecure) to accept that');
  }
}

/**
 * The password in `file`: a regular file owned by root, with no permission
 * bits for group or others (0600 or 0400). Read through one descriptor, so
 * what is checked is what is read. Trailing newlines are dropped.
 */
export function readPasswordFile(file: string, where: string): string {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (e) {
    throw invalid(`${where}.passwordFile: cannot open ${file}`, (e as Error).message);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw invalid(`${where}.passwordFile: ${file} is not a regular file`);
    if (st.uid !== 0) throw invalid(`${where}.passwordFile: ${file} is owned by uid ${st.uid}, not root`, 'chown root the file holding the etcd password');
    if ((st.mode & 0o077) !== 0) {
      throw invalid(`${where}.passwordFile: ${file} has mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}; it must be 0600`, 'chmod 600 the file holding the etcd password');
    }
    const password = fs.readFileSync(fd, 'utf8').replace(/[\r\n]+$/, '');
    if (password === '') throw invalid(`${where}.passwordFile: ${file} is empty`);
    return password;
  } finally {
    fs.closeSync(fd);
  }
}

function readPem(where: string, field: string, file: string): Buffer {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
  } catch (e) {
    throw invalid(`${where}.${field}: cannot read ${file}`, (e as Error).message);
  }
  if (!data.includes('-----BEGIN ')) throw invalid(`${where}.${field}: ${file} is not PEM`);
  return data;
}

/**
 * A configuration section's connection, files read and every rule checked.
 * `defaultEndpoints` stands in when the section names none.
 */
export function resolveConnection(f: ConnectionFields, where: string, defaultEndpoints: readonly string[] = ['http://127.0.0.1:2379']): SecureConnection {
  if (f.password !== undefined) {
    throw invalid(`${where}.password: an inline password is refused`, 'a network configuration is readable by every local user: put the password in a root-owned 0600 file and name it in passwordFile');
  }
  if ((f.certFile === undefined) !== (f.keyFile === undefined)) throw invalid(`${where}: certFile and keyFile go together`, 'a client certificate needs its private key');
  if (f.certFile !== undefined && f.caFile === undefined) throw invalid(`${where}: a client certificate needs caFile`);
  if ((f.username === undefined) !== (f.passwordFile === undefined)) throw invalid(`${where}: username and passwordFile go together`);
  const endpoints = f.endpoints ?? defaultEndpoints;
  // The cheap structural checks first, so a bad section reads no file.
  checkConnection(
    {
      endpoints,
      tls: f.caFile !== undefined ? { ca: Buffer.alloc(0) } : undefined,
      auth: f.username !== undefined ? { username: f.username, password: '' } : undefined,
      insecure: f.insecure,
    },
    where,
  );
  const tls =
    f.caFile !== undefined
      ? {
          ca: readPem(where, 'caFile', f.caFile),
          ...(f.certFile !== undefined && { cert: readPem(where, 'certFile', f.certFile) }),
          ...(f.keyFile !== undefined && { key: readPem(where, 'keyFile', f.keyFile) }),
        }
      : undefined;
  const auth = f.username !== undefined ? { username: f.username, password: readPasswordFile(f.passwordFile!, where) } : undefined;
  return { endpoints, ...(tls && { tls }), ...(auth && { auth }), ...(f.insecure && { insecure: true }) };
}
