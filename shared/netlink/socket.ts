/**
 * A netlink socket bound to one network namespace, with request/response
 * handling: sequence numbers, ACKs, multi-part dumps and kernel errors
 * (with the extended-ack message when the kernel sends one).
 *
 * The socket is created inside its namespace (native socketAt) and stays
 * bound to it, so using it never requires the thread to switch namespaces.
 */
import { native } from '../sys/native';
import {
  NETLINK_CAP_ACK,
  NETLINK_EXT_ACK,
  NLMSGERR_ATTR_MSG,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_HDRLEN,
  NLM_F_ACK,
  NLM_F_ACK_TLVS,
  NLM_F_CAPPED,
  NLM_F_DUMP,
  NLM_F_DUMP_INTR,
  NLM_F_REQUEST,
  SOL_NETLINK,
} from './consts';

const SOL_SOCKET = 1;
const SO_SNDBUFFORCE = 32;
import { Attr, Message, decodeAttrs, decodeMessages, encodeMessage, readString } from './codec';
import { NetlinkError } from './errors';

export class NetlinkSocket {
  private seq: number;
  private closed = false;

  private constructor(
    private readonly fd: number,
    readonly protocol: number,
  ) {
    // Start from a time-derived sequence so replies meant for an earlier
    // process that reused our port id can never be mistaken for ours.
    this.seq = (Date.now() & 0x7fffffff) >>> 0;
  }

  /** Open a socket of `protocol` in the namespace open at nsFd (the current one when omitted). */
  static open(protocol: number, nsFd?: number): NetlinkSocket {
    const binding = native();
    const fd = nsFd === undefined ? binding.socket(protocol) : binding.socketAt(nsFd, protocol);
    try {
      // Error messages from the kernel ("Unknown device type", "Invalid
      // prefix for given prefix length") are worth carrying to the user.
      binding.setsockoptInt(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1);
      // Do not echo whole requests back in error replies.
      binding.setsockoptInt(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
      binding.bind(fd, 0);
    } catch (e) {
      binding.close(fd);
      throw e;
    }
    return new NetlinkSocket(fd, protocol);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native().close(this.fd);
  }

  /**
   * Send one request and collect its replies. For a dump, every message up to
   * NLMSG_DONE; otherwise the messages before the ACK (usually none).
   * `op` names the operation in `ip` terms for error messages.
   */
  request(type: number, flags: number, familyHeader: Buffer, attrs: Attr[], op: string): Message[] {
    // A closed fd number is soon reused by another socket, maybe in another
    // namespace: a stale handle must fail, never act there.
    if (this.closed) throw new Error(`netlink socket closed (${op})`);
    const isDump = (flags & NLM_F_DUMP) === NLM_F_DUMP;
    for (let attempt = 0; ; attempt++) {
      const seq = this.nextSeq();
      const msg = encodeMessage({ type, flags: flags | NLM_F_REQUEST | NLM_F_ACK, seq, pid: 0 }, familyHeader, attrs);
      native().send(this.fd, msg);
      const { messages, interrupted } = this.collect(seq, isDump, op);
      // A dump that raced with a change is inconsistent; the kernel says so
      // with NLM_F_DUMP_INTR and the fix is to ask again.
      if (interrupted && attempt < 5) continue;
      return messages;
    }
  }

  /**
   * Send several messages in one datagram (an nfnetlink batch: the caller
   * frames it with BATCH_BEGIN/END) and wait until each message flagged
   * NLM_F_ACK has its answer (flag the last one: answers come in order).
   * An error to the first message (the batch header: the commit failed) or
   * to any other throws, `op(i)` naming the earliest failing message.
   */
  sendBatch(messages: Array<{ type: number; flags: number; familyHeader: Buffer; attrs: Attr[] }>, op: (i: number) => string): void {
    if (this.closed) throw new Error(`netlink socket closed (${op(0)})`);
    const seqs = messages.map(() => this.nextSeq());
    const bufs = messages.map((m, i) => encodeMessage({ type: m.type, flags: m.flags | NLM_F_REQUEST, seq: seqs[i], pid: 0 }, m.familyHeader, m.attrs));
    const data = Buffer.concat(bufs);
    // The kernel refuses a datagram larger than the send buffer (EMSGSIZE).
    if (data.length + 4096 > 212992) native().setsockoptInt(this.fd, SOL_SOCKET, SO_SNDBUFFORCE, data.length + 4096);
    native().send(this.fd, data);
    const index = new Map(seqs.map((seq, i) => [seq, i]));
    const waiting = new Set(seqs.filter((_, i) => messages[i].flags & NLM_F_ACK));
    // The kernel answers every message that fails, acked or not, and the
    // acked ones that succeed, in message order once the batch is done.
    let first: { i: number; err: NetlinkError } | undefined;
    while (waiting.size) {
      for (const m of decodeMessages(native().recv(this.fd))) {
        const i = index.get(m.seq);
        if (m.type !== NLMSG_ERROR || i === undefined) continue;
        waiting.delete(m.seq);
        const errno = -m.payload.readInt32LE(0);
        if (errno === 0) continue;
        if (i === 0) throw new NetlinkError(errno, op(0), extAckMessage(m));
        if (!first || i < first.i) first = { i, err: new NetlinkError(errno, op(i), extAckMessage(m)) };
      }
    }
    if (first) throw first.err;
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0;
    return this.seq;
  }

  private collect(seq: number, isDump: boolean, op: string): { messages: Message[]; interrupted: boolean } {
    const out: Message[] = [];
    let interrupted = false;
    for (;;) {
      const datagram = native().recv(this.fd);
      for (const m of decodeMessages(datagram)) {
        if (m.seq !== seq) continue; // stale reply to an earlier request
        if (m.flags & NLM_F_DUMP_INTR) interrupted = true;
        if (m.type === NLMSG_DONE) return { messages: out, interrupted };
        if (m.type === NLMSG_ERROR) {
          const errno = -m.payload.readInt32LE(0);
          if (errno === 0) {
            if (!isDump) return { messages: out, interrupted };
            continue;
          }
          throw new NetlinkError(errno, op, extAckMessage(m));
        }
        out.push(m);
      }
    }
  }
}

/** struct nlmsgerr { int error; struct nlmsghdr msg; } then, with NLM_F_ACK_TLVS, attributes */
function extAckMessage(m: Message): string | undefined {
  if (!(m.flags & NLM_F_ACK_TLVS)) return undefined;
  // With NETLINK_CAP_ACK the echoed request is only its header; without it
  // the whole request is echoed and its length is in that header.
  const echoed = m.flags & NLM_F_CAPPED ? NLMSG_HDRLEN : m.payload.readUInt32LE(4);
  const attrs = decodeAttrs(m.payload, 4 + echoed);
  return readString(attrs.get(NLMSGERR_ATTR_MSG));
}
