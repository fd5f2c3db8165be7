/* bench_purge.c - does memory go back to the OS after a burst? A server-like
 * burst-and-free workload that samples the process's resident set over time.
 *
 *   bench_purge [--mb N] [--threads T] [--quiet-ms Q] [--sample-ms S]
 *               [--delay-ms D] [--remote-pct P] [--warmup-pct W] [--seed X]
 *
 * Like pantry_bench it links only libc and pthreads: the allocator comes in
 * with LD_PRELOAD (bench/run's "purge" section runs it under each one).
 *
 * What it does, with T worker threads (default 2) that stay alive to the end
 * (a server's threads do not exit when traffic stops):
 *   1. steady state: each thread keeps a baseline of 1 MiB / T live in
 *      blocks of 16..4096 bytes for the whole run, then makes and frees a
 *      warm-up burst of W% of its share (default 100: the server has seen
 *      such a peak before; 0..100); all threads rest 200 ms; then the start
 *      RSS is taken;
 *   2. burst: together the threads allocate N MiB (default 256) more, in
 *      blocks of 16..4096 bytes (log-uniform sizes), every byte written;
 *      the peak RSS is taken;
 *   3. free: each thread frees its burst (P% of each thread's blocks, default
 *      0, are freed by the next thread instead, as when a request's buffers
 *      cross threads); the clock starts when the last free returns;
 *   4. quiet: no thread calls the allocator; the main thread samples the RSS
 *      (/proc/self/statm) every S ms (default 1) for Q ms (default 300).
 * It prints one line of JSON: the start, peak and after-free RSS, the RSS at
 * one and two purge delays (D ms, default 10, pantry's and mimalloc's
 * default) and at the end, the first time the RSS was at most 1.1x the
 * start, and every sample ([ms, KiB]) for the plot.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SAMPLES_MAX 100000
#define BASELINE_BYTES ((size_t)1 << 20)

struct args {
  size_t mb;
  unsigned threads;
  unsigned quiet_ms, sample_ms, delay_ms, remote_pct, warmup_pct;
  uint64_t seed;
};

struct worker {
  pthread_t thread;
  unsigned index;
  uint64_t rng;
  void **burst; /* this thread's burst blocks */
  size_t count;
  void **baseline;
  size_t baseline_count;
  void **remote; /* blocks of the previous thread that this one frees */
  size_t remote_count;
};

static struct args args = {256, 2, 300, 1, 10, 0, 100, 1};
static struct worker *workers;
static pthread_barrier_t barrier;

