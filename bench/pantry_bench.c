/* pantry_bench.c - malloc/free workloads, run under whichever allocator the
 * process gets: plain libc, or one swapped in with LD_PRELOAD (pantry,
 * jemalloc, tcmalloc, mimalloc). It links against nothing but libc and
 * pthreads; bench/run is the runner that compares allocators.
 *
 * Workloads (an op is what the JSON line counts):
 *   pairs     each thread: malloc(16..1024), touch, free.   op = one pair
 *   batch     each thread: 1000 mallocs, touch, free them in allocation
 *             order, next round in reverse order.            op = one pair
 *   server    each worker: 4096 live slots; a step replaces a random slot;
 *             ~1/8 of the old blocks go to another worker's inbox and are
 *             freed there; every ~50k steps the worker thread exits and a new
 *             thread takes over its slots.                   op = one step
 *   prodcons  producers malloc, pass batches of 64 through a bounded queue,
 *             consumers free.                                 op = one block
 *
 * To add a workload: write `static int workload_x(struct bench_run *run)`
 * following the contract in bench.h (here, or in its own file declared in
 * bench.h) and add a row to `workloads[]` at the bottom.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *bench_malloc(size_t size) {
  void *p = malloc(size);
  if (p == NULL)
    bench_die("malloc(%zu) returned NULL", size);
  return p;
}

/* ---- pairs and batch: independent threads --------------------------------- */

struct solo_worker {
  _Alignas(64) struct bench_run *run;
  pthread_t thread;
  uint64_t quota;
  uint32_t sizes[BENCH_SIZE_TABLE];
};

static void *pairs_thread(void *arg) {
  struct solo_worker *w = arg;
  struct bench_run *run = w->run;
  uintptr_t acc = 0;
  uint64_t i;

  bench_gate_wait(run);
  for (i = 0; i < w->quota; i++) {
    if ((i & BENCH_STOP_CHECK_MASK) == 0 && bench_stopped(run))
      break;
    unsigned char *p = bench_malloc(w->sizes[i & (BENCH_SIZE_TABLE - 1)]);
    bench_touch(p, (unsigned char)i);
    acc += bench_consume(p);
    free(p);
  }
  bench_worker_done(run, i);
  bench_sink_add(acc);
  return NULL;
}

#define BATCH_BLOCKS 1000u

static void *batch_thread(void *arg) {
  struct solo_worker *w = arg;
  struct bench_run *run = w->run;
  unsigned char *blocks[BATCH_BLOCKS];
  uintptr_t acc = 0;
  uint64_t done = 0;
  unsigned cursor = 0;

  bench_gate_wait(run);
  /* the stop flag is checked once per batch (1000 ops), not every 256 */
  for (uint64_t round = 0; done < w->quota && !bench_stopped(run); round++) {
    unsigned n = w->quota - done < BATCH_BLOCKS ? (unsigned)(w->quota - done) : BATCH_BLOCKS;
    for (unsigned k = 0; k < n; k++) {
      uint32_t size = w->sizes[cursor++ & (BENCH_SIZE_TABLE - 1)];
      blocks[k] = bench_malloc(size);
      bench_touch(blocks[k], (unsigned char)k);
      bench_touch(blocks[k] + size - 1, (unsigned char)k);
    }
    if (round & 1) {
      for (unsigned k = n; k-- > 0;) {
        acc += bench_consume(blocks[k]);
        free(blocks[k]);
      }
    } else {
      for (unsigned k = 0; k < n; k++) {
        acc += bench_consume(blocks[k]);
        free(blocks[k]);
      }
    }
    done += n;
  }
  bench_worker_done(run, done);
  bench_sink_add(acc);
  return NULL;
}

