/* bench_pool.c - object pool workloads: pantry_pool_alloc/free against
 * malloc/free of the same size, destroying a pool of 1M live objects against
 * freeing them one by one, and objects that cross threads.
 *
 * It links libpantry for the pools; malloc and free are whatever the process
 * gets (glibc, or a peer swapped in with LD_PRELOAD by bench/run), and
 * mimalloc's mi_malloc/mi_free are also reached directly through dlopen, so
 * one process can alternate pool and mimalloc slices (the `*-vs-*`
 * workloads). Object size: PANTRY_BENCH_POOL_SIZE bytes (default 64), no
 * init or drop unless a workload says so.
 *
 * Workloads (an op is what the JSON line counts):
 *   pool-pairs      each thread: pantry_pool_alloc, touch, pantry_pool_free.   op = pair
 *   malloc-pairs    each thread: malloc(size), touch, free.                     op = pair
 *   pairs-vs-mi     one thread, one process: 11 rounds of 2^20 pairs each of
 *                   pool, mi_malloc/mi_free (dlsym), pantry_malloc/free and
 *                   malloc/free, alternating; counters: median ps per pair
 *                   of each, and pool's speedup over mi (x1000).      op = pair
 *   destroy         fill a pool with N live objects (untimed), then time
 *                   pantry_pool_destroy.                              op = object
 *   pool-free-each  fill a pool, time pantry_pool_free of each object.   op = object
 *   free-each       malloc N objects (untimed), time free of each.   op = object
 *   destroy-vs-free one process: 11 rounds of {fill a pool, time destroy,
 *                   then time urcu_bp_barrier: the deferred unmap} and
 *                   {malloc N, time free of each}, alternating; counters:
 *                   median µs of each, speedup (x10).                op = object
 *   pool-cross      threads in a ring: each allocates batches of 64, hands
 *                   them to the next thread, frees what it is handed (remote
 *                   frees).                                          op = object
 *   malloc-cross    the same with malloc/free.                       op = object
 * N is --ops (default 1000000) for the destroy and free workloads.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <dlfcn.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pantry.h>
#include <urcu/urcu-bp.h>

#include <urcu/call-rcu.h> /* after urcu-bp.h: urcu_bp_barrier */

#define POOL_BENCH_N_DEFAULT 1000000u
#define POOL_BENCH_ROUNDS 11
#define POOL_BENCH_SLICE (1u << 20)
#define CROSS_BATCH 64u
#define CROSS_RING 64u /* batches in flight per thread: a power of two */

static size_t bench_object_size(void) {
  const char *s = getenv("PANTRY_BENCH_POOL_SIZE");
  long v = s ? strtol(s, NULL, 10) : 0;
  return v > 0 ? (size_t)v : 64;
}

