/*
 * The only native code in netlink-ts: thin wrappers over the system calls
 * that Node cannot make itself. Everything above the socket (message
 * framing, attributes, rtnetlink and xfrm semantics) lives in TypeScript.
 *
 * All calls are synchronous and run on the JavaScript thread. That matters
 * for setns(2): it changes the namespace of the calling thread only, so the
 * thread that enters a namespace must be the one that leaves it, and no
 * libuv worker thread is ever affected.
 *
 * Errors are thrown as JS Error objects with `errno` (positive number) and
 * `syscall` set, so the TypeScript layer can map them to typed errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <node_api.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define RECV_DEFAULT 65536
#ifndef IPV6_FREEBIND
#define IPV6_FREEBIND 78 /* linux/in6.h; older libc headers lack it */
#endif

static napi_value throw_errno(napi_env env, const char *syscall, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(err));
  napi_value message, error, errno_value, syscall_value;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, NULL, message, &error);
  napi_create_int32(env, err, &errno_value);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value);
  napi_set_named_property(env, error, "errno", errno_value);
  napi_set_named_property(env, error, "syscall", syscall_value);
  napi_throw(env, error);
  return NULL;
}

static int arg_int(napi_env env, napi_callback_info info, size_t want, int32_t *out) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  for (size_t i = 0; i < want; i++) {
    if (i >= argc || napi_get_value_int32(env, argv[i], &out[i]) != napi_ok) {
      napi_throw_type_error(env, NULL, "expected integer arguments");
      return -1;
    }
  }
  return 0;
}

static napi_value make_int(napi_env env, int64_t v) {
  napi_value out;
  napi_create_int64(env, v, &out);
  return out;
}

/* socket(protocol) -> fd: an AF_NETLINK raw socket in the thread's current netns. */
static napi_value nl_socket(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (arg_int(env, info, 1, a)) return NULL;
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, a[0]);
  if (fd < 0) return throw_errno(env, "socket", errno);
  return make_int(env, fd);
}

/* The three calls that make a socket inside another network namespace
 * (socketAt, inetSocketAt, netnsCookie) go there and back through these
 * (netnsCreate, which unshares instead of entering, comes back the same way):
 * enter_netns returns the descriptor of home (or -1 with a JavaScript error
 * thrown, nothing changed), leave_netns returns and closes it. */
static int enter_netns(napi_env env, int target) {
  int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (home < 0) {
    throw_errno(env, "open", errno);
    return -1;
  }
  if (setns(target, CLONE_NEWNET) < 0) {
    int e = errno;
    close(home);
    throw_errno(env, "setns", e);
    return -1;
  }
  return home;
}

static void leave_netns(int home) {
  if (setns(home, CLONE_NEWNET) < 0) {
    /* Cannot return to the original namespace: continuing would run every
     * later step in the wrong namespace, so fail hard. */
    fprintf(stderr, "netlink-ts: cannot return to original netns: %s\n", strerror(errno));
    abort();
  }
  close(home);
}

/* socketAt(nsFd, protocol) -> fd: a netlink socket created inside another
 * network namespace. A socket stays bound to the namespace it was created in,
 * so after this returns the thread is back home and the socket still talks to
 * the target namespace's kernel state. */
static napi_value nl_socket_at(napi_env env, napi_callback_info info) {
  int32_t a[2];
  if (arg_int(env, info, 2, a)) return NULL;
  int home = enter_netns(env, a[0]);
  if (home < 0) return NULL;
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, a[1]);
  int socket_errno = errno;
  leave_netns(home);
  if (fd < 0) return throw_errno(env, "socket", socket_errno);
  return make_int(env, fd);
}

