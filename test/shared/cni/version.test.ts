import { describe, expect, it } from 'vitest';
import { LATEST, SUPPORTED_VERSIONS, compareVersions, requireSupported, versionAtLeast } from '../../../shared/cni/version';
import { CniError } from '../../../shared/cni/errors';

function thrown(fn: () => unknown): CniError {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e;
    throw e;
  }
  throw new Error('expected a CniError');
}

describe('supported versions', () => {
  it('are 0.3.0 through 1.1.0, and the latest is 1.1.0', () => {
    expect(SUPPORTED_VERSIONS).toEqual(['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
    expect(LATEST).toBe('1.1.0');
  });

  it('cannot be changed by a caller', () => {
    expect(() => (SUPPORTED_VERSIONS as string[]).push('9.9.9')).toThrow();
  });
});

describe('compareVersions', () => {
  it('orders every supported version after the ones before it', () => {
    SUPPORTED_VERSIONS.forEach((a, i) => {
      SUPPORTED_VERSIONS.forEach((b, j) => {
        expect(Math.sign(compareVersions(a, b))).toBe(Math.sign(i - j));
      });
    });
  });

  it('compares numerically, not as text', () => {
    expect(compareVersions('0.10.0', '0.4.0')).toBeGreaterThan(0);
    expect(compareVersions('1.0.10', '1.0.9')).toBeGreaterThan(0);
  });

  it('treats missing parts as zero and an empty version as 0.1.0, like the reference', () => {
    expect(compareVersions('1', '1.0.0')).toBe(0);
    expect(compareVersions('1.1', '1.1.0')).toBe(0);
    expect(compareVersions('', '0.1.0')).toBe(0);
  });

  it('rejects text that is not a version with code 6', () => {
    for (const bad of ['abc', '1.0.0.0', '1.x.0', '-1.0.0', '1..0']) {
      expect(thrown(() => compareVersions(bad, '1.0.0')).code).toBe(6);
    }
  });

  it('versionAtLeast says whether a version reaches a minimum', () => {
    expect(versionAtLeast('0.4.0', '0.4.0')).toBe(true);
    expect(versionAtLeast('0.3.1', '0.4.0')).toBe(false);
    expect(versionAtLeast('1.1.0', '0.4.0')).toBe(true);
  });
});

describe('requireSupported', () => {
  for (const v of SUPPORTED_VERSIONS) {
    it(`accepts ${v}`, () => {
      expect(() => requireSupported(v)).not.toThrow();
    });
  }

  for (const v of ['0.1.0', '0.2.0', '1.2.0', '2.0.0', '']) {
    it(`refuses ${JSON.stringify(v)} with code 1 and names the supported versions`, () => {
      const e = thrown(() => requireSupported(v));
      expect(e.code).toBe(1);
      expect(e.details).toBe(`config is ${JSON.stringify(v)}, plugin supports ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]`);
    });
  }

  it("checks against a plugin's own narrower list when given one", () => {
    expect(() => requireSupported('1.0.0', ['1.0.0', '1.1.0'])).not.toThrow();
    expect(thrown(() => requireSupported('0.4.0', ['1.0.0', '1.1.0'])).details).toContain('["1.0.0", "1.1.0"]');
  });
});