static pantry_pool_t *bench_pool_new(size_t size) {
  pantry_pool_config_t cfg = {.name = "bench", .layout = {size, 16}};
  pantry_pool_t *pool = pantry_pool_create(&cfg);
  if (pool == NULL)
    bench_die("pantry_pool_create failed");
  return pool;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median_of(double *v, size_t n) {
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- mimalloc, reached directly -------------------------------------------- */

typedef void *(*mi_malloc_fn)(size_t);
typedef void (*mi_free_fn)(void *);
static mi_malloc_fn mi_malloc_p;
static mi_free_fn mi_free_p;

static bool mimalloc_load(void) {
  static const char *const names[] = {
      "libmimalloc.so.2", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2", "libmimalloc.so"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
      continue;
    mi_malloc_p = (mi_malloc_fn)dlsym(h, "mi_malloc");
    mi_free_p = (mi_free_fn)dlsym(h, "mi_free");
    if (mi_malloc_p && mi_free_p)
      return true;
  }
  return false;
}

/* ---- pairs ------------------------------------------------------------------- */

struct pairs_worker {
  _Alignas(64) struct bench_run *run;
  pthread_t thread;
  uint64_t quota;
  pantry_pool_t *pool; /* NULL: malloc/free */
  size_t size;
};

static void *pairs_thread(void *arg) {
  struct pairs_worker *w = arg;
  struct bench_run *run = w->run;
  pantry_pool_t *pool = w->pool;
  uintptr_t acc = 0;
  uint64_t i;
  bench_gate_wait(run);
  if (pool != NULL) {
    for (i = 0; i < w->quota; i++) {
      if ((i & BENCH_STOP_CHECK_MASK) == 0 && bench_stopped(run))
        break;
      unsigned char *p = pantry_pool_alloc(pool);
      bench_touch(p, (unsigned char)i);
      acc += bench_consume(p);
      pantry_pool_free(pool, p);
    }
  } else {
    for (i = 0; i < w->quota; i++) {
      if ((i & BENCH_STOP_CHECK_MASK) == 0 && bench_stopped(run))
        break;
      unsigned char *p = malloc(w->size);
      if (p == NULL)
        bench_die("malloc(%zu) failed", w->size);
      bench_touch(p, (unsigned char)i);
      acc += bench_consume(p);
      free(p);
    }
  }
  bench_worker_done(run, i);
  bench_sink_add(acc);
  return NULL;
}

static int pairs_run(struct bench_run *run, bool use_pool) {
  unsigned n = run->args.threads;
  size_t size = bench_object_size();
  pantry_pool_t *pool = use_pool ? bench_pool_new(size) : NULL;
  struct pairs_worker *workers = aligned_alloc(64, sizeof *workers * n);
  if (workers == NULL)
    bench_die("out of memory for %u workers", n);
  for (unsigned i = 0; i < n; i++)
    workers[i] = (struct pairs_worker){
        .run = run, .quota = bench_quota(run, i, n), .pool = pool, .size = size};
  for (unsigned i = 0; i < n; i++)
    bench_thread_start(&workers[i].thread, pairs_thread, &workers[i]);
  bench_gate_open(run, n);
  for (unsigned i = 0; i < n; i++)
    bench_thread_join(workers[i].thread);
  free(workers);
  pantry_pool_destroy(pool);
  bench_note(run, "%zu-byte objects%s", size, use_pool ? ", pantry pool" : ", malloc/free");
  return 0;
}

static int workload_pool_pairs(struct bench_run *run) { return pairs_run(run, true); }
static int workload_malloc_pairs(struct bench_run *run) { return pairs_run(run, false); }

static int64_t thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Every variant is called through a function pointer, as mi_malloc/mi_free
 * (dlsym) must be: no variant pays a PLT jump the others do not. Volatile,
 * so the compiler cannot turn them back into direct calls. */
static void *(*volatile pool_alloc_fp)(pantry_pool_t *) = pantry_pool_alloc;
static void (*volatile pool_free_fp)(pantry_pool_t *, void *) = pantry_pool_free;
static void *(*volatile pantry_malloc_fp)(size_t) = pantry_malloc;
static void (*volatile pantry_free_fp)(void *) = pantry_free;
static void *(*volatile malloc_fp)(size_t) = malloc;
static void (*volatile free_fp)(void *) = free;

/* One timed slice of `n` pairs: ps per pair of this thread's CPU time
 * (*wall_ps: of wall time). kind: 0 pool, 1 mimalloc, 2 pantry_malloc,
 * 3 malloc. */
static double pairs_slice(int kind, pantry_pool_t *pool, size_t size, uint64_t n, uintptr_t *acc,
                          double *wall_ps) {
  void *(*pool_alloc)(pantry_pool_t *) = pool_alloc_fp;
  void (*pool_free)(pantry_pool_t *, void *) = pool_free_fp;
  void *(*alloc)(size_t) = kind == 1 ? mi_malloc_p : kind == 2 ? pantry_malloc_fp : malloc_fp;
  void (*dealloc)(void *) = kind == 1 ? mi_free_p : kind == 2 ? pantry_free_fp : free_fp;
  int64_t c0 = thread_cpu_ns();
  int64_t t0 = bench_now_ns();
  if (kind == 0) {
    for (uint64_t i = 0; i < n; i++) {
      unsigned char *p = pool_alloc(pool);
      bench_touch(p, (unsigned char)i);
      *acc += bench_consume(p);
      pool_free(pool, p);
    }
  } else {
    for (uint64_t i = 0; i < n; i++) {
      unsigned char *p = alloc(size);
      bench_touch(p, (unsigned char)i);
      *acc += bench_consume(p);
      dealloc(p);
    }
  }
  int64_t t1 = bench_now_ns();
  if (wall_ps)
    *wall_ps = (double)(t1 - t0) * 1000.0 / (double)n;
  return (double)(thread_cpu_ns() - c0) * 1000.0 / (double)n;
}

struct solo_arg {
  struct bench_run *run;
  int (*fn)(struct bench_run *run);
  int rc;
};

static void *solo_thread(void *arg) {
  struct solo_arg *a = arg;
  a->rc = a->fn(a->run);
  return NULL;
}

/* Run fn on one worker thread under the driver's gate (fn calls
 * bench_gate_wait and bench_worker_done itself). */
static int solo_run(struct bench_run *run, int (*fn)(struct bench_run *run)) {
  struct solo_arg a = {.run = run, .fn = fn};
  pthread_t t;
  bench_thread_start(&t, solo_thread, &a);
  bench_gate_open(run, 1);
  bench_thread_join(t);
  run->threads = 1;
  return a.rc;
}

static int pairs_vs_mi_body(struct bench_run *run) {
  size_t size = bench_object_size();
  bool have_mi = mimalloc_load();
  pantry_pool_t *pool = bench_pool_new(size);
  double ps[4][POOL_BENCH_ROUNDS], wall[4][POOL_BENCH_ROUNDS];
  uintptr_t acc = 0;
  int kinds = 4;
  /* warm every variant once (first pages, mimalloc's heap) */
  for (int k = 0; k < kinds; k++)
    if (k != 1 || have_mi)
      pairs_slice(k, pool, size, POOL_BENCH_SLICE / 8, &acc, NULL);
  bench_gate_wait(run);
  uint64_t ops = 0;
  for (int r = 0; r < POOL_BENCH_ROUNDS; r++) {
    for (int j = 0; j < kinds; j++) {
      int k = (j + r) % kinds; /* rotate the order every round */
      if (k == 1 && !have_mi)
        continue;
      ps[k][r] = pairs_slice(k, pool, size, POOL_BENCH_SLICE, &acc, &wall[k][r]);
      ops += POOL_BENCH_SLICE;
    }
  }
  bench_worker_done(run, ops);
  bench_sink_add(acc);
  pantry_pool_destroy(pool);
  double pool_ps = median_of(ps[0], POOL_BENCH_ROUNDS);
  bench_counter(run, "pool_ps", (uint64_t)pool_ps);
  bench_counter(run, "pantry_malloc_ps", (uint64_t)median_of(ps[2], POOL_BENCH_ROUNDS));
  bench_counter(run, "malloc_ps", (uint64_t)median_of(ps[3], POOL_BENCH_ROUNDS));
  double pool_wall = median_of(wall[0], POOL_BENCH_ROUNDS);
  bench_counter(run, "pool_wall_ps", (uint64_t)pool_wall);
  if (have_mi) {
    double mi_ps = median_of(ps[1], POOL_BENCH_ROUNDS);
    double mi_wall = median_of(wall[1], POOL_BENCH_ROUNDS);
    bench_counter(run, "mi_ps", (uint64_t)mi_ps);
    bench_counter(run, "mi_wall_ps", (uint64_t)mi_wall);
    bench_counter(run, "speedup_vs_mi_x1000", (uint64_t)(1000.0 * mi_ps / pool_ps));
    bench_counter(run, "speedup_wall_vs_mi_x1000", (uint64_t)(1000.0 * mi_wall / pool_wall));
  }
  bench_note(run,
             "%zu-byte objects; %d rounds of %u pairs per variant, order rotated; ps = "
             "median picoseconds of thread CPU time per pair (wall_ps: of wall time)%s",
             size, POOL_BENCH_ROUNDS, POOL_BENCH_SLICE,
             have_mi ? "" : "; mimalloc not found (no mi_ps)");
  return 0;
}

static int workload_pairs_vs_mi(struct bench_run *run) { return solo_run(run, pairs_vs_mi_body); }

/* ---- destroy against free each ----------------------------------------------- */

static uint64_t bench_n(const struct bench_run *run) {
  return run->args.ops ? run->args.ops : POOL_BENCH_N_DEFAULT;
}

static void **objects_array(uint64_t n) {
  void **v = malloc(sizeof *v * n);
  if (v == NULL)
    bench_die("out of memory for %llu pointers", (unsigned long long)n);
  return v;
}

static void pool_fill(pantry_pool_t *pool, void **v, uint64_t n) {
  for (uint64_t i = 0; i < n; i++) {
    unsigned char *p = pantry_pool_alloc(pool);
    if (p == NULL)
      bench_die("pantry_pool_alloc failed at %llu", (unsigned long long)i);
    bench_touch(p, (unsigned char)i);
    if (v)
      v[i] = p;
  }
}

static void malloc_fill(void **v, uint64_t n, size_t size) {
  for (uint64_t i = 0; i < n; i++) {
    unsigned char *p = malloc(size);
    if (p == NULL)
      bench_die("malloc failed at %llu", (unsigned long long)i);
    bench_touch(p, (unsigned char)i);
    v[i] = p;
  }
}

static int destroy_body(struct bench_run *run) {
  uint64_t n = bench_n(run);
  size_t size = bench_object_size();
  pantry_pool_t *pool = bench_pool_new(size);
  pool_fill(pool, NULL, n);
  bench_gate_wait(run);
  pantry_pool_destroy(pool);
  bench_worker_done(run, n);
  bench_note(run, "%zu-byte objects, no drop; op = one live object destroyed", size);
  return 0;
}

static int pool_free_each_body(struct bench_run *run) {
  uint64_t n = bench_n(run);
  size_t size = bench_object_size();
  pantry_pool_t *pool = bench_pool_new(size);
  void **v = objects_array(n);
  pool_fill(pool, v, n);
  bench_gate_wait(run);
  for (uint64_t i = 0; i < n; i++)
    pantry_pool_free(pool, v[i]);
  bench_worker_done(run, n);
  pantry_pool_destroy(pool);
  free(v);
  bench_note(run, "%zu-byte objects freed in allocation order", size);
  return 0;
}

static int free_each_body(struct bench_run *run) {
  uint64_t n = bench_n(run);
  size_t size = bench_object_size();
  void **v = objects_array(n);
  malloc_fill(v, n, size);
  bench_gate_wait(run);
  for (uint64_t i = 0; i < n; i++)
    free(v[i]);
  bench_worker_done(run, n);
  free(v);
  bench_note(run, "%zu-byte objects freed in allocation order", size);
  return 0;
}

static int destroy_vs_free_body(struct bench_run *run) {
  uint64_t n = bench_n(run);
  size_t size = bench_object_size();
  void **v = objects_array(n);
  double destroy_us[POOL_BENCH_ROUNDS], sync_us[POOL_BENCH_ROUNDS], free_us[POOL_BENCH_ROUNDS];
  double destroy_cpu[POOL_BENCH_ROUNDS], free_cpu[POOL_BENCH_ROUNDS];
  bench_gate_wait(run);
  for (int r = 0; r < POOL_BENCH_ROUNDS; r++) {
    for (int j = 0; j < 2; j++) {
      if ((j + r) % 2 == 0) {
        pantry_pool_t *pool = bench_pool_new(size);
        pool_fill(pool, NULL, n);
        int64_t c0 = thread_cpu_ns();
        int64_t t0 = bench_now_ns();
        pantry_pool_destroy(pool);
        int64_t t1 = bench_now_ns();
        destroy_cpu[r] = (double)(thread_cpu_ns() - c0) / 1000.0;
        urcu_bp_barrier(); /* the segments' deferred release (madvise/munmap) */
        int64_t t2 = bench_now_ns();
        destroy_us[r] = (double)(t1 - t0) / 1000.0;
        sync_us[r] = (double)(t2 - t0) / 1000.0;
      } else {
        malloc_fill(v, n, size);
        int64_t c0 = thread_cpu_ns();
        int64_t t0 = bench_now_ns();
        for (uint64_t i = 0; i < n; i++)
          free(v[i]);
        free_us[r] = (double)(bench_now_ns() - t0) / 1000.0;
        free_cpu[r] = (double)(thread_cpu_ns() - c0) / 1000.0;
      }
    }
  }
  bench_worker_done(run, 2 * n * POOL_BENCH_ROUNDS);
  free(v);
  double d = median_of(destroy_us, POOL_BENCH_ROUNDS);
  double s = median_of(sync_us, POOL_BENCH_ROUNDS);
  double f = median_of(free_us, POOL_BENCH_ROUNDS);
  bench_counter(run, "objects", n);
  bench_counter(run, "destroy_us", (uint64_t)(d + 0.5));
  bench_counter(run, "destroy_and_unmap_us", (uint64_t)(s + 0.5));
  bench_counter(run, "free_each_us", (uint64_t)(f + 0.5));
  bench_counter(run, "speedup_x10", (uint64_t)(10.0 * f / (d > 0.001 ? d : 0.001)));
  bench_counter(run, "speedup_with_unmap_x10", (uint64_t)(10.0 * f / (s > 0.001 ? s : 0.001)));
  bench_counter(run, "destroy_cpu_us", (uint64_t)(median_of(destroy_cpu, POOL_BENCH_ROUNDS) + 0.5));
  bench_counter(run, "free_each_cpu_us", (uint64_t)(median_of(free_cpu, POOL_BENCH_ROUNDS) + 0.5));
  bench_note(run,
             "%zu-byte objects, no drop; %d rounds, alternating; us = median wall "
             "microseconds (cpu_us: of the thread's CPU time); unmap = destroy + "
             "urcu_bp_barrier (the deferred release)",
             size, POOL_BENCH_ROUNDS);
  return 0;
}

static int workload_destroy(struct bench_run *run) { return solo_run(run, destroy_body); }
static int workload_pool_free_each(struct bench_run *run) {
  return solo_run(run, pool_free_each_body);
}
static int workload_free_each(struct bench_run *run) { return solo_run(run, free_each_body); }
static int workload_destroy_vs_free(struct bench_run *run) {
  return solo_run(run, destroy_vs_free_body);
}

/* ---- cross: objects freed by the next thread in a ring ----------------------- */

/* A single-producer single-consumer ring of batches. head: the consumer's;
 * tail: the producer's; acquire/release pair on each. */
struct cross_ring {
  _Alignas(64) _Atomic uint64_t head;
  _Alignas(64) _Atomic uint64_t tail;
  void **slots[CROSS_RING];
};

struct cross_worker {
  _Alignas(64) struct bench_run *run;
  pthread_t thread;
  uint64_t quota;
  pantry_pool_t *pool;
  size_t size;
  struct cross_ring *in;  /* ours to drain */
  struct cross_ring *out; /* the next thread's */
  void **batches;         /* CROSS_RING + 1 batch arrays of CROSS_BATCH pointers */
  uint64_t freed;
};

static unsigned cross_drain(struct cross_worker *w) {
  struct cross_ring *in = w->in;
  uint64_t head = atomic_load_explicit(&in->head, memory_order_relaxed);
  uint64_t tail = atomic_load_explicit(&in->tail, memory_order_acquire);
  unsigned got = 0;
  for (; head != tail; head++, got++) {
    void **batch = in->slots[head & (CROSS_RING - 1)];
    for (unsigned k = 0; k < CROSS_BATCH; k++) {
      if (w->pool)
        pantry_pool_free(w->pool, batch[k]);
      else
        free(batch[k]);
    }
    w->freed += CROSS_BATCH;
  }
  atomic_store_explicit(&in->head, head, memory_order_release);
  return got;
}

static void *cross_thread(void *arg) {
  struct cross_worker *w = arg;
  struct bench_run *run = w->run;
  uint64_t made = 0, round = 0;
  bench_gate_wait(run);
  while (made < w->quota && !bench_stopped(run)) {
    struct cross_ring *out = w->out;
    uint64_t tail = atomic_load_explicit(&out->tail, memory_order_relaxed);
    /* wait for room (the consumer releases slots as it drains) */
    while (tail - atomic_load_explicit(&out->head, memory_order_acquire) >= CROSS_RING) {
      if (cross_drain(w) == 0)
        sched_yield();
      if (bench_stopped(run))
        goto done;
    }
    /* the slot's batch array was returned when the consumer drained it */
    void **batch = w->batches + (size_t)(round++ % (CROSS_RING + 1)) * CROSS_BATCH;
    for (unsigned k = 0; k < CROSS_BATCH; k++) {
      unsigned char *p = w->pool ? pantry_pool_alloc(w->pool) : malloc(w->size);
      if (p == NULL)
        bench_die("allocation failed");
      bench_touch(p, (unsigned char)k);
      batch[k] = p;
    }
    out->slots[tail & (CROSS_RING - 1)] = batch;
    atomic_store_explicit(&out->tail, tail + 1, memory_order_release);
    made += CROSS_BATCH;
    cross_drain(w);
  }
done:
  bench_worker_done(run, made);
  return NULL;
}

static int cross_run(struct bench_run *run, bool use_pool) {
  unsigned n = run->args.threads < 2 ? 2 : run->args.threads;
  size_t size = bench_object_size();
  pantry_pool_t *pool = use_pool ? bench_pool_new(size) : NULL;
  struct cross_worker *w = aligned_alloc(64, sizeof *w * n);
  struct cross_ring *rings = aligned_alloc(64, sizeof *rings * n);
  if (w == NULL || rings == NULL)
    bench_die("out of memory for %u workers", n);
  for (unsigned i = 0; i < n; i++) {
    atomic_init(&rings[i].head, 0);
    atomic_init(&rings[i].tail, 0);
  }
  for (unsigned i = 0; i < n; i++) {
    w[i] = (struct cross_worker){.run = run,
                                 .quota = bench_quota(run, i, n),
                                 .pool = pool,
                                 .size = size,
                                 .in = &rings[i],
                                 .out = &rings[(i + 1) % n]};
    /* ring slots in flight plus the one being filled: batch arrays reused in order */
    w[i].batches = malloc(sizeof(void *) * CROSS_BATCH * (CROSS_RING + 1));
    if (w[i].batches == NULL)
      bench_die("out of memory");
  }
  for (unsigned i = 0; i < n; i++)
    bench_thread_start(&w[i].thread, cross_thread, &w[i]);
  bench_gate_open(run, n);
  for (unsigned i = 0; i < n; i++)
    bench_thread_join(w[i].thread);
  /* what is still in the rings (untimed) */
  for (unsigned i = 0; i < n; i++)
    cross_drain(&w[i]);
  for (unsigned i = 0; i < n; i++)
    free(w[i].batches);
  free(w);
  free(rings);
  pantry_pool_destroy(pool);
  run->threads = n;
  bench_note(run,
             "%zu-byte objects, %s; batches of %u handed to the next thread, which frees "
             "them",
             size, use_pool ? "pantry pool" : "malloc/free", CROSS_BATCH);
  return 0;
}

static int workload_pool_cross(struct bench_run *run) { return cross_run(run, true); }
static int workload_malloc_cross(struct bench_run *run) { return cross_run(run, false); }

/* ---- the table ------------------------------------------------------------ */

static const struct bench_workload workloads[] = {
    {"pool-pairs", "pantry_pool_alloc+free pairs, per thread", workload_pool_pairs},
    {"malloc-pairs", "malloc+free pairs of the same size, per thread", workload_malloc_pairs},
    {"pairs-vs-mi", "one process: pool, mi_malloc, pantry_malloc, malloc pairs alternating",
     workload_pairs_vs_mi},
    {"destroy", "time pantry_pool_destroy of N live objects (--ops, default 1M)", workload_destroy},
    {"pool-free-each", "time pantry_pool_free of each of N objects", workload_pool_free_each},
    {"free-each", "time free() of each of N malloc'd objects", workload_free_each},
    {"destroy-vs-free", "one process: destroy vs glibc free of each, alternating",
     workload_destroy_vs_free},
    {"pool-cross", "ring of threads: allocate batches, the next thread frees them (pool)",
     workload_pool_cross},
    {"malloc-cross", "the same with malloc/free", workload_malloc_cross},
};

int main(int argc, char **argv) {
  return bench_main(argc, argv, workloads, sizeof workloads / sizeof workloads[0]);
}
