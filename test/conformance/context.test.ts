import { describe, expect, it } from 'vitest';
import { canonicalIp } from '../../conformance/context';

describe('canonicalIp', () => {
  it('gives equal text to equal IPv6 addresses however they are written', () => {
    expect(canonicalIp('FD00:0:0::1')).toBe(canonicalIp('fd00::1'));
    expect(canonicalIp('::')).toBe('0:0:0:0:0:0:0:0');
    expect(canonicalIp('::ffff:10.0.0.1')).toBe(canonicalIp('0:0:0:0:0:ffff:a00:1'));
    expect(canonicalIp('fd00::1')).not.toBe(canonicalIp('fd00::2'));
  });

  it('leaves IPv4 as it is', () => {
    expect(canonicalIp('10.0.0.1')).toBe('10.0.0.1');
  });
});
