/**
 * An inet socket that lives in another network namespace, as a Node socket.
 *
 * setns(2) moves one thread, and Node creates its sockets asynchronously,
 * so `dgram.createSocket` or `net.createServer` can never be pointed at a
 * namespace. The native binding makes the socket on the JavaScript thread
 * instead, inside the namespace and already bound (inetSocketAt), and Node
 * wraps the ready descriptor: dgram `bind({fd})`, net.Server
 * `listen({fd})`. The socket stays in the namespace it was made in for its
 * whole life; everything else about it is an ordinary Node socket.
 */
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import { native } from './native';

export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;

/** A descriptor of an inet socket made and bound inside the namespace open at nsFd (`ip netns exec NS` + socket + bind). */
export function inetSocketAt(nsFd: number, proto: 'udp' | 'tcp', address: string, port: number): number {
  return native().inetSocketAt(nsFd, proto === 'udp' ? SOCK_DGRAM : SOCK_STREAM, address, port);
}

/** A UDP socket bound to address:port inside the namespace open at nsFd; resolves once Node has taken it over. */
export function udpSocketAt(nsFd: number, address: string, port: number): Promise<dgram.Socket> {
  const fd = inetSocketAt(nsFd, 'udp', address, port);
  const sock = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
  return new Promise((resolve, reject) => {
    sock.once('error', (e) => {
      // Node owns the descriptor once it wrapped it: closing the socket closes it (never close(fd) twice)
      try {
        sock.close();
      } catch {
        /* not open */
      }
      reject(e);
    });
    sock.bind({ fd }, () => {
      sock.removeAllListeners('error');
      resolve(sock);
    });
  });
}

/** A listening TCP server on address:port inside the namespace open at nsFd; resolves once it listens. */
export function tcpServerAt(nsFd: number, address: string, port: number, server: net.Server = net.createServer()): Promise<net.Server> {
  const fd = inetSocketAt(nsFd, 'tcp', address, port);
  return new Promise((resolve, reject) => {
    const failed = (e: Error) => {
      server.close();
      reject(e);
    };
    server.once('error', failed);
    server.listen({ fd }, () => {
      server.removeListener('error', failed);
      resolve(server);
    });
  });
}
