/**
 * The internal Result type, in the spec 1.1.0 shape (SPEC.md section 5,
 * "ADD Success"). Plugins build and read only this shape; result.ts converts
 * to and from the wire shape of whatever version the runtime asked for.
 */

export interface Interface {
  name: string;
  mac?: string;
  /** 1.1.0 only */
  mtu?: number;
  /** netns path for interfaces inside the container; absent for host interfaces */
  sandbox?: string;
  /** 1.1.0 only */
  socketPath?: string;
  /** 1.1.0 only */
  pciID?: string;
}

export interface IPConfig {
  /** CIDR: the address and its prefix length, e.g. "10.1.0.5/16" */
  address: string;
  gateway?: string;
  /** index into Result.interfaces */
  interface?: number;
}

export interface Route {
  /** CIDR */
  dst: string;
  gw?: string;
  /** 1.1.0 only, like advmss, priority, table and scope */
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  /** global (0), link (253), host (254) */
  scope?: number;
}

export interface DNS {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

export interface Result {
  cniVersion: string;
  interfaces?: Interface[];
  ips?: IPConfig[];
  routes?: Route[];
  dns?: DNS;
}

/** A GC call's list of attachments that are still in use. */
export interface Attachment {
  containerID: string;
  ifname: string;
}