/* inetSocketAt(nsFd, type, address, port) -> fd: an inet socket (type
 * SOCK_DGRAM or SOCK_STREAM, IPv4 or IPv6 by the address) created AND bound
 * inside the network namespace open at nsFd, then the thread goes home. The
 * resolver's listeners at 127.0.0.11 in a container's namespace are made
 * this way: setns is per thread and Node creates its sockets asynchronously
 * (on whatever thread libuv likes), so the socket is made here, on the
 * JavaScript thread, and handed to dgram/net as a ready descriptor. Bound
 * here too: a socket's namespace is fixed at creation, but binding in the
 * same step keeps the address check (is it local?) in that namespace.
 * IP_FREEBIND: the container's loopback may come up after ADD (the runtime
 * raises it), and a freebind socket starts receiving once it does.
 * Non-blocking and close-on-exec, as libuv wants its descriptors. */
static napi_value nl_inet_socket_at(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t ns_fd, type, port;
  char address[64];
  size_t alen;
  if (argc < 4 || napi_get_value_int32(env, argv[0], &ns_fd) != napi_ok || napi_get_value_int32(env, argv[1], &type) != napi_ok ||
      napi_get_value_string_utf8(env, argv[2], address, sizeof address, &alen) != napi_ok || napi_get_value_int32(env, argv[3], &port) != napi_ok ||
      (type != SOCK_DGRAM && type != SOCK_STREAM) || port < 0 || port > 65535) {
    napi_throw_type_error(env, NULL, "inetSocketAt(nsFd, SOCK_DGRAM|SOCK_STREAM, address, port)");
    return NULL;
  }
  struct sockaddr_storage ss;
  socklen_t sslen;
  memset(&ss, 0, sizeof ss);
  int family;
  struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, address, &sin->sin_addr) == 1) {
    family = AF_INET;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    sslen = sizeof *sin;
  } else if (inet_pton(AF_INET6, address, &sin6->sin6_addr) == 1) {
    family = AF_INET6;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)port);
    sslen = sizeof *sin6;
  } else {
    napi_throw_type_error(env, NULL, "inetSocketAt: not an IP address");
    return NULL;
  }
  int home = enter_netns(env, ns_fd);
  if (home < 0) return NULL;
  const char *failed = NULL;
  int fail_errno = 0;
  int fd = socket(family, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    failed = "socket";
    fail_errno = errno;
  } else {
    int one = 1;
    if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (setsockopt(fd, family == AF_INET ? IPPROTO_IP : IPPROTO_IPV6, family == AF_INET ? IP_FREEBIND : IPV6_FREEBIND, &one, sizeof one) < 0) {
      failed = "setsockopt";
      fail_errno = errno;
    } else if (bind(fd, (struct sockaddr *)&ss, sslen) < 0) {
      failed = "bind";
      fail_errno = errno;
    }
    if (failed) close(fd);
  }
  leave_netns(home);
  if (failed) return throw_errno(env, failed, fail_errno);
  return make_int(env, fd);
}

/* bind(fd, groups) -> portId assigned by the kernel */
static napi_value nl_bind(napi_env env, napi_callback_info info) {
  int32_t a[2];
  if (arg_int(env, info, 2, a)) return NULL;
  struct sockaddr_nl addr;
  memset(&addr, 0, sizeof addr);
  addr.nl_family = AF_NETLINK;
  addr.nl_groups = (uint32_t)a[1];
  if (bind(a[0], (struct sockaddr *)&addr, sizeof addr) < 0) return throw_errno(env, "bind", errno);
  socklen_t len = sizeof addr;
  if (getsockname(a[0], (struct sockaddr *)&addr, &len) < 0) return throw_errno(env, "getsockname", errno);
  return make_int(env, addr.nl_pid);
}

/* netnsCookie(nsFd) -> bigint: the namespace's SO_NETNS_COOKIE, read from a
 * socket created inside it. Unlike the nsfs inode, which the kernel reuses
 * once a namespace is freed, the cookie is never handed out twice during a
 * boot: state keyed by it can never be mistaken for a later namespace's. */
