/**
 * Key material that cannot leak by accident: printing, logging, JSON or
 * string interpolation of a Secret shows "[redacted]". The bytes come out
 * only through reveal(), which the xfrm and storage code call by name, so a
 * reviewer can find every place a key leaves its box.
 */
import { timingSafeEqual } from 'node:crypto';
import { inspect } from 'node:util';

const REDACTED = '[redacted]';

export class Secret {
  readonly #bytes: Buffer;

  constructor(bytes: Buffer) {
    this.#bytes = Buffer.from(bytes);
  }

  get length(): number {
    return this.#bytes.length;
  }

  /** A copy of the bytes: for the kernel (XFRMA_ALG_AEAD), HMAC and storage only. */
  reveal(): Buffer {
    return Buffer.from(this.#bytes);
  }

  equals(other: Secret): boolean {
    return other.length === this.length && timingSafeEqual(other.#bytes, this.#bytes);
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return `Secret(${REDACTED})`;
  }
}
