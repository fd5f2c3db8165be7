/* bench.h - the interface between the benchmark driver and its workloads.
 *
 * Benchmarks live in bench/ and never in tests: they measure, they do not
 * assert (except that the server workload aborts on a corrupted block).
 *
 * A benchmark program is a table of workloads plus `bench_main`:
 *
 *   static const struct bench_workload workloads[] = {
 *       {"pairs", "malloc+free pairs, sizes 16..1024", workload_pairs},
 *       ...
 *   };
 *   int main(int argc, char **argv) {
 *       return bench_main(argc, argv, workloads, sizeof workloads / sizeof workloads[0]);
 *   }
 *
 * `bench_driver.c` parses `<workload> [--threads N] [--seconds S | --ops N]
 * [--seed X]`, calls the workload, and prints one line of JSON. pantry_bench.c
 * holds the malloc/free workloads (run under LD_PRELOAD); a program for the
 * pool/arena/deferred workloads (linked against libpantry, talloc, APR) is a
 * second .c file with its own table and the same driver.
 *
 * A workload's run, the contract:
 *   1. start its worker threads; each does its set-up, then calls
 *      bench_gate_wait(run) once;
 *   2. on the calling thread, call bench_gate_open(run, workers): it waits for
 *      all workers, starts the clock, and in --seconds mode sleeps until the
 *      deadline and raises the stop flag;
 *   3. each worker loops while `i < quota` and, every 256 ops, checks
 *      bench_stopped(run); then calls bench_worker_done(run, ops) once, which
 *      counts its ops and stamps its end time (elapsed = last stamp - start);
 *   4. workers free what they hold after bench_worker_done (not timed);
 *   5. join the workers, set run->threads to the threads actually used, and
 *      return 0 (non-zero: the driver reports a failure).
 *
 * Shared state: `xstop`, `xops`, `xend_ns` are atomics (relaxed is enough: the
 * flag is advisory, the counters are read after pthread_join); the gate is
 * guarded by `gate_lock`. Everything else is written before the workers start
 * or after they are joined.
 */
#ifndef PANTRY_BENCH_H
#define PANTRY_BENCH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define BENCH_STOP_CHECK_MASK 255u /* check the stop flag every 256 ops */
#define BENCH_SIZE_MIN 16u
#define BENCH_SIZE_MAX 1024u
#define BENCH_SIZE_TABLE 1024u /* a power of two */
#define BENCH_MAX_COUNTERS 8

/* What the command line asked for. */
struct bench_args {
  const char *workload;
  unsigned threads; /* --threads, default 1 */
  double seconds;   /* --seconds, default 0.5; 0 in --ops mode */
  uint64_t ops;     /* --ops (total over all threads); 0 in --seconds mode */
  uint64_t seed;    /* --seed, default 1 */
};

/* One workload run, shared by the driver and the workload's threads. */
struct bench_run {
  struct bench_args args;  /* immutable during the run */
  unsigned threads;        /* set by the workload: threads it really used */
  _Atomic bool xstop;      /* atomic relaxed: raised at the deadline */
  _Atomic uint64_t xops;   /* atomic relaxed: ops counted by workers */
  _Atomic int64_t xend_ns; /* atomic relaxed: latest worker end stamp */
  int64_t start_ns;        /* written by bench_gate_open under gate_lock */

  pthread_mutex_t gate_lock;
  pthread_cond_t gate_cond;
  unsigned gate_ready; /* gate_lock */
  bool gate_open;      /* gate_lock */

  char note[256]; /* optional: reported as "note" */
  struct {
    const char *name;
    uint64_t value;
  } counters[BENCH_MAX_COUNTERS]; /* optional: extra JSON fields */
  unsigned counter_count;
};

typedef int (*bench_fn)(struct bench_run *run);

struct bench_workload {
  const char *name;
  const char *summary; /* one line, shown by --list and --help */
  bench_fn run;
};

/* bench_driver.c */
int bench_main(int argc, char **argv, const struct bench_workload *table, size_t count);
void bench_gate_wait(struct bench_run *run);
void bench_gate_open(struct bench_run *run, unsigned workers);
void bench_worker_done(struct bench_run *run, uint64_t ops);
uint64_t bench_quota(const struct bench_run *run, unsigned index, unsigned parts);
void bench_counter(struct bench_run *run, const char *name, uint64_t value);
void bench_note(struct bench_run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
_Noreturn void bench_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void bench_thread_start(pthread_t *thread, void *(*fn)(void *), void *arg);
void bench_thread_join(pthread_t thread);

/* Every workload adds what it read back from its blocks (bench_consume) here,
 * once per thread at the end, so the reads and the blocks cannot be elided. */
extern _Atomic uintptr_t bench_sink;

static inline int64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline bool bench_stopped(const struct bench_run *run) {
  /* racy by design: a stale false costs at most 256 more ops */
  return atomic_load_explicit(&((struct bench_run *)run)->xstop, memory_order_relaxed);
}

/* xorshift64*: small, fast, good enough to pick sizes and slots. */
static inline uint64_t bench_rng_next(uint64_t *state) {
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * UINT64_C(0x2545F4914F6CDD1D);
}

/* A seed for stream `stream` of the run's --seed (splitmix64; never 0). */
static inline uint64_t bench_rng_seed(uint64_t seed, uint64_t stream) {
  uint64_t z = seed + (stream + 1) * UINT64_C(0x9E3779B97F4A7C15);
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  z ^= z >> 31;
  return z ? z : 1;
}

/* A size in [BENCH_SIZE_MIN, BENCH_SIZE_MAX], uniform, from 32 random bits. */
static inline uint32_t bench_size_pick(uint64_t r) {
  const uint64_t span = BENCH_SIZE_MAX - BENCH_SIZE_MIN + 1;
  return BENCH_SIZE_MIN + (uint32_t)(((r >> 32) * span) >> 32);
}

/* Fill a table of BENCH_SIZE_TABLE random sizes; hot loops cycle through it
 * so that drawing a size costs one load. */
static inline void bench_size_table(uint32_t *sizes, uint64_t seed, uint64_t stream) {
  uint64_t rng = bench_rng_seed(seed, stream);
  for (unsigned i = 0; i < BENCH_SIZE_TABLE; i++)
    sizes[i] = bench_size_pick(bench_rng_next(&rng));
}

/* Touch a fresh block: a volatile write, so the allocation is observable. */
static inline void bench_touch(void *p, unsigned char value) {
  *(volatile unsigned char *)p = value;
}

/* Read a block's first byte back (volatile) before it is freed; the caller
 * sums the bytes and hands the sum to bench_sink_add once per thread. */
static inline unsigned bench_consume(const void *p) { return *(const volatile unsigned char *)p; }

static inline void bench_sink_add(uintptr_t value) {
  atomic_fetch_add_explicit(&bench_sink, value, memory_order_relaxed);
}

#endif /* PANTRY_BENCH_H */
