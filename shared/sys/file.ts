/**
 * The one way this project replaces a state file: write a temporary file
 * beside it (created exclusively, never through a symlink, with its final
 * mode from the first byte), fsync it, rename it over the old one. A crash
 * leaves the old content or the new, never half of one, and a reader never
 * sees a file that is not whole.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface AtomicWriteOptions {
  /** the file's mode (default 0600: state files are root's alone unless a caller says otherwise) */
  readonly mode?: number;
  /** create the parent directory (mode 0700) when missing */
  readonly mkdir?: boolean;
  /** leave the file alone when it already holds exactly `data` (saves a write and an fsync per call) */
  readonly unlessSame?: boolean;
  /** fsync the directory after the rename too, so the new name itself survives a power loss */
  readonly syncDir?: boolean;
  /**
   * false: no fsync before the rename, for a hint whose loss in a power cut
   * costs nothing (the old content, or a torn or empty file, is read as no
   * hint): readers still never see half a file while the system runs
   */
  readonly durable?: boolean;
}

/** Replaces `file` with `data` atomically; returns false when `unlessSame` found it already written. */
export function writeFileAtomic(file: string, data: string | Uint8Array, options: AtomicWriteOptions = {}): boolean {
  if (options.unlessSame && holds(file, data)) return false;
  const dir = path.dirname(file);
  if (options.mkdir) fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  const fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, options.mode ?? 0o600);
  try {
    try {
      fs.writeFileSync(fd, data); // loops until all is written
      if (options.durable !== false) fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  if (options.syncDir) {
    const dfd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  }
  return true;
}

function holds(file: string, data: string | Uint8Array): boolean {
  try {
    const now = fs.readFileSync(file);
    return typeof data === 'string' ? now.toString('utf8') === data : Buffer.from(data).equals(now);
  } catch {
    return false; // missing or unreadable: written
  }
}
