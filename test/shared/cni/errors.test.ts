import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CniError, ErrorCode, invalidEnv, toCniError, unsupportedField } from '../../../shared/cni/errors';

describe('ErrorCode', () => {
  it('uses the numbers of the spec and the reference library', () => {
    expect(ErrorCode).toEqual({
      IncompatibleVersion: 1,
      UnsupportedField: 2,
      UnknownContainer: 3,
      InvalidEnvironment: 4,
      IOFailure: 5,
      DecodingFailure: 6,
      InvalidNetworkConfig: 7,
      InvalidNetns: 8,
      TryAgainLater: 11,
      PluginNotAvailable: 50,
      PluginNotAvailableLimited: 51,
      Internal: 999,
    });
  });
});

describe('CniError', () => {
  it('renders the spec error object with the given cniVersion', () => {
    const e = new CniError(7, 'Invalid Configuration', 'Network 192.168.0.0/31 too small to allocate from.');
    expect(e.toJSON('1.1.0')).toEqual({
      cniVersion: '1.1.0',
      code: 7,
      msg: 'Invalid Configuration',
      details: 'Network 192.168.0.0/31 too small to allocate from.',
    });
    expect(JSON.parse(JSON.stringify(e.toJSON('0.4.0')))).toEqual({ ...e.toJSON('1.1.0'), cniVersion: '0.4.0' });
  });

  it('leaves details out of the JSON when there are none', () => {
    expect(new CniError(11, 'busy').toJSON('1.0.0')).toStrictEqual({ cniVersion: '1.0.0', code: 11, msg: 'busy' });
  });

  it('joins msg and details in its message the way the reference does', () => {
    expect(new CniError(1, 'incompatible CNI versions', 'config is "9.9.9"').message).toBe(
      'incompatible CNI versions; config is "9.9.9"',
    );
    expect(new CniError(3, 'gone').message).toBe('gone');
  });

  it('keeps plugin-specific codes of 100 and above', () => {
    const e = new CniError(101, 'pool exhausted');
    expect(toCniError(e).code).toBe(101);
    expect(e.toJSON('1.1.0').code).toBe(101);
  });
});

describe('toCniError', () => {
  it('passes a CniError through unchanged', () => {
    const e = new CniError(11, 'try later');
    expect(toCniError(e)).toBe(e);
  });

  it('maps a plain Error to 999 and keeps its message', () => {
    const e = toCniError(new Error('something broke'));
    expect(e).toBeInstanceOf(CniError);
    expect(e.code).toBe(999);
    expect(e.msg).toBe('something broke');
    expect(e.details).toBeUndefined();
  });

  it('keeps the errno name of a netlink error in details', () => {
    const netlinkError = Object.assign(new Error('RTM_NEWLINK: File exists'), { errno: 17, syscall: 'netlink' });
    const e = toCniError(netlinkError);
    expect(e.code).toBe(999);
    expect(e.msg).toBe('RTM_NEWLINK: File exists');
    expect(e.details).toBe('EEXIST (errno 17) in netlink');
  });

  it("names node's own system errors by their code", () => {
    let thrown: unknown;
    try {
      fs.openSync('/nonexistent/cni-test-file', 'r');
    } catch (err) {
      thrown = err;
    }
    const e = toCniError(thrown);
    expect(e.code).toBe(999);
    expect(e.details).toBe('ENOENT (errno 2) in open');
  });

  it('maps thrown non-errors to 999 with a readable message', () => {
    expect(toCniError('plain string')).toMatchObject({ code: 999, msg: 'plain string' });
    expect(toCniError({ why: 'object' })).toMatchObject({ code: 999, msg: '{"why":"object"}' });
    expect(toCniError(undefined)).toMatchObject({ code: 999, msg: 'undefined' });
  });
});

describe('helpers', () => {
  it('unsupportedField gives code 2 and names the key and the value', () => {
    const e = unsupportedField('ipMasq', true);
    expect(e.code).toBe(2);
    expect(e.msg).toContain('ipMasq');
    expect(e.msg).toContain('true');
    expect(unsupportedField('mode', 'passthru').msg).toContain('"passthru"');
  });

  it('invalidEnv gives code 4 and names the variable', () => {
    const e = invalidEnv('CNI_IFNAME', 'too long');
    expect(e.code).toBe(4);
    expect(e.msg).toBe('CNI_IFNAME: too long');
  });
});
