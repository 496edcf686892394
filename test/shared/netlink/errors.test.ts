import { describe, expect, it } from 'vitest';
import { EEXIST, ENODEV, ENOENT, EADDRNOTAVAIL, ESRCH, NetlinkError, errnoName, isNetlinkError, isNotFound } from '../../../shared/netlink/errors';

describe('NetlinkError', () => {
  it('keeps the errno, its symbolic code, the operation and the kernel message', () => {
    const e = new NetlinkError(22, 'ip link set eth0 mtu 10', 'mtu less than device minimum');
    expect(e).toBeInstanceOf(Error);
    expect(e).toMatchObject({ name: 'NetlinkError', errno: 22, code: 'EINVAL', op: 'ip link set eth0 mtu 10', kernelMessage: 'mtu less than device minimum' });
    expect(e.message).toBe('ip link set eth0 mtu 10: EINVAL (mtu less than device minimum)');
  });

  it('leaves the parenthesised part out when the kernel gave no message', () => {
    expect(new NetlinkError(EEXIST, 'ip link add br0 type bridge').message).toBe('ip link add br0 type bridge: EEXIST');
  });

  it('names errnos it has no symbol for by number', () => {
    expect(errnoName(ENODEV)).toBe('ENODEV');
    expect(errnoName(4000)).toBe('E4000');
  });
});

describe('isNetlinkError and isNotFound', () => {
  it('match a NetlinkError by any of the given errnos, or by type alone', () => {
    const e = new NetlinkError(EEXIST, 'x');
    expect(isNetlinkError(e)).toBe(true);
    expect(isNetlinkError(e, ENODEV, EEXIST)).toBe(true);
    expect(isNetlinkError(e, ENODEV)).toBe(false);
    expect(isNetlinkError(Object.assign(new Error('x'), { errno: EEXIST }), EEXIST)).toBe(false);
  });

  it('treat every kernel way of saying "not there" as not found, and nothing else', () => {
    for (const errno of [ENODEV, ENOENT, ESRCH, EADDRNOTAVAIL]) expect(isNotFound(new NetlinkError(errno, 'x')), errnoName(errno)).toBe(true);
    expect(isNotFound(new NetlinkError(EEXIST, 'x'))).toBe(false);
    expect(isNotFound(new Error('ENODEV'))).toBe(false);
    expect(isNotFound(undefined)).toBe(false);
  });
});
