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
 * arguments, the cleaned environment (below) and stdin, so a node without
 * the daemon works exactly as before, only slower:
 *   - no daemon listening (not installed, stopped, restarting, or one that
 *     is not root's);
 *   - the daemon declines (the caller is in other namespaces than the
 *     daemon, its executable was replaced, no worker is free in time);
 *   - the daemon went away before answering (see "Timeouts" for why a
 *     re-run is safe then, and why it is not after a silent timeout).
 * CNI_TS_NO_DAEMON=1 forces the direct path (the executable answers
 * everything, VERSION included); CNI_TS_DAEMON_SOCKET moves the socket
 * (tests, benchmarks).
 *
 * VERSION without Node: the answer to VERSION is a constant per plugin and
 * per cniVersion on stdin, captured from the executable at build time
 * (build.sh writes dist/shim-versions.h). A daemon that takes the call
 * answers it (the plugin's own code, no process start); when none does
 * (none listens, it is not root's, it hung up, a deadline passed) the shim
 * answers from that table instead of starting Node (libcni asks every
 * plugin of a list for its VERSION before ADD and DEL). After an explicit
 * decline the executable answers, as for every call: a daemon declines when
 * the executable was replaced, and this shim may be the older of the two.
 * It answers only the
 * inputs it can judge exactly as the skel's JSON.parse does; anything else
 * (deeply nested JSON, a malformed CNI_ARGS the skel would refuse, stdin it
 * cannot read whole) goes on to the executable.
 *
 * The environment. Runtimes pass their whole environment to plugins (libcni
 * appends CNI_* to its own os.Environ()), so whatever a service manager, an
 * admin's shell or a wrapper set reaches this root process. Variables that
 * change what code runs or what it trusts are removed before anything else
 * sees them, on both paths (the exec of cni-ts and the environment sent to
 * the daemon, which passes it to the plugins it delegates to):
 *   - NODE_*: NODE_OPTIONS (--require, --import, --inspect), NODE_PATH,
 *     NODE_EXTRA_CA_CERTS (trust, and ~100 ms of start-up), NODE_REPL_*,
 *     NODE_ICU_DATA, NODE_CHANNEL_FD, ... The packaged executable also
 *     ignores NODE_OPTIONS itself (SEA execArgvExtension "none").
 *   - NETLINK_TS_*: NETLINK_TS_CACHE_DIR names the directory root dlopen()s
 *     the native binding from; NETLINK_TS_NATIVE a binding file.
 *   - OPENSSL_* (OPENSSL_CONF loads engines and providers, i.e. shared
 *     objects, at Node's start), SSL_CERT_FILE and SSL_CERT_DIR (trust).
 *   - the variables glibc drops for a setuid program (LD_*, GCONV_PATH,
 *     GLIBC_TUNABLES, HOSTALIASES, RES_OPTIONS, LOCALDOMAIN, TMPDIR, ...): this
 *     shim is the boundary a caller's environment crosses into root code, as
 *     exec of a setuid binary is. The shim is linked statically, so LD_PRELOAD
 *     and friends never reach it either.
 * Kept: CNI_*, PATH (the reference plugins use it to find tools too), proxy
 * and locale variables, UV_THREADPOOL_SIZE and the like (sizes, not code).
 *
 * Timeouts. Every socket step has a deadline:
 *   connect (1 s) and sending the request (5 s): on a timeout the request
 *     was not complete, and the daemon decodes a request only once the shim
 *     has half-closed it; a truncated one is refused. Nothing ran: the shim
 *     runs the call itself.
 *   the answer's first word (CNI_TS_DAEMON_TIMEOUT seconds, default 330):
 *     the request was delivered and the daemon may be running it. The
 *     protocol has no "accepted" message, so the shim cannot tell a queued
 *     call from a running one; running it here too could run an ADD twice
 *     at once. So on this timeout the shim closes the connection (the daemon
 *     drops a call whose caller has gone, if it has not started it) and
 *     answers with the spec's error 11 ("try again later"), never a re-run.
 *     The default is longer than the daemon's own --call-timeout (300 s),
 *     whose watchdog ends a hung daemon first; a daemon that ends closes the
 *     connection, which is the case below.
 *   the connection closing before any answer: the daemon refused us, died,
 *     or was killed by its watchdog; nothing of the call runs any more in
 *     it (a plugin it had exec'd may finish; plugins serialise on their
 *     per-network locks), so running it here is what a runtime retrying
 *     after a crashed plugin does (ADD refuses an interface that already
 *     exists, DEL is idempotent).
 *   "run it yourself" (kind 1): the daemon did not start the call.
 *   the rest of an answer once "answered" (kind 0) arrived (10 s between
 *     reads): the call ran; the shim never runs it again, and reports
 *     error 11 when the answer does not arrive whole.
 *
 * Starting the daemon on demand. A copy installed by `build.sh install` on
 * a host without systemd carries cni-ts-daemon.conf beside it (see
 * read_autostart). When no daemon listens, the shim starts one: only as
 * root, only when the caller's network and mount namespaces are the host's
 * (those of PID 1; a daemon started inside a container's namespaces would
 * hold the socket for calls it must decline), only on the configured
 * socket (never one the caller named), one at a time (an flock on
 * <socket>.lock, which the daemon inherits and holds for its whole life, so
 * "the lock is held" means "a started daemon lives"; a plugin it execs
 * inherits it too, so one that outlives a killed daemon delays the next
 * start until it ends, and calls run standalone meanwhile), detached (setsid and
 * a second fork, stdin /dev/null, output to <socket>.log, a fixed
 * environment) and idling out after idle-exit seconds without calls. The
 * call waits up to 3 s for the new daemon to listen (a Node start either
 * way; the daemon's serves the next calls too) and runs standalone after
 * that; a VERSION call does not wait (it is answered from the table). The
 * bin/ copies of a build carry no conf: tests that run them expect the
 * standalone path, and a test's daemon is one it starts itself.
 *
 * Wire format (little-endian u32 lengths), one call per connection:
 *   request:  "CNT1" u64 netns-inode u64 mntns-inode
 *             u32+name  u32+environ (NUL-separated)  u32+stdin
 *   response: u32 kind (0 answered, 1 run it yourself)
 *             then for 0: u32 exit-code  u32+stdout  u32+stderr
 * The inode fields are informational: the daemon works the caller's
 * namespaces out from the socket itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shim-versions.h"

#define DEFAULT_SOCKET "/run/cni-ts/daemon.sock"
#define AUTOSTART_CONF "cni-ts-daemon.conf"
#define DEFAULT_IDLE_EXIT 600
#define MAX_STDIN (64u << 20)
/* an answer claiming more than this is not one our daemon sends */
#define MAX_ANSWER (256u << 20)
#define CONNECT_MS 1000
#define SEND_MS 5000
/* the --call-timeout the shim starts a daemon with; its answer deadline is longer */
#define DAEMON_CALL_TIMEOUT "300"
#define DEFAULT_ANSWER_S 330
#define ANSWER_BODY_MS 10000
#define START_WAIT_MS 3000
/* a daemon started less than this ago and already gone is not started again at once */
#define START_BACKOFF_S 3
#define DAEMON_PATH_ENV "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

extern char **environ;

struct buf {
  char *data;
  size_t len, cap;
};

static void put(struct buf *b, const void *p, size_t n) {
  if (n > SIZE_MAX / 2 - b->len) abort();
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) abort();
    b->data = d;
    b->cap = cap;
  }
  if (n) memcpy(b->data + b->len, p, n);
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

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until fd is ready for `events` or the deadline (monotonic ms; -1: none) passes: 1 ready, 0 timed out. */
static int wait_fd(int fd, short events, int64_t deadline) {
  for (;;) {
    int timeout = -1;
    if (deadline >= 0) {
      int64_t left = deadline - now_ms();
      if (left <= 0) return 0;
      timeout = left > INT_MAX ? INT_MAX : (int)left;
    }
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, timeout);
    if (r > 0) return 1; /* readable, writable, or an error/hang-up the next call reports */
    if (r == 0) return 0;
    if (errno != EINTR) return 1;
  }
}

/* Write everything, waiting out EAGAIN on a non-blocking fd: 1 done, 0 error, -1 deadline passed. */
static int write_all(int fd, const char *p, size_t n, int64_t deadline) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!wait_fd(fd, POLLOUT, deadline)) return -1;
        continue;
      }
      return 0;
    }
    p += w;
    n -= (size_t)w;
  }
  return 1;
}

