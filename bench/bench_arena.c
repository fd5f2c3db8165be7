/* bench_arena.c - arena workloads: pantry's arenas against malloc-and-free of
 * each object, talloc and APR pools; and arena allocation throughput with
 * one or more threads in one arena. Linked against libpantry, talloc and
 * APR (when pkg-config found them); malloc-each runs under each peer
 * allocator by bench/run with LD_PRELOAD, like pantry_bench.
 *
 * The request (a variant serves one request per op): 100 objects of 16 to
 * 256 bytes (sizes cycle through a per-thread random table), each written at
 * both ends; every 10th owns something and gets a drop (a small function
 * that reads the object); then the request's memory is released. Each
 * variant keeps only what it needs: malloc-each remembers its 100 pointers
 * (to free them), the others do not.
 *   req-reset         pantry: one arena per thread, pantry_arena_reset per request
 *   req-destroy       pantry: pantry_arena_create / pantry_arena_destroy per request
 *   req-malloc        malloc each object; at the end the 10 drops run and all 100 are
 *                     freed, newest first (as a scope ends)
 *   req-talloc        talloc_new, talloc_size, talloc_set_destructor, talloc_free
 *   req-talloc-reset  one talloc context per thread, talloc_free_children per request
 *   req-apr           apr_pool_create (child of a per-thread pool with its own
 *                     allocator, as httpd does), apr_palloc, cleanup_register, destroy
 *   req-apr-clear     one APR pool per thread, apr_pool_clear per request
 *   req-vs            one thread, one process: every variant above (malloc-each as
 *                     glibc's malloc and as mimalloc's mi_malloc, reached with dlopen)
 *                     in slices of REQ_VS_SLICE requests, REQ_VS_ROUNDS rounds, the
 *                     order rotated each round; counters: the median thread CPU time
 *                     per request of each (<variant>_ps, picoseconds) and the speedups
 *                     of pantry reset and destroy over each (x1000). The figures the
 *                     issue asks for come from here: separate processes on a busy
 *                     machine drift more than the differences being measured.
 * Arena objects are 8-aligned (what a struct of pointers needs; APR aligns to
 * 8 too); malloc and talloc give 16.
 *
 * Arena allocation throughput (an op is one allocation):
 *   arena-alloc    N threads allocate in ONE arena (16..256 bytes, align 8,
 *                  first byte written), in rounds of ALLOC_ROUND allocations
 *                  per thread; between rounds all threads meet at a barrier
 *                  and thread 0 resets the arena. Besides the driver's
 *                  figures (which include barriers and resets), counters give
 *                  the allocation loops alone: loop_ps_per_alloc (average per
 *                  thread, wall time), agg_kops_loop (sum over threads of
 *                  allocations per second of loop wall time) and
 *                  agg_kops_cpu (the same with thread CPU time).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "bench.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pantry.h>
#ifdef BENCH_HAVE_TALLOC
#include <talloc.h>
#endif
#ifdef BENCH_HAVE_APR
#include <apr_general.h>
#include <apr_pools.h>
#endif

#define REQ_OBJECTS 100u
#define REQ_DROP_EVERY 10u
#define REQ_SIZE_MIN 16u
#define REQ_SIZE_MAX 256u
#define REQ_VS_SLICE 2000u /* requests per slice of req-vs */
#define REQ_VS_ROUNDS 21   /* slices per variant in req-vs */
#define ALLOC_ROUND 8192u  /* allocations per thread between resets */