static int solo_run(struct bench_run *run, void *(*fn)(void *)) {
  unsigned n = run->args.threads;
  struct solo_worker *workers = aligned_alloc(64, sizeof *workers * n);
  if (workers == NULL)
    bench_die("out of memory for %u workers", n);
  for (unsigned i = 0; i < n; i++) {
    workers[i].run = run;
    workers[i].quota = bench_quota(run, i, n);
    bench_size_table(workers[i].sizes, run->args.seed, i);
  }
  for (unsigned i = 0; i < n; i++)
    bench_thread_start(&workers[i].thread, fn, &workers[i]);
  bench_gate_open(run, n);
  for (unsigned i = 0; i < n; i++)
    bench_thread_join(workers[i].thread);
  free(workers);
  run->threads = n;
  return 0;
}

static int workload_pairs(struct bench_run *run) { return solo_run(run, pairs_thread); }
static int workload_batch(struct bench_run *run) { return solo_run(run, batch_thread); }

/* ---- server: live set, cross-thread frees, thread churn -------------------- */

#define SERVER_SLOTS 4096u       /* live blocks per worker; a power of two */
#define SERVER_OUTBOX 32u        /* handed-off blocks sent together */
#define SERVER_DRAIN_MASK 63u    /* drain the inbox every 64 steps */
#define SERVER_INBOX_CAP 4096u   /* blocks waiting in one inbox before senders wait */
#define SERVER_GENERATION 50000u /* steps per worker thread, +-25% */
#define SERVER_TAIL 0xA5u

/* A live block: bytes [0,4) hold `tag`, [4,6) hold `size`, the last byte holds
 * `tag ^ SERVER_TAIL`; the slot keeps the expected values, so a block handed
 * out twice, overwritten, or freed early shows as a mismatch. A handed-off
 * block also carries the link of its inbox list in bytes [6,14) (blocks are
 * at least 16 bytes, so the tail byte is clear of it): handing off never
 * allocates.
 *
 * Backpressure: a sender whose target inbox holds SERVER_INBOX_CAP blocks
 * drains its own inbox and yields until the target catches up (or has ended,
 * or the run is over). So a stalled worker (descheduled, or asleep on a lock
 * inside the allocator) neither grows the live set without bound nor changes
 * the mix of remote and local frees; `handoff_waits` counts such waits. */
#define SERVER_LINK_AT 6u
struct server_slot {
  unsigned char *p;
  uint32_t size;
  uint32_t tag;
};

struct server;

/* One worker's state. It outlives the worker's threads: each thread runs one
 * generation, then starts its successor and exits; the successor joins it
 * first, so exactly one thread at a time touches the fields marked owner. */
struct server_lane {
  _Alignas(64) struct server *srv;        /* immutable */
  unsigned index;                         /* immutable */
  uint64_t rng;                           /* owner */
  uint64_t quota;                         /* owner: steps left (UINT64_MAX in --seconds mode) */
  uint32_t serial;                        /* owner: tags handed out */
  unsigned next_target;                   /* owner: round robin over the other lanes */
  unsigned char *outbox_head;             /* owner: handed-off blocks not yet sent */
  unsigned char *outbox_tail;             /* owner */
  unsigned outbox_count;                  /* owner */
  uint64_t handoffs;                      /* owner */
  uint64_t handoff_waits;                 /* owner: flushes that met a full inbox */
  uint64_t generation;                    /* owner: threads that have run this lane, minus 1 */
  pthread_t prev;                         /* written before the successor starts */
  pthread_t cur;                          /* written by its starter, before the starter exits */
  struct server_slot slots[SERVER_SLOTS]; /* owner */

  /* atomic: other lanes push chains (CAS release), the owner takes the whole
   * list (exchange acquire); whole-list take means no ABA. */
  _Alignas(64) _Atomic(unsigned char *) xinbox;
  _Atomic unsigned xinbox_count; /* atomic relaxed: >= |xinbox|, for backpressure */
  _Atomic bool xended;           /* atomic relaxed: the lane's last thread has finished */
};

struct server {
  struct bench_run *run;
  struct server_lane **lanes;
  unsigned lane_count;
  pthread_mutex_t ended_lock;
  pthread_cond_t ended_cond;
  unsigned ended; /* ended_lock: lanes whose last thread has finished */
};