#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif
static napi_value nl_netns_cookie(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (arg_int(env, info, 1, a)) return NULL;
  int home = enter_netns(env, a[0]);
  if (home < 0) return NULL;
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0);
  int socket_errno = errno;
  leave_netns(home);
  if (fd < 0) return throw_errno(env, "socket", socket_errno);
  uint64_t cookie = 0;
  socklen_t len = sizeof cookie;
  int rc = getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len);
  int e = errno;
  close(fd);
  if (rc < 0) return throw_errno(env, "getsockopt", e);
  napi_value out;
  napi_create_bigint_uint64(env, cookie, &out);
  return out;
}

/* setsockoptInt(fd, level, option, value) */
static napi_value nl_setsockopt_int(napi_env env, napi_callback_info info) {
  int32_t a[4];
  if (arg_int(env, info, 4, a)) return NULL;
  int value = a[3];
  if (setsockopt(a[0], a[1], a[2], &value, sizeof value) < 0) return throw_errno(env, "setsockopt", errno);
  return NULL;
}

/* send(fd, buffer) -> bytes sent, to the kernel (port 0) */
static napi_value nl_send(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  void *data;
  size_t len;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "send(fd, buffer)");
    return NULL;
  }
  struct sockaddr_nl kernel;
  memset(&kernel, 0, sizeof kernel);
  kernel.nl_family = AF_NETLINK;
  ssize_t n;
  do {
    n = sendto(fd, data, len, 0, (struct sockaddr *)&kernel, sizeof kernel);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return throw_errno(env, "sendto", errno);
  return make_int(env, n);
}

/* recv(fd) -> Buffer holding one datagram (possibly several netlink messages).
 * Peeks first so a datagram larger than the default buffer is never truncated. */
static napi_value nl_recv(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (arg_int(env, info, 1, a)) return NULL;
  ssize_t want;
  char probe[1];
  do {
    want = recv(a[0], probe, sizeof probe, MSG_PEEK | MSG_TRUNC);
  } while (want < 0 && errno == EINTR);
  if (want < 0) return throw_errno(env, "recv", errno);
  size_t cap = want > RECV_DEFAULT ? (size_t)want : RECV_DEFAULT;
  void *buf;
  napi_value out;
  char *tmp = malloc(cap);
  if (!tmp) return throw_errno(env, "malloc", ENOMEM);
  ssize_t n;
  do {
    n = recv(a[0], tmp, cap, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    int e = errno;
    free(tmp);
    return throw_errno(env, "recv", e);
  }
  napi_create_buffer_copy(env, (size_t)n, tmp, &buf, &out);
  free(tmp);
  return out;
}

/* close(fd) */
static napi_value nl_close(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (arg_int(env, info, 1, a)) return NULL;
  if (close(a[0]) < 0 && errno != EINTR) return throw_errno(env, "close", errno);
  return NULL;
}

/* setns(fd, nstype): move the calling (JavaScript) thread into a namespace. */
static napi_value nl_setns(napi_env env, napi_callback_info info) {
  int32_t a[2];
  if (arg_int(env, info, 2, a)) return NULL;
  if (setns(a[0], a[1]) < 0) return throw_errno(env, "setns", errno);
  return NULL;
}

/* flock(fd, operation): advisory whole-file lock (LOCK_SH=1, LOCK_EX=2,
 * LOCK_NB=4, LOCK_UN=8). Node has no flock; state files (IPAM allocations,
 * reference counts) need a lock that the kernel drops when a plugin process
 * dies, so a crashed ADD can never leave the store locked. Blocks the thread
 * while waiting, which is what a one-shot plugin wants. */
static napi_value nl_flock(napi_env env, napi_callback_info info) {
  int32_t a[2];
  if (arg_int(env, info, 2, a)) return NULL;
  int r;
  do {
    r = flock(a[0], a[1]);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, "flock", errno);
  return NULL;
}

/* nsType(fd) -> CLONE_NEW* constant of the namespace open at fd
 * (ioctl NS_GET_NSTYPE), so a UTS or mount namespace file passed as
 * CNI_NETNS is told apart from a network namespace without parsing /proc. */
#define NS_GET_NSTYPE_IOCTL 0xb703
static napi_value nl_ns_type(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (arg_int(env, info, 1, a)) return NULL;
  int r = ioctl(a[0], NS_GET_NSTYPE_IOCTL);
  if (r < 0) return throw_errno(env, "ioctl(NS_GET_NSTYPE)", errno);
  return make_int(env, r);
}

/* netnsCreate(path): a new network namespace pinned at path (an existing
 * empty file), as `ip netns add` does: unshare(2) moves the calling thread
 * into a fresh namespace, /proc/thread-self/ns/net is bind-mounted onto
 * path, and the thread goes back home. The pin keeps the namespace alive
 * with no process in it. */
static napi_value nl_netns_create(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char target[4096];
  size_t len = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], target, sizeof target, &len) != napi_ok || len == 0) {
    napi_throw_type_error(env, NULL, "netnsCreate(path)");
    return NULL;
  }
  int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (home < 0) return throw_errno(env, "open", errno);
  if (unshare(CLONE_NEWNET) < 0) {
    int e = errno;
    close(home);
    return throw_errno(env, "unshare", e);
  }
  int mount_errno = 0;
  if (mount("/proc/thread-self/ns/net", target, "none", MS_BIND, NULL) < 0) mount_errno = errno;
  leave_netns(home);
  if (mount_errno) return throw_errno(env, "mount", mount_errno);
  return NULL;
}