/* Read exactly n bytes: 1 done, 0 end of file or error, -1 deadline passed (no data for idle_ms, or past deadline). */
static int read_full(int fd, void *p, size_t n, int64_t deadline, int idle_ms) {
  char *c = p;
  while (n > 0) {
    int64_t d = deadline;
    if (idle_ms > 0) {
      int64_t idle = now_ms() + idle_ms;
      if (d < 0 || idle < d) d = idle;
    }
    if (!wait_fd(fd, POLLIN, d)) return -1;
    ssize_t r = read(fd, c, n);
    if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (r <= 0) return 0;
    c += r;
    n -= (size_t)r;
  }
  return 1;
}

enum stdin_state { STDIN_WHOLE, STDIN_TOO_BIG, STDIN_ERROR };

/*
 * Everything on stdin into `in`, up to MAX_STDIN. Past the cap the chunk
 * that crossed it stays in `in` (run_directly hands on what was read, then
 * the rest). A non-blocking stdin is waited on, never taken for its end.
 */
static enum stdin_state read_stdin(struct buf *in) {
  struct stat st;
  /* a terminal never carries a runtime's config (the skel's own rule) */
  if (fstat(0, &st) != 0 || S_ISCHR(st.st_mode)) return STDIN_WHOLE;
  char chunk[65536];
  for (;;) {
    ssize_t n = read(0, chunk, sizeof chunk);
    if (n == 0) return STDIN_WHOLE;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        wait_fd(0, POLLIN, -1);
        continue;
      }
      return STDIN_ERROR;
    }
    put(in, chunk, (size_t)n);
    if (in->len > MAX_STDIN) return STDIN_TOO_BIG;
  }
}