static void server_corrupt(const unsigned char *p, const char *where, uint32_t tag, uint32_t size,
                           unsigned char tail, uint32_t want_tag, uint32_t want_size) {
  bench_die("server: corrupted block %p found %s: head tag %08x size %u tail %02x,"
            " expected tag %08x size %u tail %02x",
            (const void *)p, where, tag, size, tail, want_tag, want_size,
            (unsigned char)(want_tag ^ SERVER_TAIL));
}

static uint32_t server_head_size(const unsigned char *p) {
  uint16_t size;
  memcpy(&size, p + 4, sizeof size);
  return size;
}

static void server_check(const struct server_slot *s, const char *where) {
  uint32_t tag, size = server_head_size(s->p);
  memcpy(&tag, s->p, sizeof tag);
  unsigned char tail = s->p[s->size - 1];
  if (tag != s->tag || size != s->size || tail != (unsigned char)(s->tag ^ SERVER_TAIL))
    server_corrupt(s->p, where, tag, size, tail, s->tag, s->size);
}

/* A handed-off block has no slot: check that head and tail agree. */
static void server_check_self(const unsigned char *p, const char *where) {
  uint32_t tag, size = server_head_size(p);
  memcpy(&tag, p, sizeof tag);
  if (size < BENCH_SIZE_MIN || size > BENCH_SIZE_MAX)
    server_corrupt(p, where, tag, size, 0, tag, 0);
  unsigned char tail = p[size - 1];
  if (tail != (unsigned char)(tag ^ SERVER_TAIL))
    server_corrupt(p, where, tag, size, tail, tag, size);
}

static unsigned char *server_link(const unsigned char *p) {
  unsigned char *next;
  memcpy(&next, p + SERVER_LINK_AT, sizeof next);
  return next;
}

static void server_set_link(unsigned char *p, unsigned char *next) {
  memcpy(p + SERVER_LINK_AT, &next, sizeof next);
}

static void server_fill(struct server_lane *lane, struct server_slot *s, uint32_t size) {
  s->p = bench_malloc(size);
  s->size = size;
  s->tag = (lane->serial++ * UINT32_C(0x9E3779B1)) ^ ((uint32_t)lane->index << 24);
  memcpy(s->p, &s->tag, sizeof s->tag);
  uint16_t size16 = (uint16_t)size;
  memcpy(s->p + 4, &size16, sizeof size16);
  s->p[size - 1] = (unsigned char)(s->tag ^ SERVER_TAIL);
}

/* Check and free a list of handed-off blocks; returns how many. */
static unsigned server_free_list(unsigned char *p, const char *where) {
  unsigned n = 0;
  while (p != NULL) {
    unsigned char *next = server_link(p);
    server_check_self(p, where);
    free(p);
    p = next;
    n++;
  }
  return n;
}

static void server_drain(struct server_lane *lane);

/* Push the outbox chain onto another lane's inbox (this lane's own when alone). */
static void server_flush(struct server_lane *lane) {
  struct server *srv = lane->srv;
  struct server_lane *target = lane;
  if (srv->lane_count > 1) {
    unsigned k = 1 + lane->next_target++ % (srv->lane_count - 1);
    target = srv->lanes[(lane->index + k) % srv->lane_count];
  }
  if (atomic_load_explicit(&target->xinbox_count, memory_order_relaxed) >= SERVER_INBOX_CAP) {
    lane->handoff_waits++;
    while (atomic_load_explicit(&target->xinbox_count, memory_order_relaxed) >= SERVER_INBOX_CAP &&
           !atomic_load_explicit(&target->xended, memory_order_relaxed) &&
           !bench_stopped(srv->run)) {
      server_drain(lane); /* two lanes waiting on each other both make progress */
      sched_yield();
    }
  }
  /* counted before the push, so the owner never subtracts a block not yet added */
  atomic_fetch_add_explicit(&target->xinbox_count, lane->outbox_count, memory_order_relaxed);
  unsigned char *head = atomic_load_explicit(&target->xinbox, memory_order_relaxed);
  do {
    server_set_link(lane->outbox_tail, head);
    /* release: matches the acquire exchange in server_drain, which then sees
     * the links and patterns written into the chain */
  } while (!atomic_compare_exchange_weak_explicit(&target->xinbox, &head, lane->outbox_head,
                                                  memory_order_release, memory_order_relaxed));
  lane->handoffs += lane->outbox_count;
  lane->outbox_head = lane->outbox_tail = NULL;
  lane->outbox_count = 0;
}

