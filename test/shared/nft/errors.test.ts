import { describe, expect, it } from 'vitest';
import { NftError, formatNftStderr, isAlreadyExists, isBusy, isNotFound, kindOf, parseNftFailure } from '../../../shared/nft/errors';

// stderr texts as nft 1.0.6 printed them on this machine
const script = ['add table inet t', 'add chain inet t c', 'delete chain inet t nosuch', 'add rule inet t c accept'].join('\n');

describe('parseNftFailure', () => {
  it("reads the kind, line and command of a kernel error from nft's stderr", () => {
    const stderr = '/dev/stdin:2:28-30: Error: Could not process rule: Device or resource busy\nadd chain inet t c\n                           ^^^\n';
    const e = parseNftFailure(stderr, 1, script);
    expect(e).toBeInstanceOf(NftError);
    expect(e.kind).toBe('busy');
    expect(e.detail).toBe('Device or resource busy');
    expect(e.line).toBe(2);
    expect(e.command).toBe('add chain inet t c');
    expect(e.exitCode).toBe(1);
    expect(e.stderr).toBe(stderr);
    expect(e.message).toBe('nft: Device or resource busy (in "add chain inet t c")');
  });

  it("reads a userspace error with nft's suggestion as not-found", () => {
    const stderr =
      "/dev/stdin:3:28-33: Error: No such file or directory; did you mean chain ‘c’ in table inet ‘t’?\ndelete chain inet t nosuch\n                           ^^^^^^\n";
    const e = parseNftFailure(stderr, 1, script);
    expect(e.kind).toBe('not-found');
    expect(e.command).toBe('delete chain inet t nosuch');
  });

  it('takes the first of several syntax errors', () => {
    const stderr = [
      '/dev/stdin:3:25-27: Error: syntax error, unexpected fwd, expecting string',
      'add chain inet cni_ts_x fwd',
      '                        ^^^',
      '/dev/stdin:4:24-26: Error: syntax error, unexpected fwd, expecting string',
      'add rule inet cni_ts_x fwd accept',
      '                       ^^^',
      '',
    ].join('\n');
    const e = parseNftFailure(stderr, 1, script);
    expect(e.kind).toBe('invalid');
    expect(e.line).toBe(3);
    expect(e.detail).toBe('syntax error, unexpected fwd, expecting string');
  });

  it('reads an error without a location, as `nft list` prints it', () => {
    const e = parseNftFailure('Error: No such file or directory\nlist table inet nosuch\n                ^^^^^^\n', 1);
    expect(e.kind).toBe('not-found');
    expect(e.line).toBeUndefined();
    expect(e.command).toBeUndefined();
  });

  it('keeps unrecognised stderr whole, as kind other', () => {
    const e = parseNftFailure('netlink: Error: cache initialization failed: Operation not permitted\n', 1);
    expect(e.kind).toBe('other');
    expect(e.detail).toBe('netlink: Error: cache initialization failed: Operation not permitted');
  });
});

describe('kindOf', () => {
  it('maps the messages nft prints to kinds', () => {
    expect(kindOf('No such file or directory')).toBe('not-found');
    expect(kindOf('element does not exist')).toBe('not-found');
    expect(kindOf('File exists')).toBe('exists');
    expect(kindOf('Device or resource busy')).toBe('busy');
    expect(kindOf('Operation not supported')).toBe('not-supported');
    expect(kindOf('Too many links')).toBe('invalid');
    expect(kindOf('comment too long, 128 characters maximum allowed')).toBe('invalid');
    expect(kindOf('invalid priority expression value in this context.')).toBe('invalid');
    expect(kindOf('Cannot allocate memory')).toBe('other');
  });
});

describe('error predicates', () => {
  it('recognise only NftErrors of their kind', () => {
    const notFound = new NftError('not-found', 'No such file or directory', '', 1);
    expect(isNotFound(notFound)).toBe(true);
    expect(isAlreadyExists(notFound)).toBe(false);
    expect(isBusy(new NftError('busy', 'Device or resource busy', '', 1))).toBe(true);
    expect(isAlreadyExists(new NftError('exists', 'File exists', '', 1))).toBe(true);
    expect(isNotFound(Object.assign(new Error('No such file or directory'), { kind: 'not-found' }))).toBe(false);
  });
});

describe('formatNftStderr', () => {
  it("imitates nft's layout, so parseNftFailure reads the fake's errors like the real ones", () => {
    const stderr = formatNftStderr(4, 'add rule inet t c accept', 'No such file or directory', true);
    expect(stderr).toBe('/dev/stdin:4:1-24: Error: Could not process rule: No such file or directory\nadd rule inet t c accept\n^^^^^^^^^^^^^^^^^^^^^^^^\n');
    const e = parseNftFailure(stderr, 1, script);
    expect([e.kind, e.line, e.command]).toEqual(['not-found', 4, 'add rule inet t c accept']);
  });
});