/* ---- the environment ---- */

/* What glibc removes for a setuid program (elf/dl-support.c's unsecure envvars), LD_* as a prefix below. */
static const char *const UNSAFE_NAMES[] = {
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "MALLOC_TRACE", "NIS_PATH",
    "NLSPATH",    "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", NULL,
};
static const char *const UNSAFE_PREFIXES[] = {"NODE_", "NETLINK_TS_", "OPENSSL_", "LD_", NULL};

/* 1 when the NAME=value entry must not reach root code (see the header). */
static int unsafe_env(const char *entry) {
  const char *eq = strchr(entry, '=');
  size_t name_len = eq ? (size_t)(eq - entry) : strlen(entry);
  for (const char *const *p = UNSAFE_PREFIXES; *p; p++) {
    if (strncmp(entry, *p, strlen(*p)) == 0) return 1;
  }
  for (const char *const *n = UNSAFE_NAMES; *n; n++) {
    if (strlen(*n) == name_len && strncmp(entry, *n, name_len) == 0) return 1;
  }
  return 0;
}

/* The caller's environment without the unsafe entries, in order. */
static char **clean_environ(void) {
  size_t n = 0;
  for (char **e = environ; *e; e++) n++;
  char **out = calloc(n + 1, sizeof *out);
  if (!out) abort();
  size_t k = 0;
  for (char **e = environ; *e; e++) {
    if (!unsafe_env(*e)) out[k++] = *e;
  }
  out[k] = NULL;
  return out;
}

/* getenv over the cleaned environment (first match, as getenv and Node do) */
static const char *env_get(char **env, const char *name) {
  size_t len = strlen(name);
  for (char **e = env; *e; e++) {
    if (strncmp(*e, name, len) == 0 && (*e)[len] == '=') return *e + len + 1;
  }
  return NULL;
}

/* ---- running the executable ---- */

/* The directory this shim was run from (the install's), or exit. */
static void self_dir(char *dir, size_t size) {
  ssize_t n = readlink("/proc/self/exe", dir, size - 1);
  if (n <= 0) {
    perror("cni-ts-shim: /proc/self/exe");
    exit(1);
  }
  dir[n] = 0;
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0;
}

/*
 * Run the packaged executable under the plugin's name. When stdin was
 * already consumed it is handed over in a memfd, which reads like the file
 * it was, followed by whatever was not read yet.
 */
static void run_directly(const char *name, int argc, char **argv, char **env, const struct buf *consumed) {
  char dir[PATH_MAX - 16], target[PATH_MAX];
  self_dir(dir, sizeof dir);
  snprintf(target, sizeof target, "%s/cni-ts", dir);

  if (consumed) {
    int fd = memfd_create("cni-stdin", MFD_CLOEXEC);
    if (fd < 0 || write_all(fd, consumed->data, consumed->len, -1) != 1) {
      perror("cni-ts-shim: passing stdin on");
      exit(1);
    }
    char chunk[65536];
    for (;;) {
      ssize_t n = read(0, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wait_fd(0, POLLIN, -1);
        continue;
      }
      if (n <= 0) break;
      if (write_all(fd, chunk, (size_t)n, -1) != 1) {
        perror("cni-ts-shim: passing stdin on");
        exit(1);
      }
    }
    if (lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0) {
      perror("cni-ts-shim: passing stdin on");
      exit(1);
    }
  }
  /* a fresh argv: with argc 0 there is no argv[0] slot to overwrite */
  char **args = calloc((size_t)(argc > 0 ? argc : 1) + 1, sizeof *args);
  if (!args) abort();
  args[0] = (char *)name;
  for (int i = 1; i < argc; i++) args[i] = argv[i];
  signal(SIGPIPE, SIG_DFL);
  execve(target, args, env);
  fprintf(stderr, "cni-ts-shim: exec %s: %s\n", target, strerror(errno));
  exit(1);
}

/* the version errors are reported in: the config's when the plugin speaks it (as the skel does) */
static const char *error_version = "1.1.0";

/* The spec's error JSON on stdout, exit 1. */
static void fail(int code, const char *msg, const char *details) {
  char out[1024];
  /* laid out as the skel prints its errors (JSON.stringify, 4 spaces) */
  int n = snprintf(out, sizeof out, "{\n    \"cniVersion\": \"%s\",\n    \"code\": %d,\n    \"msg\": \"%s\",\n    \"details\": \"%s\"\n}\n",
                   error_version, code, msg, details);
  write_all(1, out, (size_t)n, -1);
  exit(1);
}

