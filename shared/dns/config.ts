/**
 * The `dns` block of a network configuration (bridge, overlay, macvlan,
 * ipvlan). It keeps the CNI spec's own DNS keys (nameservers, domain,
 * search, options: what the runtime writes into resolv.conf) and adds ours:
 * `enabled` turns on name resolution on the network (off by default, as
 * the reference plugins have none), `upstream` overrides the host's
 * resolvers for forwarded names, `dataDir` the records directory.
 */
import { z } from 'zod';
import { isIp } from '../netlink/ipaddr';
import { RUN_ROOT } from '../paths';

export const DEFAULT_DOMAIN = 'dns.cni-ts';
/** volatile, like the containers it names: /run/cni-ts/dns */
export const DEFAULT_DATA_DIR = `${RUN_ROOT}/dns`;

/** "10.0.0.1", "10.0.0.1:5353", "::1", "[::1]:5353" */
export function parseHostPort(s: string): { host: string; port: number } | undefined {
  let host = s;
  let port = 53;
  const v6 = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(s);
  const v4 = /^([0-9.]+):(\d{1,5})$/.exec(s);
  if (v6) {
    host = v6[1];
    if (v6[2]) port = Number(v6[2]);
  } else if (v4) {
    host = v4[1];
    port = Number(v4[2]);
  }
  if (!isIp(host) || port < 1 || port > 65535) return undefined;
  return { host, port };
}

const label = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/i;
/** A DNS name of letters, digits, '-' and '_', at most 253 characters. */
export function isDnsName(s: string): boolean {
  return s.length > 0 && s.length <= 253 && s.split('.').every((l) => label.test(l));
}

export const dnsConf = z
  .object({
    enabled: z.boolean().default(false),
    domain: z.string().refine(isDnsName, 'dns.domain must be a DNS name').default(DEFAULT_DOMAIN),
    upstream: z
      .array(z.string().refine((s) => parseHostPort(s) !== undefined, 'dns.upstream entries are IP or IP:port ([v6]:port)'))
      .max(8)
      .optional(),
    dataDir: z.string().startsWith('/', 'dns.dataDir must be absolute').optional(),
    // the spec's keys, passed into the result
    nameservers: z.array(z.string()).optional(),
    search: z.array(z.string()).optional(),
    options: z.array(z.string()).optional(),
  })
  .passthrough();

export type DnsConf = z.infer<typeof dnsConf>;
