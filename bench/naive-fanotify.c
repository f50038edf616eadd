/*
 * naive-fanotify: the floor of what a fanotify pre-content daemon costs, for the host read
 * benchmark (bench/read-host-bench.ts). One blob, one thread, no verification, no presence map:
 * every FAN_PRE_ACCESS event is answered by pread from a local *uncompressed* blob, pwrite into
 * the sparse cache file through an unmarked path, then FAN_ALLOW. Anything a real daemon does on
 * top (decompression, digest checks, bookkeeping, a JS runtime) is measured against this.
 * Layout and ordering follow ../shared/spec/fanotify.md §4 (store, private bind mount `hsm`,
 * mark before mount, mount(2) directly).
 *
 *   naive-fanotify --meta BOOTSTRAP --source UNCOMPRESSED_BLOB --store DIR --mnt MOUNTPOINT
 *                  [--name NAME]
 *       Serve: creates DIR/blobs/NAME sparse, bind-mounts DIR/blobs on DIR/hsm (private), marks
 *       DIR/hsm, mounts BOOTSTRAP on MOUNTPOINT with device=DIR/hsm/NAME, prints "ready".
 *       SIGUSR1 prints the counters since the previous dump as one JSON line on stdout and
 *       resets them. SIGTERM/SIGINT: unmount MOUNTPOINT and DIR/hsm, print the totals, exit.
 *   naive-fanotify --mount-only --meta BOOTSTRAP --device FILE --mnt MOUNTPOINT
 *       mount(2) BOOTSTRAP with device=FILE and exit (the native case, or a remount through
 *       DIR/hsm while a serving instance holds the mark). Unmount with umount(8).
 *
 * gcc -O2 -Wall -o naive-fanotify naive-fanotify.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Debian bookworm's headers predate the 6.14 pre-content ABI. */
#ifndef FAN_CLASS_PRE_CONTENT
#define FAN_CLASS_PRE_CONTENT 0x00000008
#endif
#ifndef FAN_UNLIMITED_QUEUE
#define FAN_UNLIMITED_QUEUE 0x00000010
#endif
#ifndef FAN_PRE_ACCESS
#define FAN_PRE_ACCESS 0x00100000
#endif
#ifndef FAN_EVENT_INFO_TYPE_RANGE
#define FAN_EVENT_INFO_TYPE_RANGE 6
#endif
#ifndef FAN_Q_OVERFLOW
#define FAN_Q_OVERFLOW 0x00004000
#endif

#define CHUNK_MAX (4u << 20) /* largest fill done in one pread/pwrite */