/* ---- VERSION from the table ---- */

/*
 * A strict JSON reader that decides what the skel's
 * `JSON.parse(stdin.toString('utf8')).cniVersion` is. Result: -1 not
 * sure (hand the call on), 0 no usable cniVersion (not JSON, not an
 * object, absent, not a string), 1 found (its value in `ver`).
 * JSON.parse: RFC 8259 whitespace only (a BOM is an error), strings
 * without raw control characters, the last of duplicate keys wins, keys
 * and values compared after their escapes. Bytes >= 0x80 are fine only
 * inside strings (toString turns bad UTF-8 into U+FFFD, still a string).
 */
struct json {
  const unsigned char *p, *end;
  int depth;
};

#define JSON_MAX_DEPTH 256
#define JSON_UNSURE (-2)

static void ws(struct json *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/*
 * A string at j->p (the opening quote). Its decoded text goes to out (up
 * to cap-1 chars, NUL-terminated) when every unit is ASCII; *ascii says so
 * and *len gives the decoded length. 1 ok, 0 invalid JSON.
 */
static int json_string(struct json *j, char *out, size_t cap, int *ascii, size_t *len) {
  *ascii = 1;
  *len = 0;
  j->p++;
  while (j->p < j->end) {
    unsigned char c = *j->p++;
    unsigned unit;
    if (c == '"') {
      if (out && cap) out[*len < cap ? *len : cap - 1] = 0;
      return 1;
    }
    if (c < 0x20) return 0;
    if (c == '\\') {
      if (j->p >= j->end) return 0;
      c = *j->p++;
      switch (c) {
        case '"': case '\\': case '/': unit = c; break;
        case 'b': unit = '\b'; break;
        case 'f': unit = '\f'; break;
        case 'n': unit = '\n'; break;
        case 'r': unit = '\r'; break;
        case 't': unit = '\t'; break;
        case 'u': {
          if (j->end - j->p < 4) return 0;
          unit = 0;
          for (int i = 0; i < 4; i++) {
            int h = hexval(j->p[i]);
            if (h < 0) return 0;
            unit = unit << 4 | (unsigned)h;
          }
          j->p += 4;
          break;
        }
        default: return 0;
      }
    } else {
      unit = c;
    }
    if (unit >= 0x80) *ascii = 0;
    if (out && *len + 1 < cap) out[*len] = (char)unit;
    (*len)++;
  }
  return 0;
}

static int json_value(struct json *j);

static int json_number(struct json *j) {
  if (j->p < j->end && *j->p == '-') j->p++;
  if (j->p >= j->end) return 0;
  if (*j->p == '0') {
    j->p++;
  } else if (*j->p >= '1' && *j->p <= '9') {
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
  } else {
    return 0;
  }
  if (j->p < j->end && *j->p == '.') {
    j->p++;
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
  }
  if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
    j->p++;
    if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
  }
  return 1;
}

static int json_literal(struct json *j, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0) return 0;
  j->p += n;
  return 1;
}

/*
 * An object's members; when `top` is set, the last "cniVersion" member's
 * value is recorded (found: 1 string, 0 other). 1 ok, 0 invalid, JSON_UNSURE.
 */
static int json_object(struct json *j, int top, int *found, char *ver, size_t vcap) {
  j->p++;
  ws(j);
  if (j->p < j->end && *j->p == '}') {
    j->p++;
    return 1;
  }
  for (;;) {
    ws(j);
    if (j->p >= j->end || *j->p != '"') return 0;
    char key[16];
    int ascii;
    size_t klen;
    if (!json_string(j, key, sizeof key, &ascii, &klen)) return 0;
    int is_version = top && ascii && klen == 10 && strcmp(key, "cniVersion") == 0;
    ws(j);
    if (j->p >= j->end || *j->p != ':') return 0;
    j->p++;
    ws(j);
    if (is_version && j->p < j->end && *j->p == '"') {
      size_t vlen;
      if (!json_string(j, ver, vcap, &ascii, &vlen)) return 0;
      /* a value that does not fit (or is not ASCII) names no version we speak */
      if (!ascii || vlen >= vcap || strlen(ver) != vlen) ver[0] = 0; /* "1.0.0\u0000" is not 1.0.0 */
      *found = 1;
    } else {
      int r = json_value(j);
      if (r != 1) return r;
      if (is_version) *found = 0;
    }
    ws(j);
    if (j->p >= j->end) return 0;
    if (*j->p == ',') {
      j->p++;
      continue;
    }
    if (*j->p == '}') {
      j->p++;
      return 1;
    }
    return 0;
  }
}

