/**
 * The seam between the IPsec logic and the kernel: the few xfrm verbs
 * converge() uses. XfrmHandle (shared/netlink/xfrm/handle.ts) is the real one;
 * FakeXfrm (testkit/fake-xfrm.ts) keeps the tables in memory and raises the same
 * NetlinkErrors (EEXIST, ESRCH, ENOENT) so logic tests need no kernel.
 */
import type { XfrmHandle } from '../netlink/xfrm/handle';

export type XfrmOps = Pick<XfrmHandle, 'xfrmStateAdd' | 'xfrmStateDel' | 'xfrmStateList' | 'xfrmPolicyAdd' | 'xfrmPolicyUpdate' | 'xfrmPolicyDel' | 'xfrmPolicyList'>;