/* umount(path, flags): umount2(2); MNT_DETACH = 2 unpins a namespace even
 * while a process still holds it (it lives on until that process leaves). */
static napi_value nl_umount(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char target[4096];
  size_t len = 0;
  int32_t flags = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || napi_get_value_string_utf8(env, argv[0], target, sizeof target, &len) != napi_ok ||
      napi_get_value_int32(env, argv[1], &flags) != napi_ok) {
    napi_throw_type_error(env, NULL, "umount(path, flags)");
    return NULL;
  }
  if (umount2(target, flags) < 0) return throw_errno(env, "umount2", errno);
  return NULL;
}

/* peerUid(fd) -> uid of the process at the other end of a unix socket
 * (SO_PEERCRED): the plugin daemon serves root alone, whatever the socket
 * file's mode says. */
static napi_value nl_peer_uid(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (arg_int(env, info, 1, a)) return NULL;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(a[0], SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return throw_errno(env, "getsockopt(SO_PEERCRED)", errno);
  return make_int(env, cred.uid);
}

/* peerCred(fd) -> {pid, uid, gid} of the process that connected a unix
 * socket (SO_PEERCRED), the pid as this process's pid namespace sees it
 * (0 when it cannot see it). */
static napi_value nl_peer_cred(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (arg_int(env, info, 1, a)) return NULL;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(a[0], SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return throw_errno(env, "getsockopt(SO_PEERCRED)", errno);
  napi_value out;
  napi_create_object(env, &out);
  napi_set_named_property(env, out, "pid", make_int(env, cred.pid));
  napi_set_named_property(env, out, "uid", make_int(env, cred.uid));
  napi_set_named_property(env, out, "gid", make_int(env, cred.gid));
  return out;
}

/* peerPidfd(fd) -> a pidfd for the very process that connected (SO_PEERPIDFD,
 * Linux 6.5): unlike a pid, it can never come to name another process. */
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
static napi_value nl_peer_pidfd(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (arg_int(env, info, 1, a)) return NULL;
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (getsockopt(a[0], SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0) return throw_errno(env, "getsockopt(SO_PEERPIDFD)", errno);
  return make_int(env, pidfd);
}

/* pidfdOpen(pid) -> pidfd (pidfd_open(2), Linux 5.3), close-on-exec. */
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
static napi_value nl_pidfd_open(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (arg_int(env, info, 1, a)) return NULL;
  long fd = syscall(SYS_pidfd_open, (pid_t)a[0], 0);
  if (fd < 0) return throw_errno(env, "pidfd_open", errno);
  return make_int(env, fd);
}

/* pidfdAlive(pidfd) -> false once the process has exited (pidfd_send_signal
 * with signal 0: ESRCH). A zombie counts as alive: its pid is not reused
 * until it is reaped. */
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
static napi_value nl_pidfd_alive(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (arg_int(env, info, 1, a)) return NULL;
  napi_value out;
  if (syscall(SYS_pidfd_send_signal, a[0], 0, NULL, 0) == 0) {
    napi_get_boolean(env, true, &out);
    return out;
  }
  if (errno != ESRCH) return throw_errno(env, "pidfd_send_signal", errno);
  napi_get_boolean(env, false, &out);
  return out;
}

/* pidfdNsInode(pidfd, which) -> inode (BigInt) of one of the process's
 * namespaces, asked of the pidfd itself (PIDFD_GET_*_NAMESPACE, Linux 6.11):
 * which = 3 mount, 4 network, 9 user. ESRCH once the process has exited;
 * ENOTTY on older kernels (the caller then reads /proc/PID/ns). */
#define PIDFS_IOCTL_MAGIC 0xFF
static napi_value nl_pidfd_ns_inode(napi_env env, napi_callback_info info) {
  int32_t a[2];
  if (arg_int(env, info, 2, a)) return NULL;
  if (a[1] != 3 && a[1] != 4 && a[1] != 9) {
    napi_throw_range_error(env, NULL, "pidfdNsInode: which must be 3, 4 or 9");
    return NULL;
  }
  int ns = ioctl(a[0], _IO(PIDFS_IOCTL_MAGIC, a[1]), 0);
  if (ns < 0) return throw_errno(env, "ioctl(PIDFD_GET_NAMESPACE)", errno);
  struct stat st;
  int r = fstat(ns, &st);
  int e = errno;
  close(ns);
  if (r < 0) return throw_errno(env, "fstat", e);
  napi_value out;
  napi_create_bigint_uint64(env, (uint64_t)st.st_ino, &out);
  return out;
}

/* pollEvents(fd, events) -> revents, without waiting (poll(2), timeout 0).
 * The daemon asks POLLHUP of a caller's socket before starting its call:
 * set once the caller has closed its end (a half-close sets POLLRDHUP only). */
static napi_value nl_poll_events(napi_env env, napi_callback_info info) {
  int32_t a[2];
  if (arg_int(env, info, 2, a)) return NULL;
  struct pollfd p = {.fd = a[0], .events = (short)a[1], .revents = 0};
  int r;
  do {
    r = poll(&p, 1, 0);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, "poll", errno);
  return make_int(env, p.revents);
}

#define EXPORT(name, fn)                                          \
  do {                                                            \
    napi_value f;                                                 \
    napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, NULL, &f); \
    napi_set_named_property(env, exports, name, f);               \
  } while (0)

static napi_value init(napi_env env, napi_value exports) {
  EXPORT("socket", nl_socket);
  EXPORT("socketAt", nl_socket_at);
  EXPORT("netnsCookie", nl_netns_cookie);
  EXPORT("inetSocketAt", nl_inet_socket_at);
  EXPORT("bind", nl_bind);
  EXPORT("setsockoptInt", nl_setsockopt_int);
  EXPORT("send", nl_send);
  EXPORT("recv", nl_recv);
  EXPORT("close", nl_close);
  EXPORT("setns", nl_setns);
  EXPORT("flock", nl_flock);
  EXPORT("nsType", nl_ns_type);
  EXPORT("netnsCreate", nl_netns_create);
  EXPORT("umount", nl_umount);
  EXPORT("peerUid", nl_peer_uid);
  EXPORT("peerCred", nl_peer_cred);
  EXPORT("peerPidfd", nl_peer_pidfd);
  EXPORT("pidfdOpen", nl_pidfd_open);
  EXPORT("pidfdAlive", nl_pidfd_alive);
  EXPORT("pidfdNsInode", nl_pidfd_ns_inode);
  EXPORT("pollEvents", nl_poll_events);
  return exports;
}

/* NAPI_MODULE is symbol-based registration (napi_register_module_v1): the
 * module is context-aware, so every worker thread of the daemon loads it
 * into its own context. init keeps no state of its own. */
NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