static int json_value(struct json *j) {
  ws(j);
  if (j->p >= j->end) return 0;
  switch (*j->p) {
    case '{': case '[': {
      if (++j->depth > JSON_MAX_DEPTH) return JSON_UNSURE;
      int r;
      if (*j->p == '{') {
        int found = 0;
        char ver[2];
        r = json_object(j, 0, &found, ver, sizeof ver);
      } else {
        j->p++;
        ws(j);
        r = 1;
        if (j->p < j->end && *j->p == ']') {
          j->p++;
        } else {
          for (;;) {
            r = json_value(j);
            if (r != 1) break;
            ws(j);
            if (j->p < j->end && *j->p == ',') {
              j->p++;
              continue;
            }
            if (j->p < j->end && *j->p == ']') {
              j->p++;
              break;
            }
            r = 0;
            break;
          }
        }
      }
      j->depth--;
      return r;
    }
    case '"': {
      int ascii;
      size_t len;
      return json_string(j, NULL, 0, &ascii, &len);
    }
    case 't': return json_literal(j, "true");
    case 'f': return json_literal(j, "false");
    case 'n': return json_literal(j, "null");
    default: return json_number(j);
  }
}

/* -1 not sure, 0 no usable cniVersion, 1 found (in ver) */
static int config_version(const struct buf *in, char *ver, size_t vcap) {
  struct json j = {.p = (const unsigned char *)in->data, .end = (const unsigned char *)in->data + in->len};
  ver[0] = 0;
  ws(&j);
  int found = 0, r;
  if (j.p < j.end && *j.p == '{') {
    j.depth = 1;
    r = json_object(&j, 1, &found, ver, vcap);
  } else {
    r = json_value(&j);
  }
  if (r == JSON_UNSURE) return -1;
  if (r == 1) {
    ws(&j);
    if (j.p != j.end) r = 0;
  }
  return r == 1 && found == 1 ? 1 : 0;
}

/* The skel's splitCniArgs refuses a non-empty segment without a '=' past its start. */
static int cni_args_valid(const char *s) {
  if (!s) return 1;
  while (*s) {
    const char *semi = strchr(s, ';');
    size_t seg = semi ? (size_t)(semi - s) : strlen(s);
    if (seg > 0) {
      const char *eq = memchr(s, '=', seg);
      if (!eq || eq == s) return 0;
    }
    s += seg;
    if (*s == ';') s++;
  }
  return 1;
}

static const struct plugin_versions *plugin_versions(const char *name) {
  for (size_t i = 0; i < sizeof PLUGIN_VERSIONS / sizeof PLUGIN_VERSIONS[0]; i++) {
    if (strcmp(PLUGIN_VERSIONS[i].plugin, name) == 0) return &PLUGIN_VERSIONS[i];
  }
  return NULL;
}

/*
 * The plugin's own answer to VERSION for this stdin, from the build's table
 * (the answer for the config's cniVersion when the plugin speaks it, else
 * for none); NULL when the shim cannot be sure of it. Also settles the
 * version this shim's own errors are reported in.
 */
static const char *version_answer(const struct plugin_versions *pv, char **env, const struct buf *in) {
  if (!pv) return NULL;
  error_version = pv->latest_version;
  char ver[32];
  int r = config_version(in, ver, sizeof ver);
  if (r < 0) return NULL;
  const char *answer = pv->latest;
  if (r == 1) {
    for (int i = 0; pv->versions[i]; i++) {
      if (strcmp(pv->versions[i], ver) == 0) {
        answer = pv->answers[i];
        error_version = pv->versions[i];
      }
    }
  }
  return cni_args_valid(env_get(env, "CNI_ARGS")) ? answer : NULL;
}

static void answer_version(const char *answer) {
  exit(write_all(1, answer, strlen(answer), -1) == 1 ? 0 : 1);
}

/* ---- the daemon ---- */

struct ns_id {
  dev_t dev;
  ino_t ino;
};

static int ns_of(const char *path, struct ns_id *id) {
  struct stat st;
  if (stat(path, &st) != 0) return 0;
  id->dev = st.st_dev;
  id->ino = st.st_ino;
  return 1;
}

static uint64_t ns_inode(const char *path) {
  struct ns_id id;
  return ns_of(path, &id) ? (uint64_t)id.ino : 0;
}

/*
 * The caller sits in the host's network and mount namespaces: those in
 * host_ns (PID 1's by default). Where those cannot be read (a sandbox whose
 * PID 1 hides them from root), the ids `build.sh install` recorded from the
 * installer's own namespaces stand in; neither readable nor recorded counts
 * as "no".
 */