static int64_t thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median_of(double *v, size_t n) {
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- mimalloc, reached directly (req-vs) ------------------------------------ */

static void *(*mi_malloc_p)(size_t);
static void (*mi_free_p)(void *);

static bool mimalloc_load(void) {
  static const char *const names[] = {
      "libmimalloc.so.2", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2", "libmimalloc.so"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
      continue;
    mi_malloc_p = (void *(*)(size_t))dlsym(h, "mi_malloc");
    mi_free_p = (void (*)(void *))dlsym(h, "mi_free");
    if (mi_malloc_p && mi_free_p)
      return true;
  }
  return false;
}

/* ---- the request, one function per variant ---------------------------------- */

/* A thread's state for serving requests, whichever the variant. */
struct req_env {
  uint32_t sizes[BENCH_SIZE_TABLE];
  unsigned cursor;
  uint64_t dropped;           /* what the drops read, summed */
  pantry_arena_t *arena;      /* req-reset's arena */
  void *(*malloc_fn)(size_t); /* req-malloc: malloc, or mi_malloc in req-vs */
  void (*free_fn)(void *);
  void *talloc_ctx; /* req-talloc-reset's context */
  void *apr_parent; /* req-apr's parent pool */
  void *apr_pool;   /* req-apr-clear's pool */
};

static void req_sizes(uint32_t *sizes, uint64_t seed, uint64_t stream) {
  uint64_t rng = bench_rng_seed(seed, stream);
  for (unsigned i = 0; i < BENCH_SIZE_TABLE; i++) {
    uint64_t r = bench_rng_next(&rng) >> 32;
    sizes[i] = REQ_SIZE_MIN + (uint32_t)((r * (REQ_SIZE_MAX - REQ_SIZE_MIN + 1)) >> 32);
  }
}

static inline uint32_t req_next_size(struct req_env *e) {
  return e->sizes[e->cursor++ & (BENCH_SIZE_TABLE - 1)];
}

static inline void req_touch(unsigned char *p, uint32_t size, unsigned k) {
  bench_touch(p, (unsigned char)k);
  bench_touch(p + size - 1, (unsigned char)k);
}

/* The drop: releases "what the object owns" -- here it reads the object. */
static void req_drop(void *obj, void *ctx) {
  *(uint64_t *)ctx += *(const volatile unsigned char *)obj;
}

static inline void req_pantry_fill(struct req_env *e, pantry_arena_t *a) {
  for (unsigned k = 0; k < REQ_OBJECTS; k++) {
    uint32_t size = req_next_size(e);
    unsigned char *p;
    if (k % REQ_DROP_EVERY == 0) {
      pantry_layout_t layout = {size, 8};
      p = pantry_arena_new(a, layout, req_drop, &e->dropped);
    } else {
      p = pantry_arena_alloc(a, size, 8);
    }
    if (p == NULL)
      bench_die("pantry_arena_alloc(%u) returned NULL", size);
    req_touch(p, size, k);
  }
}

static void req_reset(struct req_env *e) {
  req_pantry_fill(e, e->arena);
  pantry_arena_reset(e->arena);
}

static void req_destroy(struct req_env *e) {
  static const pantry_arena_config_t cfg = {.name = "request"};
  pantry_arena_t *a = pantry_arena_create(&cfg);
  if (a == NULL)
    bench_die("pantry_arena_create failed");
  req_pantry_fill(e, a);
  pantry_arena_destroy(a);
}

static void req_malloc(struct req_env *e) {
  unsigned char *blocks[REQ_OBJECTS];
  for (unsigned k = 0; k < REQ_OBJECTS; k++) {
    uint32_t size = req_next_size(e);
    unsigned char *p = e->malloc_fn(size);
    if (p == NULL)
      bench_die("malloc(%u) returned NULL", size);
    req_touch(p, size, k);
    blocks[k] = p;
  }
  for (unsigned k = REQ_OBJECTS; k-- > 0;) { /* the scope ends, newest first */
    if (k % REQ_DROP_EVERY == 0)
      req_drop(blocks[k], &e->dropped);
    e->free_fn(blocks[k]);
  }
}

#ifdef BENCH_HAVE_TALLOC
static _Thread_local uint64_t talloc_dropped;

static int req_talloc_destructor(void *obj) {
  req_drop(obj, &talloc_dropped);
  return 0;
}

static inline void req_talloc_fill(struct req_env *e, void *ctx) {
  for (unsigned k = 0; k < REQ_OBJECTS; k++) {
    uint32_t size = req_next_size(e);
    unsigned char *p = talloc_size(ctx, size);
    if (p == NULL)
      bench_die("talloc_size(%u) returned NULL", size);
    if (k % REQ_DROP_EVERY == 0)
      talloc_set_destructor((void *)p, req_talloc_destructor);
    req_touch(p, size, k);
  }
}

static void req_talloc(struct req_env *e) {
  void *ctx = talloc_new(NULL);
  if (ctx == NULL)
    bench_die("talloc_new failed");
  req_talloc_fill(e, ctx);
  talloc_free(ctx);
}

static void req_talloc_reset(struct req_env *e) {
  req_talloc_fill(e, e->talloc_ctx);
  talloc_free_children(e->talloc_ctx);
}
#endif

#ifdef BENCH_HAVE_APR
static _Thread_local uint64_t apr_dropped;

static apr_status_t req_apr_cleanup(void *obj) {
  req_drop(obj, &apr_dropped);
  return APR_SUCCESS;
}

static inline void req_apr_fill(struct req_env *e, apr_pool_t *pool) {
  for (unsigned k = 0; k < REQ_OBJECTS; k++) {
    uint32_t size = req_next_size(e);
    unsigned char *p = apr_palloc(pool, size);
    if (p == NULL)
      bench_die("apr_palloc(%u) returned NULL", size);
    if (k % REQ_DROP_EVERY == 0)
      apr_pool_cleanup_register(pool, p, req_apr_cleanup, apr_pool_cleanup_null);
    req_touch(p, size, k);
  }
}

/* A per-thread pool with its own allocator (no mutex), as a server thread has. */
static apr_pool_t *req_apr_thread_pool(void) {
  apr_allocator_t *allocator;
  apr_pool_t *pool;
  if (apr_allocator_create(&allocator) != APR_SUCCESS)
    bench_die("apr_allocator_create failed");
  if (apr_pool_create_ex(&pool, NULL, NULL, allocator) != APR_SUCCESS)
    bench_die("apr_pool_create_ex failed");
  apr_allocator_owner_set(allocator, pool);
  return pool;
}

static void req_apr(struct req_env *e) {
  apr_pool_t *pool;
  if (apr_pool_create(&pool, e->apr_parent) != APR_SUCCESS)
    bench_die("apr_pool_create failed");
  req_apr_fill(e, pool);
  apr_pool_destroy(pool);
}

static void req_apr_clear(struct req_env *e) {
  req_apr_fill(e, e->apr_pool);
  apr_pool_clear(e->apr_pool);
}

static void req_apr_init(void) {
  static bool done;
  if (!done && apr_initialize() != APR_SUCCESS)
    bench_die("apr_initialize failed");
  done = true;
}
#endif

/* Set up what every variant needs on this thread. */
static void req_env_init(struct req_env *e, uint64_t seed, uint64_t stream) {
  memset(e, 0, sizeof *e);
  req_sizes(e->sizes, seed, stream);
  pantry_arena_config_t cfg = {.name = "request"};
  e->arena = pantry_arena_create(&cfg);
  if (e->arena == NULL)
    bench_die("pantry_arena_create failed");
  e->malloc_fn = malloc;
  e->free_fn = free;
#ifdef BENCH_HAVE_TALLOC
  e->talloc_ctx = talloc_new(NULL);
#endif
#ifdef BENCH_HAVE_APR
  req_apr_init();
  e->apr_parent = req_apr_thread_pool();
  e->apr_pool = req_apr_thread_pool();
#endif
}

static void req_env_fini(struct req_env *e) {
  pantry_arena_destroy(e->arena);
#ifdef BENCH_HAVE_TALLOC
  talloc_free(e->talloc_ctx);
  e->dropped += talloc_dropped;
#endif
#ifdef BENCH_HAVE_APR
  apr_pool_destroy(e->apr_parent);
  apr_pool_destroy(e->apr_pool);
  e->dropped += apr_dropped;
#endif
}

/* ---- one variant per process, N threads ------------------------------------- */

struct req_worker {
  _Alignas(64) struct bench_run *run;
  pthread_t thread;
  uint64_t quota;
  unsigned index;
  void (*serve)(struct req_env *e);
  uint64_t dropped;
};

static void *req_thread(void *arg) {
  struct req_worker *w = arg;
  struct req_env *e = malloc(sizeof *e);
  if (e == NULL)
    bench_die("out of memory");
  req_env_init(e, w->run->args.seed, w->index);
  void (*serve)(struct req_env *) = w->serve;
  bench_gate_wait(w->run);
  uint64_t i;
  for (i = 0; i < w->quota; i++) {
    if ((i & BENCH_STOP_CHECK_MASK) == 0 && bench_stopped(w->run))
      break;
    serve(e);
  }
  bench_worker_done(w->run, i);
  req_env_fini(e);
  w->dropped = e->dropped;
  free(e);
  return NULL;
}

static int req_run(struct bench_run *run, void (*serve)(struct req_env *e)) {
  unsigned n = run->args.threads;
  struct req_worker *workers = aligned_alloc(64, sizeof *workers * n);
  if (workers == NULL)
    bench_die("out of memory for %u workers", n);
  for (unsigned i = 0; i < n; i++)
    workers[i] = (struct req_worker){
        .run = run, .quota = bench_quota(run, i, n), .index = i, .serve = serve};
  for (unsigned i = 0; i < n; i++)
    bench_thread_start(&workers[i].thread, req_thread, &workers[i]);
  bench_gate_open(run, n);
  uint64_t dropped = 0;
  for (unsigned i = 0; i < n; i++) {
    bench_thread_join(workers[i].thread);
    dropped += workers[i].dropped;
  }
  free(workers);
  run->threads = n;
  bench_counter(run, "objects_per_request", REQ_OBJECTS);
  bench_counter(run, "drops_per_request", REQ_OBJECTS / REQ_DROP_EVERY);
  bench_sink_add(dropped);
  return 0;
}

static int workload_req_reset(struct bench_run *run) { return req_run(run, req_reset); }
static int workload_req_destroy(struct bench_run *run) { return req_run(run, req_destroy); }
static int workload_req_malloc(struct bench_run *run) { return req_run(run, req_malloc); }
#ifdef BENCH_HAVE_TALLOC
static int workload_req_talloc(struct bench_run *run) { return req_run(run, req_talloc); }
static int workload_req_talloc_reset(struct bench_run *run) {
  return req_run(run, req_talloc_reset);
}
#endif
#ifdef BENCH_HAVE_APR
static int workload_req_apr(struct bench_run *run) { return req_run(run, req_apr); }
static int workload_req_apr_clear(struct bench_run *run) { return req_run(run, req_apr_clear); }
#endif

/* ---- every variant in one process, alternating (req-vs) ---------------------- */

enum { VS_RESET, VS_DESTROY, VS_GLIBC, VS_MIMALLOC, VS_TALLOC, VS_APR, VS_APR_CLEAR, VS_COUNT };
static const char *const vs_names[VS_COUNT] = {"reset",  "destroy", "glibc",    "mimalloc",
                                               "talloc", "apr",     "apr_clear"};

/* Serve `n` requests of variant v; returns thread CPU ps per request. */
static double vs_slice(int v, struct req_env *e, unsigned n, double *wall_ps) {
  e->malloc_fn = v == VS_MIMALLOC ? mi_malloc_p : malloc;
  e->free_fn = v == VS_MIMALLOC ? mi_free_p : free;
  int64_t c0 = thread_cpu_ns(), t0 = bench_now_ns();
  for (unsigned i = 0; i < n; i++) {
    switch (v) {
    case VS_RESET:
      req_reset(e);
      break;
    case VS_DESTROY:
      req_destroy(e);
      break;
    case VS_GLIBC:
    case VS_MIMALLOC:
      req_malloc(e);
      break;
#ifdef BENCH_HAVE_TALLOC
    case VS_TALLOC:
      req_talloc(e);
      break;
#endif
#ifdef BENCH_HAVE_APR
    case VS_APR:
      req_apr(e);
      break;
    case VS_APR_CLEAR:
      req_apr_clear(e);
      break;
#endif
    default:
      break;
    }
  }
  int64_t t1 = bench_now_ns();
  if (wall_ps)
    *wall_ps = (double)(t1 - t0) * 1000.0 / n;
  return (double)(thread_cpu_ns() - c0) * 1000.0 / n;
}

static void *vs_thread(void *arg) {
  struct bench_run *run = arg;
  bool have[VS_COUNT] = {true, true, true, mimalloc_load(), false, false, false};
#ifdef BENCH_HAVE_TALLOC
  have[VS_TALLOC] = true;
#endif
#ifdef BENCH_HAVE_APR
  have[VS_APR] = have[VS_APR_CLEAR] = true;
#endif
  static double cpu[VS_COUNT][REQ_VS_ROUNDS], wall[VS_COUNT][REQ_VS_ROUNDS];
  struct req_env *e = malloc(sizeof *e);
  if (e == NULL)
    bench_die("out of memory");
  req_env_init(e, run->args.seed, 0);
  for (int v = 0; v < VS_COUNT; v++) /* warm up each variant (first chunks, pages, nodes) */
    if (have[v])
      vs_slice(v, e, REQ_VS_SLICE / 4, NULL);
  bench_gate_wait(run);
  uint64_t ops = 0;
  for (int r = 0; r < REQ_VS_ROUNDS; r++) {
    for (int j = 0; j < VS_COUNT; j++) {
      int v = (j + r) % VS_COUNT; /* rotate the order every round */
      if (!have[v])
        continue;
      cpu[v][r] = vs_slice(v, e, REQ_VS_SLICE, &wall[v][r]);
      ops += REQ_VS_SLICE;
    }
  }
  bench_worker_done(run, ops);
  req_env_fini(e);
  bench_sink_add(e->dropped);
  free(e);

  static char names[VS_COUNT][32];
  double med[VS_COUNT], med_wall[VS_COUNT];
  for (int v = 0; v < VS_COUNT; v++) {
    if (!have[v])
      continue;
    med[v] = median_of(cpu[v], REQ_VS_ROUNDS);
    med_wall[v] = median_of(wall[v], REQ_VS_ROUNDS);
    snprintf(names[v], sizeof names[v], "%s_ps", vs_names[v]);
    bench_counter(run, names[v], (uint64_t)med[v]);
  }
  /* The speedups go in the note (the driver keeps at most 8 counters). */
  char note[256];
  int len = snprintf(note, sizeof note, "speedups x1000 (thread CPU; reset/destroy over):");
  for (int v = VS_GLIBC; v < VS_COUNT && len < (int)sizeof note; v++)
    if (have[v])
      len += snprintf(note + len, sizeof note - len, " %s %.0f/%.0f", vs_names[v],
                      1000.0 * med[v] / med[VS_RESET], 1000.0 * med[v] / med[VS_DESTROY]);
  if (len < (int)sizeof note)
    snprintf(note + len, sizeof note - len, "; wall ps reset %.0f destroy %.0f", med_wall[VS_RESET],
             med_wall[VS_DESTROY]);
  bench_note(run, "%s", note);
  return NULL;
}

static int workload_req_vs(struct bench_run *run) {
  pthread_t t;
  bench_thread_start(&t, vs_thread, run);
  bench_gate_open(run, 1);
  bench_thread_join(t);
  run->threads = 1;
  return 0;
}

/* ---- arena allocation throughput: N threads, one arena ----------------------- */

struct alloc_shared {
  struct bench_run *run;
  pantry_arena_t *arena;
  pthread_barrier_t barrier;
  bool go;         /* written by thread 0 before a barrier, read by all after it */
  uint64_t rounds; /* --ops mode: rounds to run */
};

struct alloc_worker {
  _Alignas(64) struct alloc_shared *shared;
  pthread_t thread;
  unsigned index;
  uint64_t allocs;
  int64_t loop_ns; /* wall time inside allocation loops */
  int64_t cpu_ns;  /* thread CPU time inside allocation loops */
  uint32_t sizes[BENCH_SIZE_TABLE];
};

static void *alloc_thread(void *arg) {
  struct alloc_worker *w = arg;
  struct alloc_shared *sh = w->shared;
  pantry_arena_t *a = sh->arena;
  unsigned cursor = 0;
  bench_gate_wait(sh->run);
  for (uint64_t round = 0;; round++) {
    if (w->index == 0)
      sh->go = sh->run->args.ops != 0 ? round < sh->rounds : !bench_stopped(sh->run);
    pthread_barrier_wait(&sh->barrier);
    if (!sh->go)
      break;
    int64_t t0 = bench_now_ns(), c0 = thread_cpu_ns();
    for (unsigned k = 0; k < ALLOC_ROUND; k++) {
      uint32_t size = w->sizes[cursor++ & (BENCH_SIZE_TABLE - 1)];
      unsigned char *p = pantry_arena_alloc(a, size, 8);
      if (p == NULL)
        bench_die("pantry_arena_alloc(%u) returned NULL", size);
      bench_touch(p, (unsigned char)k);
    }
    w->cpu_ns += thread_cpu_ns() - c0;
    w->loop_ns += bench_now_ns() - t0;
    w->allocs += ALLOC_ROUND;
    pthread_barrier_wait(&sh->barrier);
    if (w->index == 0)
      pantry_arena_reset(a);
  }
  bench_worker_done(sh->run, w->allocs);
  return NULL;
}

static int workload_arena_alloc(struct bench_run *run) {
  unsigned n = run->args.threads;
  struct alloc_shared sh = {.run = run};
  pantry_arena_config_t cfg = {.name = "shared"};
  sh.arena = pantry_arena_create(&cfg);
  if (sh.arena == NULL)
    bench_die("pantry_arena_create failed");
  if (run->args.ops != 0)
    sh.rounds = (run->args.ops + (uint64_t)n * ALLOC_ROUND - 1) / ((uint64_t)n * ALLOC_ROUND);
  pthread_barrier_init(&sh.barrier, NULL, n);
  struct alloc_worker *workers = aligned_alloc(64, sizeof *workers * n);
  if (workers == NULL)
    bench_die("out of memory for %u workers", n);
  for (unsigned i = 0; i < n; i++) {
    memset(&workers[i], 0, sizeof workers[i]);
    workers[i].shared = &sh;
    workers[i].index = i;
    req_sizes(workers[i].sizes, run->args.seed, i);
  }
  for (unsigned i = 0; i < n; i++)
    bench_thread_start(&workers[i].thread, alloc_thread, &workers[i]);
  bench_gate_open(run, n);
  double agg_loop = 0, agg_cpu = 0;
  int64_t loop_ns = 0;
  uint64_t allocs = 0;
  for (unsigned i = 0; i < n; i++) {
    bench_thread_join(workers[i].thread);
    if (workers[i].loop_ns > 0)
      agg_loop += (double)workers[i].allocs / workers[i].loop_ns;
    if (workers[i].cpu_ns > 0)
      agg_cpu += (double)workers[i].allocs / workers[i].cpu_ns;
    loop_ns += workers[i].loop_ns;
    allocs += workers[i].allocs;
  }
  pantry_arena_destroy(sh.arena);
  pthread_barrier_destroy(&sh.barrier);
  free(workers);
  run->threads = n;
  bench_counter(run, "loop_ps_per_alloc", allocs ? (uint64_t)(1000.0 * loop_ns / allocs) : 0);
  bench_counter(run, "agg_kops_loop", (uint64_t)(agg_loop * 1e6));
  bench_counter(run, "agg_kops_cpu", (uint64_t)(agg_cpu * 1e6));
  return 0;
}

static const struct bench_workload workloads[] = {
    {"req-reset", "request: pantry arena, reset per request", workload_req_reset},
    {"req-destroy", "request: pantry arena, create+destroy per request", workload_req_destroy},
    {"req-malloc", "request: malloc+free of each object (run under LD_PRELOAD)",
     workload_req_malloc},
#ifdef BENCH_HAVE_TALLOC
    {"req-talloc", "request: talloc_new+talloc_free per request", workload_req_talloc},
    {"req-talloc-reset", "request: talloc_free_children per request", workload_req_talloc_reset},
#endif
#ifdef BENCH_HAVE_APR
    {"req-apr", "request: APR child pool create+destroy per request", workload_req_apr},
    {"req-apr-clear", "request: APR pool cleared per request", workload_req_apr_clear},
#endif
    {"req-vs", "one process: every request variant alternating (thread CPU medians)",
     workload_req_vs},
    {"arena-alloc", "N threads allocate in one arena (reset between rounds)", workload_arena_alloc},
};

int main(int argc, char **argv) {
  return bench_main(argc, argv, workloads, sizeof workloads / sizeof workloads[0]);
}
