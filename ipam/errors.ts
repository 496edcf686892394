/**
 * cluster-ipam's own error codes. The spec leaves codes from 100 up to each
 * plugin; everything else IPAM reports uses the spec's well-known codes
 * through the one CniError type (bad configuration is 7, ErrorCode.InvalidNetworkConfig).
 */
import { CniError } from '../shared/cni/errors';

export const IpamErrorCode = {
  /** Every allocatable address of a range set is taken. Not transient in
   *  general (it lasts until something is released), hence not 11. */
  NoFreeAddress: 100,
  /** A specifically requested address (ips capability, CNI_ARGS IP=,
   *  args.cni.ips) cannot be given: held by another owner, the gateway, the
   *  network or broadcast address, or outside every configured range. */
  AddressUnavailable: 101,
  /** CHECK found no allocation for this container and interface. */
  AllocationMissing: 102,
} as const;

export function noFreeAddress(rangeSet: number, description: string): CniError {
  return new CniError(
    IpamErrorCode.NoFreeAddress,
    `no free IP address in range set ${rangeSet}`,
    `every allocatable address of ${description} is in use; release some (DEL or GC) or widen the range`,
  );
}

export function addressUnavailable(msg: string, details?: string): CniError {
  return new CniError(IpamErrorCode.AddressUnavailable, msg, details);
}
