/**
 * cluster-ipam as an executable: the verbs of plugin.ts behind the skel.
 * The packaged binary reaches this through cmd/main.ts under the name
 * "cluster-ipam".
 */
import type { z } from 'zod';
import { type Plugin } from '../shared/cni/skel';
import { netConfSchema } from './config';
import { ipamAdd, ipamCheck, ipamDel, ipamGc, ipamStatus } from './plugin';

type Conf = z.infer<typeof netConfSchema>;

export const plugin: Plugin<Conf> = {
  about: 'cluster-ipam: IP address management, local store or etcd (cni-ts)',
  // The skel reports shape errors with every key path; plugin.ts then checks
  // what a schema cannot (CIDRs, bounds, overlaps).
  schema: netConfSchema,
  add: (ctx) => ipamAdd(ctx),
  del: (ctx) => ipamDel(ctx),
  check: (ctx) => ipamCheck(ctx),
  gc: async (ctx, valid) => {
    await ipamGc(ctx, valid);
  },
  status: (ctx) => ipamStatus(ctx),
};
