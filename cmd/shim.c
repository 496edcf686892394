/*
 * cni-ts-shim: what a runtime executes as /opt/cni/bin/<plugin>.
 *
 * A plugin runs once per container start, and a Node process needs about
 * 25 ms just to start, more than the reference macvlan plugin needs for its
 * whole ADD. So, as Cilium's and Calico's thin CNI binaries do, this small
 * executable hands the call (plugin name, environment, stdin) to a resident
 * `cni-ts daemon` over a root-only unix socket and relays the answer (stdout,
 * stderr, exit code). The plugins themselves are the same TypeScript code in
 * both places.
 *
 * Whenever the daemon cannot take the call it execs the packaged executable
 * (`cni-ts`, beside this file) under the plugin's name, with the same
 * arguments, environment and stdin, so a node without the daemon works
 * exactly as before, only slower:
 *   - no daemon listening (not installed, stopped, restarting);
 *   - the caller is in another network or mount namespace than the daemon
 *     (its netlink calls and CNI_NETNS paths would mean something else);
 *   - the daemon says it is stale (its executable was replaced) or does not
 *     know the plugin;
 *   - the daemon went away before answering. Re-running the call is then
 *     what a runtime retrying after a crashed plugin would do; ADD refuses
 *     an interface that already exists and DEL is idempotent.
 * CNI_TS_NO_DAEMON=1 forces the direct path; CNI_TS_DAEMON_SOCKET moves the
 * socket (tests, benchmarks).
 *
 * Wire format (little-endian u32 lengths), one call per connection:
 *   request:  "CNT1" u64 netns-inode u64 mntns-inode
 *             u32+name  u32+environ (NUL-separated)  u32+stdin
 *   response: u32 kind (0 answered, 1 run it yourself)
 *             then for 0: u32 exit-code  u32+stdout  u32+stderr
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/cni-ts/daemon.sock"
#define MAX_STDIN (64u << 20)

extern char **environ;

struct buf {
  char *data;
  size_t len, cap;
};

static void put(struct buf *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) abort();
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void put_u32(struct buf *b, uint32_t v) {
  unsigned char le[4] = {v, v >> 8, v >> 16, v >> 24};
  put(b, le, 4);
}

static void put_u64(struct buf *b, uint64_t v) {
  put_u32(b, (uint32_t)v);
  put_u32(b, (uint32_t)(v >> 32));
}

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Everything on stdin; 0 on a read error or past MAX_STDIN (the direct path takes it from there). */
static int read_stdin(struct buf *in) {
  struct stat st;
  /* a terminal never carries a runtime's config (the plugin's own rule) */
  if (fstat(0, &st) != 0 || S_ISCHR(st.st_mode)) return 1;
  char chunk[65536];
  for (;;) {
    ssize_t n = read(0, chunk, sizeof chunk);
    if (n == 0) return 1;
    if (n < 0) {
      if (errno == EINTR) continue;
      return 0;
    }
    if (in->len + (size_t)n > MAX_STDIN) return 0;
    put(in, chunk, (size_t)n);
  }
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return 0;
    }
    p += w;
    n -= (size_t)w;
  }
  return 1;
}

static int read_full(int fd, void *p, size_t n) {
  char *c = p;
  while (n > 0) {
    ssize_t r = read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    c += r;
    n -= (size_t)r;
  }
  return 1;
}

static uint64_t ns_inode(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/*
 * Run the packaged executable under the plugin's name. When stdin was
 * already consumed it is handed over in a memfd, which reads like the file
 * it was.
 */
static void run_directly(const char *name, char **argv, const struct buf *consumed) {
  char self[PATH_MAX - 16], target[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    perror("cni-ts-shim: /proc/self/exe");
    exit(1);
  }
  self[n] = 0;
  char *slash = strrchr(self, '/');
  *slash = 0;
  snprintf(target, sizeof target, "%s/cni-ts", self);

  if (consumed) {
    int fd = memfd_create("cni-stdin", MFD_CLOEXEC);
    if (fd < 0 || !write_all(fd, consumed->data, consumed->len)) {
      perror("cni-ts-shim: passing stdin on");
      exit(1);
    }
    /* whatever was not read yet (a config too big for the daemon) follows */
    char chunk[65536];
    for (;;) {
      ssize_t n = read(0, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      if (!write_all(fd, chunk, (size_t)n)) {
        perror("cni-ts-shim: passing stdin on");
        exit(1);
      }
    }
    if (lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0) {
      perror("cni-ts-shim: passing stdin on");
      exit(1);
    }
  }
  argv[0] = (char *)name;
  execv(target, argv);
  fprintf(stderr, "cni-ts-shim: exec %s: %s\n", target, strerror(errno));
  exit(1);
}

int main(int argc, char **argv) {
  (void)argc;
  const char *slash = strrchr(argv[0], '/');
  const char *name = slash ? slash + 1 : argv[0];

  const char *no_daemon = getenv("CNI_TS_NO_DAEMON");
  if (no_daemon && *no_daemon && strcmp(no_daemon, "0") != 0) run_directly(name, argv, NULL);

  const char *sock_path = getenv("CNI_TS_DAEMON_SOCKET");
  if (!sock_path || !*sock_path) sock_path = DEFAULT_SOCKET;
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(sock_path) >= sizeof addr.sun_path) run_directly(name, argv, NULL);
  strcpy(addr.sun_path, sock_path);

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) run_directly(name, argv, NULL);
  /* a daemon that hangs up mid-call is a fallback, not a fatal signal */
  signal(SIGPIPE, SIG_IGN);

  struct buf in = {0};
  if (!read_stdin(&in)) {
    close(fd);
    run_directly(name, argv, &in);
  }

  struct buf req = {0};
  put(&req, "CNT1", 4);
  put_u64(&req, ns_inode("/proc/self/ns/net"));
  put_u64(&req, ns_inode("/proc/self/ns/mnt"));
  put_u32(&req, (uint32_t)strlen(name));
  put(&req, name, strlen(name));
  struct buf env = {0};
  for (char **e = environ; *e; e++) put(&env, *e, strlen(*e) + 1);
  put_u32(&req, (uint32_t)env.len);
  if (env.len) put(&req, env.data, env.len);
  put_u32(&req, (uint32_t)in.len);
  if (in.len) put(&req, in.data, in.len);
  if (!write_all(fd, req.data, req.len)) run_directly(name, argv, &in);
  shutdown(fd, SHUT_WR);

  unsigned char head[8];
  if (!read_full(fd, head, 4) || get_u32(head) != 0) run_directly(name, argv, &in);
  if (!read_full(fd, head, 8)) run_directly(name, argv, &in);
  uint32_t code = get_u32(head), out_len = get_u32(head + 4);
  char *out = malloc(out_len + 1);
  if (!out || !read_full(fd, out, out_len) || !read_full(fd, head, 4)) run_directly(name, argv, &in);
  uint32_t err_len = get_u32(head);
  char *err = malloc(err_len + 1);
  if (!err || !read_full(fd, err, err_len)) run_directly(name, argv, &in);
  close(fd);

  /* the whole answer arrived: only now does anything reach our stdout */
  write_all(2, err, err_len);
  if (!write_all(1, out, out_len)) return 1;
  return (int)code;
}