/* Free what other workers handed to this lane. */
static void server_drain(struct server_lane *lane) {
  if (atomic_load_explicit(&lane->xinbox, memory_order_relaxed) == NULL)
    return;
  /* acquire: matches the release CAS in server_flush */
  unsigned n = server_free_list(atomic_exchange_explicit(&lane->xinbox, NULL, memory_order_acquire),
                                "in an inbox");
  atomic_fetch_sub_explicit(&lane->xinbox_count, n, memory_order_relaxed);
}

static inline void server_step(struct server_lane *lane) {
  uint64_t r = bench_rng_next(&lane->rng);
  struct server_slot *s = &lane->slots[r & (SERVER_SLOTS - 1)];
  server_check(s, "in a slot");
  if (((r >> 12) & 7) == 0) {
    server_set_link(s->p, lane->outbox_head);
    if (lane->outbox_head == NULL)
      lane->outbox_tail = s->p;
    lane->outbox_head = s->p;
    if (++lane->outbox_count == SERVER_OUTBOX)
      server_flush(lane);
  } else {
    free(s->p);
  }
  server_fill(lane, s, bench_size_pick(r));
}

static void *server_thread(void *arg) {
  struct server_lane *lane = arg;
  struct server *srv = lane->srv;
  struct bench_run *run = srv->run;

  if (lane->generation > 0) {
    bench_thread_join(lane->prev); /* the predecessor has exited: the lane is ours */
  } else {
    for (unsigned i = 0; i < SERVER_SLOTS; i++)
      server_fill(lane, &lane->slots[i], bench_size_pick(bench_rng_next(&lane->rng)));
    bench_gate_wait(run);
  }

  uint64_t budget = SERVER_GENERATION - SERVER_GENERATION / 4 +
                    bench_rng_next(&lane->rng) % (SERVER_GENERATION / 2 + 1);
  uint64_t steps = 0;
  for (; steps < budget && lane->quota > 0; steps++, lane->quota--) {
    if ((steps & BENCH_STOP_CHECK_MASK) == 0 && bench_stopped(run))
      break;
    server_step(lane);
    if ((steps & SERVER_DRAIN_MASK) == SERVER_DRAIN_MASK)
      server_drain(lane);
  }
  bench_worker_done(run, steps);

  if (lane->quota > 0 && !bench_stopped(run)) {
    pthread_t next;
    lane->prev = pthread_self();
    lane->generation++;
    bench_thread_start(&next, server_thread, lane);
    lane->cur = next; /* the successor reads it only after joining this thread */
  } else {
    atomic_store_explicit(&lane->xended, true, memory_order_relaxed);
    pthread_mutex_lock(&srv->ended_lock);
    srv->ended++;
    pthread_cond_signal(&srv->ended_cond);
    pthread_mutex_unlock(&srv->ended_lock);
  }
  return NULL;
}