static int in_host_namespaces(const char *host_ns, const struct ns_id recorded[2]) {
  static const char *const kinds[] = {"net", "mnt"};
  for (int i = 0; i < 2; i++) {
    char self[64], init[PATH_MAX];
    struct ns_id a, b;
    snprintf(self, sizeof self, "/proc/self/ns/%s", kinds[i]);
    snprintf(init, sizeof init, "%s/%s", host_ns, kinds[i]);
    if (!ns_of(init, &b)) {
      if (recorded[i].ino == 0) return 0;
      b = recorded[i];
    }
    if (!ns_of(self, &a) || a.dev != b.dev || a.ino != b.ino) return 0;
  }
  return 1;
}

enum conn_state { CONN_OK, CONN_NOBODY, CONN_TIMEOUT, CONN_NOT_ROOT, CONN_ERROR };

/*
 * Connect with a deadline. A blocking connect(2) on a unix socket waits
 * while the listener's backlog is full; SO_SNDTIMEO bounds that wait.
 * Then the peer must be root (or ourselves): a socket path the caller
 * named, or a stale one some other process now listens on, must not
 * receive a root caller's environment and configuration, nor answer for
 * the plugin.
 */
static enum conn_state connect_daemon(const char *path, int *out) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof addr.sun_path) return CONN_ERROR;
  strcpy(addr.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return CONN_ERROR;
  struct timeval tv = {.tv_sec = CONNECT_MS / 1000, .tv_usec = (CONNECT_MS % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    int e = errno;
    close(fd);
    if (e == ENOENT || e == ECONNREFUSED) return CONN_NOBODY;
    if (e == EAGAIN || e == EINPROGRESS || e == ETIMEDOUT) return CONN_TIMEOUT;
    return CONN_ERROR;
  }
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || (cred.uid != 0 && cred.uid != geteuid())) {
    close(fd);
    return CONN_NOT_ROOT;
  }
  /* every later step polls against its own deadline */
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  *out = fd;
  return CONN_OK;
}

struct autostart {
  int enabled;
  unsigned idle_exit;
  char socket[sizeof(((struct sockaddr_un *)0)->sun_path)];
  char host_ns[256];
  struct ns_id recorded[2]; /* host-netns=, host-mntns=; ino 0: none */
};

/*
 * <dir of this shim>/cni-ts-daemon.conf, written by `build.sh install`:
 *   idle-exit=SECONDS   (default 600)
 *   socket=PATH         (default /run/cni-ts/daemon.sock)
 *   host-ns=DIR         where the host's namespaces are seen, as DIR/net and
 *                       DIR/mnt (default /proc/1/ns; a test names another
 *                       process's)
 *   host-netns=DEV:INO  the installer's network and mount namespaces, used
 *   host-mntns=DEV:INO  only where DIR/net or DIR/mnt cannot be read
 * Its presence turns the on-demand start on. It sits with the executables,
 * where only root writes.
 */
static void read_autostart(struct autostart *as) {
  as->enabled = 0;
  as->idle_exit = DEFAULT_IDLE_EXIT;
  snprintf(as->socket, sizeof as->socket, "%s", DEFAULT_SOCKET);
  snprintf(as->host_ns, sizeof as->host_ns, "%s", "/proc/1/ns");
  memset(as->recorded, 0, sizeof as->recorded);
  char dir[PATH_MAX - 32], path[PATH_MAX];
  self_dir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/" AUTOSTART_CONF, dir);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  char text[4096];
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n < 0) return;
  text[n] = 0;
  as->enabled = 1;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    if (strncmp(line, "idle-exit=", 10) == 0) {
      char *end;
      unsigned long v = strtoul(line + 10, &end, 10);
      if (end != line + 10 && *end == 0 && v > 0 && v < 86400 * 365) as->idle_exit = (unsigned)v;
    } else if (strncmp(line, "socket=", 7) == 0 && line[7] == '/' && strlen(line + 7) < sizeof as->socket) {
      strcpy(as->socket, line + 7);
    } else if (strncmp(line, "host-ns=", 8) == 0 && line[8] == '/' && strlen(line + 8) < sizeof as->host_ns) {
      strcpy(as->host_ns, line + 8);
    } else if (strncmp(line, "host-netns=", 11) == 0 || strncmp(line, "host-mntns=", 11) == 0) {
      unsigned long long dev, ino;
      char tail;
      if (sscanf(line + 11, "%llu:%llu%c", &dev, &ino, &tail) == 2 && ino != 0) {
        struct ns_id *id = &as->recorded[line[5] == 'n' ? 0 : 1];
        id->dev = (dev_t)dev;
        id->ino = (ino_t)ino;
      }
    }
  }
}

static void mkdirs(const char *dir) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s", dir);
  for (char *s = p + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    mkdir(p, 0755);
    *s = '/';
  }
  mkdir(p, 0700);
}

/*
 * Start `cni-ts daemon` unless one started by a shim still lives. Returns
 * 1 when a daemon is (being) started by someone, 0 when none will be.
 */