static void die(const char *what) {
  fprintf(stderr, "naive-fanotify: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- counters (reset by every SIGUSR1 dump) ---- */
struct stats {
  uint64_t events, bytes, reads, max_batch, denied, overflows;
  uint64_t pread_ns, pwrite_ns; /* time inside the fill's pread(2) and pwrite(2) calls */
  uint64_t *lat_ns; /* per-event handling time: event read -> response written */
  size_t nlat, caplat;
  uint64_t size_key[16], size_count[16]; /* the most common range sizes */
};
static struct stats cur, total;

static void note_event(struct stats *s, uint64_t count, uint64_t lat) {
  s->events++;
  s->bytes += count;
  if (s->nlat == s->caplat) {
    s->caplat = s->caplat ? s->caplat * 2 : 4096;
    s->lat_ns = realloc(s->lat_ns, s->caplat * sizeof(uint64_t));
    if (!s->lat_ns) die("realloc");
  }
  s->lat_ns[s->nlat++] = lat;
  for (int i = 0; i < 16; i++) {
    if (s->size_count[i] && s->size_key[i] == count) { s->size_count[i]++; return; }
    if (!s->size_count[i]) { s->size_key[i] = count; s->size_count[i] = 1; return; }
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct_us(uint64_t *v, size_t n, double p) {
  if (!n) return 0;
  size_t i = (size_t)(p / 100.0 * (double)n + 0.999999);
  if (i < 1) i = 1;
  if (i > n) i = n;
  return (double)v[i - 1] / 1000.0;
}

static void dump(const char *kind, struct stats *s) {
  qsort(s->lat_ns, s->nlat, sizeof(uint64_t), cmp_u64);
  printf("{\"kind\":\"%s\",\"events\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"reads\":%" PRIu64
         ",\"max_batch\":%" PRIu64 ",\"denied\":%" PRIu64 ",\"overflows\":%" PRIu64
         ",\"pread_ms\":%.1f,\"pwrite_ms\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"sizes\":{",
         kind, s->events, s->bytes, s->reads, s->max_batch, s->denied, s->overflows,
         (double)s->pread_ns / 1e6, (double)s->pwrite_ns / 1e6,
         pct_us(s->lat_ns, s->nlat, 50), pct_us(s->lat_ns, s->nlat, 99), pct_us(s->lat_ns, s->nlat, 100));
  for (int i = 0, first = 1; i < 16 && s->size_count[i]; i++, first = 0)
    printf("%s\"%" PRIu64 "\":%" PRIu64, first ? "" : ",", s->size_key[i], s->size_count[i]);
  printf("}}\n");
  fflush(stdout);
  free(s->lat_ns);
  memset(s, 0, sizeof *s);
}

static void join(char out[PATH_MAX], const char *dir, const char *name) {
  if ((size_t)snprintf(out, PATH_MAX, "%s/%s", dir, name) >= PATH_MAX) {
    fprintf(stderr, "naive-fanotify: path too long: %s/%s\n", dir, name);
    exit(2);
  }
}

static void usage(void) {
  fprintf(stderr,
          "usage: naive-fanotify --meta BOOTSTRAP --source UNCOMPRESSED_BLOB --store DIR --mnt MOUNTPOINT [--name NAME]\n"
          "       naive-fanotify --mount-only --meta BOOTSTRAP --device FILE --mnt MOUNTPOINT\n");
  exit(2);
}

static int do_mount(const char *meta, const char *mnt, const char *device) {
  char opts[4200];
  snprintf(opts, sizeof opts, "device=%s", device);
  /* mount(2), not mount(8): util-linux would put a loop device under the bootstrap */
  return mount(meta, mnt, "erofs", MS_RDONLY | MS_NODEV | MS_NOSUID, opts);
}

/* Unmount, serving events meanwhile: a reader still blocked in an event keeps the mount busy. */
static void umount_serving(const char *target, int fan, void (*serve)(int));

static int fan_fd = -1, cache_fd = -1, src_fd = -1;
static uint64_t blob_size;
static char *iobuf;

static void respond(int fan, int fd, uint32_t resp) {
  struct fanotify_response r = {.fd = fd, .response = resp};
  for (;;) {
    ssize_t n = write(fan, &r, sizeof r);
    if (n == (ssize_t)sizeof r) return;
    if (n < 0 && errno == EINTR) continue;
    die("write response");
  }
}

/* Read one batch of events and answer each: fill the range, then allow. */
static void serve_batch(int fan) {
  static char buf[65536] __attribute__((aligned(8)));
  ssize_t len = read(fan, buf, sizeof buf);
  if (len < 0) {
    if (errno == EINTR || errno == EAGAIN) return;
    die("read fanotify");
  }
  uint64_t t_read = now_ns();
  cur.reads++;
  uint64_t batch = 0;
  char *p = buf;
  while (len > 0) {
    struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)p;
    if (len < (ssize_t)sizeof *m || m->event_len < sizeof *m || m->event_len > (size_t)len ||
        m->vers != FANOTIFY_METADATA_VERSION) {
      fprintf(stderr, "naive-fanotify: malformed event batch\n");
      exit(1);
    }
    batch++;
    if (m->mask & FAN_Q_OVERFLOW) {
      cur.overflows++;
      total.overflows++;
    } else if (m->fd >= 0) {
      uint64_t off = 0, count = 0;
      int have = 0;
      for (size_t o = m->metadata_len; o + 4 <= m->event_len;) {
        const struct fanotify_event_info_header *h = (const void *)(p + o);
        if (h->len < 4 || o + h->len > m->event_len) break;
        if (h->info_type == FAN_EVENT_INFO_TYPE_RANGE && h->len >= 24) {
          memcpy(&off, p + o + 8, 8);
          memcpy(&count, p + o + 16, 8);
          have = 1;
        }
        o += h->len;
      }
      uint32_t resp = FAN_DENY;
      if (have && (m->mask & FAN_PRE_ACCESS)) {
        /* the range is page-aligned outwards and may pass EOF: clamp */
        uint64_t end = off + count > blob_size ? blob_size : off + count;
        int ok = 1;
        for (uint64_t a = off; a < end && ok;) {
          size_t n = end - a > CHUNK_MAX ? CHUNK_MAX : (size_t)(end - a);
          uint64_t t0 = now_ns();
          ssize_t r = pread(src_fd, iobuf, n, (off_t)a);
          uint64_t t1 = now_ns();
          if (r <= 0) { ok = 0; break; }
          ssize_t w = pwrite(cache_fd, iobuf, (size_t)r, (off_t)a);
          uint64_t t2 = now_ns();
          cur.pread_ns += t1 - t0;
          cur.pwrite_ns += t2 - t1;
          total.pread_ns += t1 - t0;
          total.pwrite_ns += t2 - t1;
          if (w != r) { ok = 0; break; }
          a += (uint64_t)r;
        }
        if (ok) resp = FAN_ALLOW;
      }
      respond(fan, m->fd, resp); /* reply first, then close: the kernel matches by fd number */
      close(m->fd);
      uint64_t lat = now_ns() - t_read;
      if (resp == FAN_ALLOW) {
        note_event(&cur, count, lat);
        note_event(&total, count, lat);
      } else {
        cur.denied++;
        total.denied++;
      }
    }
    len -= m->event_len;
    p += m->event_len;
  }
  if (batch > cur.max_batch) cur.max_batch = batch;
  if (batch > total.max_batch) total.max_batch = batch;
  total.reads++;
}

static void umount_serving(const char *target, int fan, void (*serve)(int)) {
  for (int i = 0; i < 100; i++) {
    if (umount2(target, 0) == 0) return;
    if (errno == EINVAL || errno == ENOENT) return; /* not mounted (e.g. unmounted by the bench) */
    if (errno != EBUSY) break;
    struct pollfd pf = {.fd = fan, .events = POLLIN};
    if (fan >= 0 && poll(&pf, 1, 50) > 0) serve(fan);
    else usleep(50000);
  }
  if (umount2(target, MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT)
    fprintf(stderr, "naive-fanotify: umount %s: %s\n", target, strerror(errno));
}

int main(int argc, char **argv) {
  const char *meta = NULL, *source = NULL, *store = NULL, *mnt = NULL, *name = NULL, *device = NULL;
  int mount_only = 0;
  for (int i = 1; i < argc; i++) {
    const char *k = argv[i];
    if (!strcmp(k, "--mount-only")) { mount_only = 1; continue; }
    if (!strcmp(k, "-h") || !strcmp(k, "--help")) usage();
    if (i + 1 >= argc) usage();
    const char *v = argv[++i];
    if (!strcmp(k, "--meta")) meta = v;
    else if (!strcmp(k, "--source")) source = v;
    else if (!strcmp(k, "--store")) store = v;
    else if (!strcmp(k, "--mnt")) mnt = v;
    else if (!strcmp(k, "--name")) name = v;
    else if (!strcmp(k, "--device")) device = v;
    else usage();
  }
  if (mount_only) {
    if (!meta || !device || !mnt) usage();
    if (do_mount(meta, mnt, device) != 0) die("mount");
    return 0;
  }
  if (!meta || !source || !store || !mnt) usage();
  if (!name) {
    name = strrchr(source, '/');
    name = name ? name + 1 : source;
  }

  /* every in-flight event holds an fd */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  char blobs[PATH_MAX], hsm[PATH_MAX], cache[PATH_MAX], dev[PATH_MAX];
  join(blobs, store, "blobs");
  join(hsm, store, "hsm");
  join(cache, blobs, name);
  join(dev, hsm, name);

  src_fd = open(source, O_RDONLY | O_CLOEXEC);
  if (src_fd < 0) die(source);
  struct stat st;
  if (fstat(src_fd, &st) != 0) die("fstat source");
  blob_size = (uint64_t)st.st_size;
  if (!(iobuf = malloc(CHUNK_MAX))) die("malloc");

  if (mkdir(store, 0700) != 0 && errno != EEXIST) die(store);
  if (mkdir(blobs, 0700) != 0 && errno != EEXIST) die(blobs);
  if (mkdir(hsm, 0700) != 0 && errno != EEXIST) die(hsm);
  /* the sparse cache file exists at full size before any mark (a truncate through a marked
     path would raise an event); the daemon's own fd is opened through the unmarked path */
  cache_fd = open(cache, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (cache_fd < 0) die(cache);
  if (ftruncate(cache_fd, (off_t)blob_size) != 0) die("ftruncate");

  /* block the signals before anything can leave a mount behind; they arrive on a signalfd */
  sigset_t ss;
  sigemptyset(&ss);
  sigaddset(&ss, SIGTERM);
  sigaddset(&ss, SIGINT);
  sigaddset(&ss, SIGUSR1);
  sigaddset(&ss, SIGHUP);
  if (sigprocmask(SIG_BLOCK, &ss, NULL) != 0) die("sigprocmask");
  int sfd = signalfd(-1, &ss, SFD_CLOEXEC);
  if (sfd < 0) die("signalfd");

  if (mount(blobs, hsm, NULL, MS_BIND, NULL) != 0) die("bind mount");
  if (mount(NULL, hsm, NULL, MS_PRIVATE, NULL) != 0) die("make private");

  fan_fd = fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_UNLIMITED_QUEUE, O_RDWR | O_CLOEXEC);
  if (fan_fd < 0) {
    umount2(hsm, MNT_DETACH);
    die("fanotify_init");
  }
  if (fanotify_mark(fan_fd, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_PRE_ACCESS, AT_FDCWD, hsm) != 0) {
    umount2(hsm, MNT_DETACH);
    die("fanotify_mark");
  }
  /* mark before mount: EROFS opens the device file now, and the file's notify mode sticks */
  if (do_mount(meta, mnt, dev) != 0) {
    int e = errno;
    umount2(hsm, MNT_DETACH);
    errno = e;
    die("mount");
  }
  printf("ready\n");
  fflush(stdout);

  for (;;) {
    struct pollfd pf[2] = {{.fd = fan_fd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
    if (poll(pf, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (pf[0].revents & POLLIN) serve_batch(fan_fd);
    if (pf[1].revents & POLLIN) {
      struct signalfd_siginfo si;
      if (read(sfd, &si, sizeof si) != (ssize_t)sizeof si) continue;
      if (si.ssi_signo == SIGUSR1) {
        dump("stats", &cur);
        continue;
      }
      break;
    }
  }
  /* graceful stop (spec §8): unmount while still answering, only then drop the group */
  umount_serving(mnt, fan_fd, serve_batch);
  umount_serving(hsm, -1, NULL);
  dump("total", &total);
  close(fan_fd);
  return 0;
}
