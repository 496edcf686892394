/**
 * One UDP exchange: a datagram out, the first reply `accept` takes back.
 * The resolver's upstream forwarding and the one-question client (CHECK,
 * tests, the benchmark) share it, so both close their socket on every path
 * and give up at the same kind of deadline.
 */
import * as dgram from 'node:dgram';

export interface Exchange {
  readonly host: string;
  readonly port: number;
  /** source address to send from (the client asks from inside a network) */
  readonly from?: string;
  readonly timeoutMs: number;
}

/**
 * Resolves with what `accept` returns for the first datagram it takes (it
 * returns undefined to ignore one: wrong sender, wrong ID), or undefined on
 * timeout or a socket error; never rejects.
 */
export function udpExchange(packet: Buffer, to: Exchange, accept: (msg: Buffer, from: dgram.RemoteInfo) => Buffer | undefined): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const sock = dgram.createSocket(to.host.includes(':') ? 'udp6' : 'udp4');
    let done = false;
    const finish = (r: Buffer | undefined): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.close();
      resolve(r);
    };
    const timer = setTimeout(() => finish(undefined), to.timeoutMs);
    sock.on('error', () => finish(undefined));
    sock.on('message', (msg, rinfo) => {
      const r = accept(msg, rinfo);
      if (r) finish(r);
    });
    const send = (): void => sock.send(packet, to.port, to.host, (err) => err && finish(undefined));
    if (to.from) sock.bind({ address: to.from, port: 0 }, send);
    else send();
  });
}