static int start_daemon(const struct autostart *as, const char *name) {
  char dir[PATH_MAX], lock[PATH_MAX], logf[PATH_MAX], exe[PATH_MAX], idle[16];
  snprintf(dir, sizeof dir, "%s", as->socket);
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir) return 0;
  *slash = 0;
  mkdirs(dir);
  snprintf(lock, sizeof lock, "%s.lock", as->socket);
  snprintf(logf, sizeof logf, "%s.log", as->socket);
  int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (lfd < 0) return 0;
  if (flock(lfd, LOCK_EX | LOCK_NB) != 0) {
    /* a daemon a shim started lives (or is starting): it holds this lock */
    close(lfd);
    return 1;
  }
  /* the last one started just now and is gone already: do not start one per call */
  struct stat st;
  if (fstat(lfd, &st) == 0 && st.st_size > 0 && time(NULL) - st.st_mtime < START_BACKOFF_S) {
    close(lfd);
    return 0;
  }
  char self[PATH_MAX - 16];
  self_dir(self, sizeof self);
  snprintf(exe, sizeof exe, "%s/cni-ts", self);
  snprintf(idle, sizeof idle, "%u", as->idle_exit);

  pid_t child = fork();
  if (child < 0) {
    close(lfd);
    return 0;
  }
  if (child == 0) {
    setsid();
    pid_t grandchild = fork();
    if (grandchild != 0) _exit(grandchild < 0);
    /* the daemon: no tie to the caller's session, stdio, fds or environment */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    int log = open(logf, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (null < 0 || log < 0) _exit(127);
    if (fstat(log, &st) == 0 && st.st_size > (1 << 20)) ftruncate(log, 0);
    dup2(null, 0);
    dup2(log, 1);
    dup2(log, 2);
    /* the lock stays held by the daemon for its whole life: fd 3, inherited */
    if (dup2(lfd, 3) != 3) _exit(127);
    if (syscall(SYS_close_range, 4, ~0U, 0) != 0) {
      for (int fd = 4; fd < 1024; fd++) close(fd);
    }
    char stamp[32];
    int n = snprintf(stamp, sizeof stamp, "%d\n", (int)getpid());
    if (ftruncate(3, 0) == 0) pwrite(3, stamp, (size_t)n, 0);
    dprintf(2, "cni-ts-shim: starting cni-ts daemon (pid %d) for a %s call\n", (int)getpid(), name);
    signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    umask(077);
    if (chdir("/") != 0) _exit(127);
    char *args[] = {"cni-ts", "daemon", "--socket", (char *)as->socket, "--idle-exit", idle, "--call-timeout", DAEMON_CALL_TIMEOUT, NULL};
    char *env[] = {DAEMON_PATH_ENV, NULL};
    execve(exe, args, env);
    dprintf(2, "cni-ts-shim: exec %s: %s\n", exe, strerror(errno));
    _exit(127);
  }
  close(lfd);
  int status;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  return 1;
}

