/*
 * spawn-chains: starts plugin calls the way a Go runtime does, for the
 * runtime benchmark's burst (bench/runtime.ts).
 *
 * Why not Node's spawn(): it forks the benchmark's own ~100 MB process for
 * every call, and on this VM that page-table copy costs about 5 ms of CPU
 * per call, on the same two cores the calls being measured need. libcni
 * (podman, containerd, CRI-O) starts plugins through Go's os/exec, which
 * uses clone(CLONE_VM|CLONE_VFORK): no copy. posix_spawn(3) does the same
 * here, so the burst measures the plugins, not the harness.
 *
 * Input (a file, argv[1]): chains of calls; all chains start at once, the
 * calls of one chain run one after another (a container's plugin list).
 * Every field is "<decimal length>\n<bytes>":
 *   <chains>
 *   per chain: <steps>
 *     per step: <path> <env count> <env entry>... <stdin>
 * A step's stdin may hold the token @PREV@: it is replaced by the previous
 * step's stdout (libcni hands a chained plugin its predecessor's result).
 *
 * Output (stdout), per finished call:
 *   "<chain> <step> <exit status or -signal> <elapsed us> <max rss kB> <stdout length> <stderr length>\n"
 *   followed by the stdout bytes and the stderr bytes.
 * Elapsed is from just before posix_spawn to the reaping of the process.
 * A chain stops at its first failing call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct buf {
  char *p;
  size_t n, cap;
};

struct step {
  char *path;
  char **env;
  struct buf in;
};

struct chain {
  int nsteps, next;
  struct step *steps;
  /* the call running now */
  pid_t pid;
  int out, err;
  struct buf got_out, got_err;
  struct timespec t0;
  int done;
};

static void die(const char *what) {
  perror(what);
  exit(2);
}

static void put(struct buf *b, const char *p, size_t n) {
  if (b->n + n + 1 > b->cap) {
    b->cap = (b->n + n + 1) * 2;
    b->p = realloc(b->p, b->cap);
    if (!b->p) die("realloc");
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
  b->p[b->n] = 0;
}

/* one "<length>\n<bytes>" field of the input */
static char *field(FILE *f, size_t *len) {
  size_t n;
  if (fscanf(f, "%zu", &n) != 1 || fgetc(f) != '\n') {
    fprintf(stderr, "spawn-chains: malformed input\n");
    exit(2);
  }
  char *p = malloc(n + 1);
  if (!p) die("malloc");
  if (n && fread(p, 1, n, f) != n) die("read input");
  p[n] = 0;
  if (len) *len = n;
  return p;
}

static long number(FILE *f) {
  char *s = field(f, NULL);
  long v = strtol(s, NULL, 10);
  free(s);
  return v;
}

static void write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    p += w;
    n -= (size_t)w;
  }
}

/* the step's stdin with @PREV@ replaced by the previous step's stdout */
static void stdin_of(struct chain *c, struct step *s, struct buf *out) {
  const char *tok = "@PREV@";
  const char *at = memmem(s->in.p, s->in.n, tok, strlen(tok));
  if (!at || c->next == 0) {
    put(out, s->in.p, s->in.n);
    return;
  }
  put(out, s->in.p, (size_t)(at - s->in.p));
  put(out, c->got_out.p ? c->got_out.p : "", c->got_out.n);
  size_t rest = s->in.n - (size_t)(at - s->in.p) - strlen(tok);
  put(out, at + strlen(tok), rest);
}

static void start(struct chain *c) {
  struct step *s = &c->steps[c->next];
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) die("pipe2");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  struct buf input = {0};
  stdin_of(c, s, &input);
  c->got_out.n = 0;
  c->got_err.n = 0;
  clock_gettime(CLOCK_MONOTONIC, &c->t0);
  char *argv[] = {s->path, NULL};
  int rc = posix_spawn(&c->pid, s->path, &fa, NULL, argv, s->env);
  posix_spawn_file_actions_destroy(&fa);
  if (rc) {
    errno = rc;
    die(s->path);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  /* a config is a few kB: it fits the pipe, the write never waits */
  write_all(in[1], input.p ? input.p : "", input.n);
  close(in[1]);
  free(input.p);
  c->out = out[0];
  c->err = err[0];
}

static void drain(int *fd, struct buf *b) {
  char tmp[65536];
  ssize_t r = read(*fd, tmp, sizeof tmp);
  if (r > 0) {
    put(b, tmp, (size_t)r);
  } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
    close(*fd);
    *fd = -1;
  }
}

static void finish(struct chain *c, int index) {
  int status;
  struct rusage ru;
  while (wait4(c->pid, &status, 0, &ru) < 0) {
    if (errno != EINTR) die("wait4");
  }
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long us = (t1.tv_sec - c->t0.tv_sec) * 1000000L + (t1.tv_nsec - c->t0.tv_nsec) / 1000;
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  printf("%d %d %d %ld %ld %zu %zu\n", index, c->next, code, us, ru.ru_maxrss, c->got_out.n, c->got_err.n);
  fwrite(c->got_out.p ? c->got_out.p : "", 1, c->got_out.n, stdout);
  fwrite(c->got_err.p ? c->got_err.p : "", 1, c->got_err.n, stdout);
  c->next++;
  if (code != 0 || c->next == c->nsteps) c->done = 1;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: spawn-chains FILE\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  FILE *f = fopen(argv[1], "r");
  if (!f) die(argv[1]);
  int n = (int)number(f);
  struct chain *chains = calloc((size_t)n, sizeof *chains);
  for (int i = 0; i < n; i++) {
    chains[i].nsteps = (int)number(f);
    chains[i].steps = calloc((size_t)chains[i].nsteps, sizeof(struct step));
    for (int j = 0; j < chains[i].nsteps; j++) {
      struct step *s = &chains[i].steps[j];
      s->path = field(f, NULL);
      int envc = (int)number(f);
      s->env = calloc((size_t)envc + 1, sizeof(char *));
      for (int k = 0; k < envc; k++) s->env[k] = field(f, NULL);
      size_t len;
      s->in.p = field(f, &len);
      s->in.n = len;
    }
  }
  fclose(f);

  for (int i = 0; i < n; i++) start(&chains[i]);
  struct pollfd *pfd = calloc((size_t)n * 2, sizeof *pfd);
  int running = n;
  while (running > 0) {
    int m = 0;
    for (int i = 0; i < n; i++) {
      if (chains[i].done) continue;
      pfd[m++] = (struct pollfd){.fd = chains[i].out, .events = POLLIN};
      pfd[m++] = (struct pollfd){.fd = chains[i].err, .events = POLLIN};
    }
    if (poll(pfd, (nfds_t)m, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    for (int i = 0; i < n; i++) {
      struct chain *c = &chains[i];
      if (c->done) continue;
      for (int k = 0; k < m; k++) {
        if (!pfd[k].revents) continue;
        if (pfd[k].fd == c->out && c->out >= 0) drain(&c->out, &c->got_out);
        else if (pfd[k].fd == c->err && c->err >= 0) drain(&c->err, &c->got_err);
      }
      if (c->out < 0 && c->err < 0) {
        finish(c, i);
        fflush(stdout);
        if (c->done) running--;
        else start(c);
      }
    }
  }
  return 0;
}