static int workload_server(struct bench_run *run) {
  unsigned n = run->args.threads;
  struct server srv = {.run = run, .lane_count = n};
  pthread_t *first = calloc(n, sizeof *first);
  srv.lanes = calloc(n, sizeof *srv.lanes);
  if (first == NULL || srv.lanes == NULL)
    bench_die("out of memory for %u lanes", n);
  pthread_mutex_init(&srv.ended_lock, NULL);
  pthread_cond_init(&srv.ended_cond, NULL);
  for (unsigned i = 0; i < n; i++) {
    struct server_lane *lane = aligned_alloc(64, sizeof *lane);
    if (lane == NULL)
      bench_die("out of memory for lane %u", i);
    memset(lane, 0, sizeof *lane);
    lane->srv = &srv;
    lane->index = i;
    lane->rng = bench_rng_seed(run->args.seed, i);
    lane->quota = bench_quota(run, i, n);
    atomic_init(&lane->xinbox, NULL);
    atomic_init(&lane->xinbox_count, 0);
    atomic_init(&lane->xended, false);
    srv.lanes[i] = lane;
  }

  for (unsigned i = 0; i < n; i++)
    bench_thread_start(&first[i], server_thread, srv.lanes[i]);
  bench_gate_open(run, n);
  pthread_mutex_lock(&srv.ended_lock);
  while (srv.ended < n)
    pthread_cond_wait(&srv.ended_cond, &srv.ended_lock);
  pthread_mutex_unlock(&srv.ended_lock);

  uint64_t handoffs = 0, waits = 0, replaced = 0;
  for (unsigned i = 0; i < n; i++) {
    struct server_lane *lane = srv.lanes[i];
    bench_thread_join(lane->generation > 0 ? lane->cur : first[i]);
    handoffs += lane->handoffs;
    waits += lane->handoff_waits;
    replaced += lane->generation;
  }
  /* All workers have exited; free everything from this thread (not timed). */
  for (unsigned i = 0; i < n; i++) {
    struct server_lane *lane = srv.lanes[i];
    server_free_list(lane->outbox_head, "in an outbox at the end");
    server_drain(lane);
  }
  for (unsigned i = 0; i < n; i++) {
    struct server_lane *lane = srv.lanes[i];
    for (unsigned k = 0; k < SERVER_SLOTS; k++) {
      server_check(&lane->slots[k], "in a slot at the end");
      free(lane->slots[k].p);
    }
    free(lane);
  }
  free(srv.lanes);
  free(first);

  bench_counter(run, "handoffs", handoffs);
  bench_counter(run, "handoff_waits", waits);
  bench_counter(run, "threads_replaced", replaced);
  if (n == 1)
    bench_note(run, "1 worker: handed-off blocks go to its own inbox and are freed later, "
                    "often by a successor thread");
  run->threads = n;
  return 0;
}

/* ---- prodcons: every block freed by a thread that did not allocate it ------ */

#define PC_BATCH 64u /* pointers per queue entry */
#define PC_QUEUE 64u /* queue entries; so at most 4096 blocks in flight */

struct pc_batch {
  unsigned count;
  void *blocks[PC_BATCH];
};

struct pc_queue {
  pthread_mutex_t lock; /* a bench lock, not the allocator's */
  pthread_cond_t not_empty, not_full;
  unsigned head, count;           /* lock */
  unsigned producers_left;        /* lock */
  struct pc_batch ring[PC_QUEUE]; /* lock */
};

struct pc_worker {
  _Alignas(64) struct bench_run *run;
  struct pc_queue *queue;
  pthread_t thread;
  uint64_t quota;
  uint32_t sizes[BENCH_SIZE_TABLE];
};

static void pc_push(struct pc_queue *q, const struct pc_batch *b) {
  pthread_mutex_lock(&q->lock);
  while (q->count == PC_QUEUE)
    pthread_cond_wait(&q->not_full, &q->lock);
  struct pc_batch *slot = &q->ring[(q->head + q->count) % PC_QUEUE];
  slot->count = b->count;
  memcpy(slot->blocks, b->blocks, b->count * sizeof b->blocks[0]);
  q->count++;
  pthread_cond_signal(&q->not_empty);
  pthread_mutex_unlock(&q->lock);
}

/* false once every producer is done and the queue is empty */
static bool pc_pop(struct pc_queue *q, struct pc_batch *b) {
  pthread_mutex_lock(&q->lock);
  while (q->count == 0 && q->producers_left > 0)
    pthread_cond_wait(&q->not_empty, &q->lock);
  bool got = q->count > 0;
  if (got) {
    const struct pc_batch *slot = &q->ring[q->head];
    b->count = slot->count;
    memcpy(b->blocks, slot->blocks, slot->count * sizeof slot->blocks[0]);
    q->head = (q->head + 1) % PC_QUEUE;
    q->count--;
    pthread_cond_signal(&q->not_full);
  }
  pthread_mutex_unlock(&q->lock);
  return got;
}

