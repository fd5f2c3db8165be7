/* bench_deferred.c - RCU-deferred frees: pantry_free_deferred against the
 * usual liburcu idiom, an rcu_head in every object, call_rcu, and free in
 * the callback. Links libpantry and liburcu-memb; run the `rcu_head`
 * workload under each malloc with LD_PRELOAD (glibc, mimalloc, ...) and the
 * `pantry` workload as is (bench/run's "deferred" section does both).
 *
 * Workloads (an op is one object allocated, touched and deferred; each
 * worker thread is registered with urcu-memb, as a server's threads are):
 *   rcu_head  malloc(size + 16) with a struct rcu_head at its start, touch,
 *             urcu_memb_call_rcu(head, callback); the callback frees it.
 *   pantry    pantry_malloc(size), touch, pantry_free_deferred(p).
 * Sizes are drawn from 16..1024 (bench.h's size table).
 *
 * What is timed: from the gate to the moment every deferred free of the run
 * has been done. Each worker, after its loop, calls its barrier
 * (urcu_memb_barrier / pantry_deferred_barrier) before bench_worker_done,
 * so ops/s counts frees completed, not frees queued: a variant whose
 * callbacks fall behind pays for it.
 *
 * Extra JSON field: worker_cpu_ns, the CPU time of the worker threads over
 * the same span (CLOCK_THREAD_CPUTIME_ID), summed: what the deferring
 * threads themselves pay per op, apart from the time other threads (the
 * call_rcu thread, pantry's worker) take from them on a busy machine.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <pantry.h>
#include <urcu/urcu-memb.h>

struct deferred_worker {
  _Alignas(64) struct bench_run *run;
  pthread_t thread;
  uint64_t quota;
  uint64_t cpu_ns; /* this thread's CPU time from the gate to its done */
  uint32_t sizes[BENCH_SIZE_TABLE];
};

static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- rcu_head: the usual idiom ------------------------------------------- */

struct object {
  struct rcu_head rcu; /* what every object carries for call_rcu */
  unsigned char data[];
};

static void object_free_rcu(struct rcu_head *head) {
  free(caa_container_of(head, struct object, rcu));
}

static void *rcu_head_thread(void *arg) {
  struct deferred_worker *w = arg;
  struct bench_run *run = w->run;
  uintptr_t acc = 0;
  uint64_t i;

  urcu_memb_register_thread();
  bench_gate_wait(run);
  uint64_t cpu0 = thread_cpu_ns();
  for (i = 0; i < w->quota; i++) {
    if ((i & BENCH_STOP_CHECK_MASK) == 0 && bench_stopped(run))
      break;
    struct object *o = malloc(sizeof(struct object) + w->sizes[i & (BENCH_SIZE_TABLE - 1)]);
    if (o == NULL)
      bench_die("malloc returned NULL");
    bench_touch(o->data, (unsigned char)i);
    acc += bench_consume(o->data);
    urcu_memb_call_rcu(&o->rcu, object_free_rcu);
  }
  urcu_memb_barrier(); /* every callback queued so far has run */
  w->cpu_ns = thread_cpu_ns() - cpu0;
  bench_worker_done(run, i);
  urcu_memb_unregister_thread();
  bench_sink_add(acc);
  return NULL;
}

/* ---- pantry: pantry_free_deferred ---------------------------------------- */

static void *pantry_thread(void *arg) {
  struct deferred_worker *w = arg;
  struct bench_run *run = w->run;
  uintptr_t acc = 0;
  uint64_t i;

  urcu_memb_register_thread();
  bench_gate_wait(run);
  uint64_t cpu0 = thread_cpu_ns();
  for (i = 0; i < w->quota; i++) {
    if ((i & BENCH_STOP_CHECK_MASK) == 0 && bench_stopped(run))
      break;
    unsigned char *p = pantry_malloc(w->sizes[i & (BENCH_SIZE_TABLE - 1)]);
    if (p == NULL)
      bench_die("pantry_malloc returned NULL");
    bench_touch(p, (unsigned char)i);
    acc += bench_consume(p);
    pantry_free_deferred(p);
  }
  pantry_deferred_barrier(); /* every free deferred so far is done */
  w->cpu_ns = thread_cpu_ns() - cpu0;
  bench_worker_done(run, i);
  urcu_memb_unregister_thread();
  bench_sink_add(acc);
  return NULL;
}

/* ---- the runs ------------------------------------------------------------ */

static int run_workers(struct bench_run *run, void *(*fn)(void *)) {
  unsigned n = run->args.threads;
  struct deferred_worker *workers = aligned_alloc(64, sizeof *workers * n);
  if (workers == NULL)
    bench_die("out of memory for %u workers", n);
  for (unsigned t = 0; t < n; t++) {
    workers[t].run = run;
    workers[t].quota = bench_quota(run, t, n);
    bench_size_table(workers[t].sizes, run->args.seed, t);
    bench_thread_start(&workers[t].thread, fn, &workers[t]);
  }
  bench_gate_open(run, n);
  uint64_t cpu_ns = 0;
  for (unsigned t = 0; t < n; t++) {
    bench_thread_join(workers[t].thread);
    cpu_ns += workers[t].cpu_ns;
  }
  bench_counter(run, "worker_cpu_ns", cpu_ns);
  free(workers);
  run->threads = n;
  return 0;
}

static int workload_rcu_head(struct bench_run *run) {
  bench_note(run, "rcu_head in each object + urcu_memb_call_rcu + free in the callback");
  return run_workers(run, rcu_head_thread);
}

static int workload_pantry(struct bench_run *run) {
  bench_note(run, "pantry_malloc + pantry_free_deferred (urcu-memb grace periods)");
  return run_workers(run, pantry_thread);
}

static const struct bench_workload workloads[] = {
    {"rcu_head", "malloc, call_rcu with an rcu_head per object, free in the callback",
     workload_rcu_head},
    {"pantry", "pantry_malloc, pantry_free_deferred", workload_pantry},
};

int main(int argc, char **argv) {
  return bench_main(argc, argv, workloads, sizeof workloads / sizeof workloads[0]);
}