static _Noreturn void die(const char *what) {
  fprintf(stderr, "bench_purge: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t next_random(uint64_t *s) {
  uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* 16..4096 bytes, log-uniform: as many 16..32-byte blocks as 2048..4096. */
static size_t random_size(uint64_t *s) {
  uint64_t r = next_random(s);
  unsigned shift = 4 + (unsigned)(r % 8); /* 16 .. 2048 */
  size_t base = (size_t)1 << shift;
  return base + (size_t)((r >> 8) % base);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_until(int64_t t) {
  struct timespec ts = {.tv_sec = t / 1000000000, .tv_nsec = t % 1000000000};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
    ;
}

/* The resident set, in KiB: /proc/self/statm with open/read (no malloc, so
 * sampling does not disturb the allocator under test). */
static long rss_kib(void) {
  static long page_kib;
  if (page_kib == 0)
    page_kib = sysconf(_SC_PAGESIZE) / 1024;
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  char buf[128];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return -1;
  buf[n] = '\0';
  const char *p = strchr(buf, ' ');
  return p ? strtol(p + 1, NULL, 10) * page_kib : -1;
}

/* Allocate blocks of random sizes until `bytes` are allocated; every byte
 * is written. Returns the blocks (an array from mmap-free calloc). */
static void **allocate(uint64_t *rng, size_t bytes, size_t *count) {
  size_t cap = bytes / 64 + 16, n = 0, total = 0;
  void **v = malloc(cap * sizeof *v);
  if (v == NULL)
    die("malloc");
  while (total < bytes) {
    if (n == cap) {
      cap *= 2;
      v = realloc(v, cap * sizeof *v);
      if (v == NULL)
        die("realloc");
    }
    size_t size = random_size(rng);
    char *p = malloc(size);
    if (p == NULL)
      die("malloc");
    memset(p, (int)(n & 0xff) | 1, size);
    v[n++] = p;
    total += size;
  }
  *count = n;
  return v;
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  /* 1. steady state and warm-up */
  w->baseline = allocate(&w->rng, BASELINE_BYTES / args.threads, &w->baseline_count);
  size_t warm_count;
  void **warm =
      allocate(&w->rng, (args.mb << 20) / args.threads * args.warmup_pct / 100 + 1, &warm_count);
  for (size_t i = 0; i < warm_count; i++)
    free(warm[i]);
  free(warm);
  pthread_barrier_wait(&barrier); /* A: warmed up; main rests, then takes the start RSS */
  pthread_barrier_wait(&barrier); /* B: go */
  /* 2. burst */
  w->burst = allocate(&w->rng, (args.mb << 20) / args.threads, &w->count);
  pthread_barrier_wait(&barrier); /* C: peak */
  pthread_barrier_wait(&barrier); /* D: free */
  /* 3. free: P% of the blocks go to the next thread to free */
  size_t keep = 0;
  struct worker *next = &workers[(w->index + 1) % args.threads];
  next->remote = malloc((w->count + 1) * sizeof(void *));
  if (next->remote == NULL)
    die("malloc");
  next->remote_count = 0;
  for (size_t i = 0; i < w->count; i++) {
    if (args.threads > 1 && next_random(&w->rng) % 100 < args.remote_pct)
      next->remote[next->remote_count++] = w->burst[i];
    else
      w->burst[keep++] = w->burst[i];
  }
  for (size_t i = 0; i < keep; i++)
    free(w->burst[i]);
  pthread_barrier_wait(&barrier); /* E: every thread has handed its remote blocks over */
  for (size_t i = 0; i < w->remote_count; i++)
    free(w->remote[i]);
  free(w->remote);
  free(w->burst);
  pthread_barrier_wait(&barrier); /* F: freed; the quiet phase starts */
  pthread_barrier_wait(&barrier); /* G: the end */
  for (size_t i = 0; i < w->baseline_count; i++)
    free(w->baseline[i]);
  free(w->baseline);
  return NULL;
}

static void usage(void) {
  fprintf(stderr, "usage: bench_purge [--mb N] [--threads T] [--quiet-ms Q] [--sample-ms S] "
                  "[--delay-ms D] [--remote-pct P] [--warmup-pct W] [--seed X]\n");
  exit(2);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (i + 1 >= argc)
      usage();
    unsigned long long v = strtoull(argv[i + 1], NULL, 10);
    if (strcmp(argv[i], "--mb") == 0)
      args.mb = v;
    else if (strcmp(argv[i], "--threads") == 0)
      args.threads = (unsigned)v;
    else if (strcmp(argv[i], "--quiet-ms") == 0)
      args.quiet_ms = (unsigned)v;
    else if (strcmp(argv[i], "--sample-ms") == 0)
      args.sample_ms = (unsigned)v;
    else if (strcmp(argv[i], "--delay-ms") == 0)
      args.delay_ms = (unsigned)v;
    else if (strcmp(argv[i], "--remote-pct") == 0)
      args.remote_pct = (unsigned)v;
    else if (strcmp(argv[i], "--warmup-pct") == 0)
      args.warmup_pct = (unsigned)v;
    else if (strcmp(argv[i], "--seed") == 0)
      args.seed = v;
    else
      usage();
    i++;
  }
  if (args.threads < 1 || args.mb < 1 || args.sample_ms < 1 || args.remote_pct > 100 ||
      args.warmup_pct > 100)
    usage();
  static long samples[SAMPLES_MAX][2];
  size_t nsamples = 0;
  workers = calloc(args.threads, sizeof *workers);
  if (workers == NULL)
    die("calloc");
  pthread_barrier_init(&barrier, NULL, args.threads + 1);
  for (unsigned t = 0; t < args.threads; t++) {
    workers[t].index = t;
    workers[t].rng = args.seed * 1000003u + t;
    if (pthread_create(&workers[t].thread, NULL, worker_main, &workers[t]) != 0)
      die("pthread_create");
  }
  pthread_barrier_wait(&barrier);          /* A */
  sleep_until(now_ns() + 200 * 1000000ll); /* let every allocator settle */
  long start = rss_kib();
  int64_t t_burst = now_ns();
  pthread_barrier_wait(&barrier); /* B */
  pthread_barrier_wait(&barrier); /* C */
  int64_t t_peak = now_ns();
  long peak = rss_kib();
  pthread_barrier_wait(&barrier); /* D */
  pthread_barrier_wait(&barrier); /* E */
  pthread_barrier_wait(&barrier); /* F */
  int64_t t0 = now_ns();
  long after_free = rss_kib();
  samples[nsamples][0] = 0;
  samples[nsamples++][1] = after_free;
  long at_delay = -1, at_2delay = -1, first_ok_ms = after_free <= start * 11 / 10 ? 0 : -1;
  for (unsigned k = 1; (uint64_t)k * args.sample_ms <= args.quiet_ms && nsamples < SAMPLES_MAX;
       k++) {
    sleep_until(t0 + (int64_t)k * args.sample_ms * 1000000);
    long r = rss_kib();
    long ms = (long)((now_ns() - t0) / 1000000);
    samples[nsamples][0] = (long)k * args.sample_ms;
    samples[nsamples++][1] = r;
    if (at_delay < 0 && ms >= (long)args.delay_ms)
      at_delay = r;
    if (at_2delay < 0 && ms >= 2 * (long)args.delay_ms)
      at_2delay = r;
    if (first_ok_ms < 0 && r <= start * 11 / 10)
      first_ok_ms = (long)k * args.sample_ms;
  }
  long end = samples[nsamples - 1][1];
  pthread_barrier_wait(&barrier); /* G */
  for (unsigned t = 0; t < args.threads; t++)
    pthread_join(workers[t].thread, NULL);
  printf("{\"workload\":\"burst-free\",\"mb\":%zu,\"threads\":%u,\"remote_pct\":%u,"
         "\"warmup_pct\":%u,\"delay_ms\":%u,\"burst_ms\":%.1f,\"start_kib\":%ld,\"peak_kib\":%ld,"
         "\"after_free_kib\":%ld,\"at_delay_kib\":%ld,\"at_2delay_kib\":%ld,\"end_kib\":%ld,"
         "\"first_within_1_1x_ms\":%ld,\"samples\":[",
         args.mb, args.threads, args.remote_pct, args.warmup_pct, args.delay_ms,
         (t_peak - t_burst) / 1e6, start, peak, after_free, at_delay, at_2delay, end, first_ok_ms);
  for (size_t i = 0; i < nsamples; i++)
    printf("%s[%ld,%ld]", i ? "," : "", samples[i][0], samples[i][1]);
  printf("]}\n");
  free(workers);
  return 0;
}