static void *producer_thread(void *arg) {
  struct pc_worker *w = arg;
  struct bench_run *run = w->run;
  struct pc_batch batch = {0};
  uint64_t i;

  bench_gate_wait(run);
  for (i = 0; i < w->quota; i++) {
    if ((i & BENCH_STOP_CHECK_MASK) == 0 && bench_stopped(run))
      break;
    uint32_t size = w->sizes[i & (BENCH_SIZE_TABLE - 1)];
    unsigned char *p = bench_malloc(size);
    bench_touch(p, (unsigned char)i);
    bench_touch(p + size - 1, (unsigned char)i);
    batch.blocks[batch.count++] = p;
    if (batch.count == PC_BATCH) {
      pc_push(w->queue, &batch);
      batch.count = 0;
    }
  }
  if (batch.count > 0)
    pc_push(w->queue, &batch);
  bench_worker_done(run, 0); /* ops are counted where blocks are freed */

  pthread_mutex_lock(&w->queue->lock);
  w->queue->producers_left--;
  pthread_cond_broadcast(&w->queue->not_empty);
  pthread_mutex_unlock(&w->queue->lock);
  return NULL;
}

static void *consumer_thread(void *arg) {
  struct pc_worker *w = arg;
  struct bench_run *run = w->run;
  struct pc_batch batch;
  uintptr_t acc = 0;
  uint64_t ops = 0;

  bench_gate_wait(run);
  while (pc_pop(w->queue, &batch)) {
    for (unsigned k = 0; k < batch.count; k++) {
      acc += bench_consume(batch.blocks[k]);
      free(batch.blocks[k]);
    }
    ops += batch.count;
  }
  bench_worker_done(run, ops);
  bench_sink_add(acc);
  return NULL;
}

static int workload_prodcons(struct bench_run *run) {
  unsigned producers = run->args.threads / 2 ? run->args.threads / 2 : 1;
  unsigned consumers = run->args.threads > producers ? run->args.threads - producers : 1;
  unsigned n = producers + consumers;
  struct pc_queue *q = calloc(1, sizeof *q);
  struct pc_worker *workers = aligned_alloc(64, sizeof *workers * n);
  if (q == NULL || workers == NULL)
    bench_die("out of memory for %u workers", n);
  pthread_mutex_init(&q->lock, NULL);
  pthread_cond_init(&q->not_empty, NULL);
  pthread_cond_init(&q->not_full, NULL);
  q->producers_left = producers;

  for (unsigned i = 0; i < n; i++) {
    workers[i].run = run;
    workers[i].queue = q;
    workers[i].quota = i < producers ? bench_quota(run, i, producers) : 0;
    bench_size_table(workers[i].sizes, run->args.seed, i);
  }
  for (unsigned i = 0; i < n; i++)
    bench_thread_start(&workers[i].thread, i < producers ? producer_thread : consumer_thread,
                       &workers[i]);
  bench_gate_open(run, n);
  for (unsigned i = 0; i < n; i++)
    bench_thread_join(workers[i].thread);

  pthread_mutex_destroy(&q->lock);
  pthread_cond_destroy(&q->not_empty);
  pthread_cond_destroy(&q->not_full);
  free(workers);
  free(q);
  bench_counter(run, "producers", producers);
  bench_counter(run, "consumers", consumers);
  if (run->args.threads == 1)
    bench_note(run, "--threads 1 runs 1 producer + 1 consumer (2 threads)");
  run->threads = n;
  return 0;
}

/* ---- the table ------------------------------------------------------------ */

static const struct bench_workload workloads[] = {
    {"pairs", "malloc+free pairs, sizes 16..1024, per thread", workload_pairs},
    {"batch", "1000 mallocs then 1000 frees (forward, then reverse), per thread", workload_batch},
    {"server", "4096 live blocks per worker, 1/8 freed remotely, worker threads replaced",
     workload_server},
    {"prodcons", "producers malloc, consumers free (batches of 64, bounded queue)",
     workload_prodcons},
};

int main(int argc, char **argv) {
  return bench_main(argc, argv, workloads, sizeof workloads / sizeof workloads[0]);
}
