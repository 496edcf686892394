/**
 * This host's identity for cluster records (IPAM host registration, overlay VTEP records).
 *
 * Why not /etc/machine-id: cloned VM images and golden disk images share it, so two hosts would
 * look like one and take each other's registration, blocks and endpoints. Instead every host
 * generates a random 128-bit id once, the first time anything asks, and keeps it under /var/lib.
 *
 * Creation is atomic and race-free: the id is written to a temp file (0644) in the same directory
 * and published with link(2), which fails with EEXIST when another first caller won; the loser
 * then reads the winner's id. So every caller on the host ends up with one id.
 *
 * A file that exists but does not hold a well-formed id is an error, never silently replaced:
 * replacing it would give the host a new identity, and the cluster would refuse it as a second
 * host claiming the same node name (or, worse, an operator's copy of another host's file would
 * be overwritten without anyone noticing).
 */

import { randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { HOST_ID_FILE } from './paths';

export const DEFAULT_HOST_ID_FILE = HOST_ID_FILE;

const HOST_ID = /^[0-9a-f]{32}$/;

/** Reads (or creates, once) this host's id from `file`: 32 lowercase hex characters. */
export function hostId(file = DEFAULT_HOST_ID_FILE): string {
  const existing = readHostId(file);
  if (existing !== undefined) return existing;

  const dir = dirname(file);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const id = randomBytes(16).toString('hex');
  const tmp = join(dir, `.host-id.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  writeFileSync(tmp, id + '\n', { mode: 0o644, flag: 'wx' });
  try {
    // link() does not replace an existing file, unlike rename(): the first caller wins.
    linkSync(tmp, file);
    return id;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    const winner = readHostId(file);
    if (winner === undefined) throw new Error(`host id file ${file} vanished while it was being created`);
    return winner;
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      // already gone: nothing to clean up
    }
  }
}

/** The id in `file`, undefined when the file does not exist; throws when it is malformed. */
function readHostId(file: string): string | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`cannot read host id file ${file}: ${(e as Error).message}`);
  }
  const id = text.trim();
  if (!HOST_ID.test(id)) {
    throw new Error(
      `host id file ${file} is malformed (expected 32 lowercase hex characters); ` +
        'fix or remove it by hand: removing it gives this host a new identity, which the cluster ' +
        'refuses while the old registration of this node name holds',
    );
  }
  return id;
}