/* A daemon a shim started is alive (holds the lock). */
static int started_daemon_alive(const char *socket) {
  char lock[PATH_MAX];
  snprintf(lock, sizeof lock, "%s.lock", socket);
  int fd = open(lock, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return 0;
  int alive = flock(fd, LOCK_SH | LOCK_NB) != 0;
  close(fd);
  return alive;
}

/* Wait for a starting daemon to listen: CONN_OK with *fd, or not. */
static enum conn_state wait_for_daemon(const char *socket, int *fd) {
  int64_t deadline = now_ms() + START_WAIT_MS;
  for (int i = 0; now_ms() < deadline; i++) {
    enum conn_state c = connect_daemon(socket, fd);
    if (c != CONN_NOBODY) return c;
    if (i % 10 == 9 && !started_daemon_alive(socket)) return CONN_NOBODY;
    usleep(10000);
  }
  return CONN_TIMEOUT;
}

static const char *plugin_name(int argc, char **argv, char *exe_buf, size_t size) {
  if (argc > 0 && argv[0] && argv[0][0]) {
    const char *slash = strrchr(argv[0], '/');
    return slash ? slash + 1 : argv[0];
  }
  /* no argv[0] (an exec with argc 0): a hard link's /proc/self/exe names the link run */
  ssize_t n = readlink("/proc/self/exe", exe_buf, size - 1);
  if (n <= 0) return "";
  exe_buf[n] = 0;
  const char *slash = strrchr(exe_buf, '/');
  return slash ? slash + 1 : exe_buf;
}

int main(int argc, char **argv) {
  char exe_buf[PATH_MAX];
  const char *name = plugin_name(argc, argv, exe_buf, sizeof exe_buf);
  char **env = clean_environ();

  const char *no_daemon = getenv("CNI_TS_NO_DAEMON");
  if (no_daemon && *no_daemon && strcmp(no_daemon, "0") != 0) run_directly(name, argc, argv, env, NULL);

  const char *command = env_get(env, "CNI_COMMAND");
  int is_version = command && strcmp(command, "VERSION") == 0;

  struct autostart as;
  read_autostart(&as);
  const char *named = getenv("CNI_TS_DAEMON_SOCKET");
  const char *sock_path = named && *named ? named : as.socket;
  /* a socket the caller named is where to look, never where to start a daemon */
  int may_start = as.enabled && !(named && *named) && geteuid() == 0;

  /* a daemon that hangs up mid-call is a fallback, not a fatal signal */
  signal(SIGPIPE, SIG_IGN);

  struct buf in = {0};
  enum stdin_state got = read_stdin(&in);
  /* VERSION when no daemon answers: the build's table, else the executable */
  const char *version = got == STDIN_WHOLE ? version_answer(plugin_versions(name), env, &in) : NULL;
  if (!is_version) version = NULL;
  if (got != STDIN_WHOLE) run_directly(name, argc, argv, env, &in);

  int fd = -1;
  enum conn_state c = connect_daemon(sock_path, &fd);
  if (c == CONN_NOBODY && may_start && in_host_namespaces(as.host_ns, as.recorded) && start_daemon(&as, name)) {
    if (version) answer_version(version);
    c = wait_for_daemon(sock_path, &fd);
  }
  if (c != CONN_OK) {
    if (version) answer_version(version);
    run_directly(name, argc, argv, env, &in);
  }

  struct buf req = {0};
  put(&req, "CNT1", 4);
  put_u64(&req, ns_inode("/proc/self/ns/net"));
  put_u64(&req, ns_inode("/proc/self/ns/mnt"));
  put_u32(&req, (uint32_t)strlen(name));
  put(&req, name, strlen(name));
  struct buf envb = {0};
  for (char **e = env; *e; e++) put(&envb, *e, strlen(*e) + 1);
  put_u32(&req, (uint32_t)envb.len);
  put(&req, envb.data, envb.len);
  put_u32(&req, (uint32_t)in.len);
  put(&req, in.data, in.len);
  /* not sent whole: the daemon never decodes a request we did not half-close */
  if (write_all(fd, req.data, req.len, now_ms() + SEND_MS) != 1 || shutdown(fd, SHUT_WR) != 0) {
    close(fd);
    if (version) answer_version(version);
    run_directly(name, argc, argv, env, &in);
  }

  int64_t answer_s = DEFAULT_ANSWER_S;
  const char *t = getenv("CNI_TS_DAEMON_TIMEOUT");
  if (t && *t) {
    char *end;
    long v = strtol(t, &end, 10);
    if (*end == 0 && v > 0) answer_s = v;
  }
  unsigned char head[8];
  int r = read_full(fd, head, 4, now_ms() + answer_s * 1000, 0);
  if (r < 0) {
    /* delivered, maybe running: never a second run (see "Timeouts") */
    close(fd);
    fail(11, "the cni-ts daemon did not answer in time", "the call may still complete there; try again later");
  }
  if (r == 0 || get_u32(head) == 1) {
    /* closed unanswered (refused, or the daemon is gone), or "run it yourself": nothing runs there */
    int declined = r == 1;
    close(fd);
    if (version && !declined) answer_version(version);
    run_directly(name, argc, argv, env, &in);
  }
  if (get_u32(head) != 0) {
    close(fd);
    fail(11, "the cni-ts daemon gave an answer this shim does not know", "the call may have run; try again later");
  }

  /* answered: the call ran, whatever happens from here it is not run again */
  const char *cut = "the call ran in the daemon; try again later";
  if (read_full(fd, head, 8, -1, ANSWER_BODY_MS) != 1) fail(11, "the cni-ts daemon's answer was cut short", cut);
  uint32_t code = get_u32(head);
  size_t out_len = get_u32(head + 4);
  if (out_len > MAX_ANSWER) fail(11, "the cni-ts daemon's answer is too long", cut);
  char *out = malloc(out_len + 1);
  if (!out) fail(11, "out of memory for the cni-ts daemon's answer", cut);
  if (read_full(fd, out, out_len, -1, ANSWER_BODY_MS) != 1 || read_full(fd, head, 4, -1, ANSWER_BODY_MS) != 1) {
    fail(11, "the cni-ts daemon's answer was cut short", cut);
  }
  size_t err_len = get_u32(head);
  if (err_len > MAX_ANSWER) fail(11, "the cni-ts daemon's answer is too long", cut);
  char *err = malloc(err_len + 1);
  if (!err) fail(11, "out of memory for the cni-ts daemon's answer", cut);
  if (read_full(fd, err, err_len, -1, ANSWER_BODY_MS) != 1) fail(11, "the cni-ts daemon's answer was cut short", cut);
  close(fd);

  /* the whole answer arrived: only now does anything reach our stdout */
  write_all(2, err, err_len, -1);
  if (write_all(1, out, out_len, -1) != 1) return 1;
  return (int)code;
}
