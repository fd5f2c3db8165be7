/* deferred.c - RCU-deferred frees: pantry_free_deferred frees a block after
 * a grace period of the RCU flavor that the program's readers use, so a
 * reader inside rcu_read_lock() may still be reading it.
 *
 * Layer: the top, beside alloc.c; calls alloc.h (the checks and the free of
 * pantry_free), os.c (slot memory) and liburcu: the flavor's call_rcu,
 * register_thread and barrier, and a wait-free queue (urcu/wfcqueue.h).
 *
 * The path of a pointer:
 *   1. pantry_free_deferred checks `p` as pantry_free would and appends it to
 *      the calling thread's batch: an array allocated by pantry, never the
 *      block itself. Nothing is written into the block until step 4.
 *   2. A batch is handed over when it is full (to the worker's queue), when
 *      the worker finds it idle for a tick or two (the time bound: it steals
 *      it), when its thread exits (pthread key destructor), and when a thread
 *      calls pantry_deferred_barrier (it steals every batch).
 *   3. The worker, a thread of pantry's registered with the chosen flavor
 *      (the only thread pantry ever registers), issues one call_rcu per
 *      batch. So the program's threads need not be registered, and a thread
 *      the program did register is never registered again.
 *   4. After the grace period, the batch's callback frees every pointer
 *      (on liburcu's call_rcu thread: a remote free), then the batch.
 *
 * Shared state and who writes it:
 *   slot->xbatch        the owner takes its batch out (exchange) and puts it
 *                       back (release store) around each append; the worker
 *                       and the barrier steal it with an exchange. Whoever
 *                       holds a batch (exchanged out, non-zero) owns it alone.
 *   slot->xin_use       claimed by CAS when a thread starts, released at exit.
 *   deferred_xslots     push-only list of slots (CAS push; never freed).
 *   deferred_queue      the handover queue: any thread enqueues (wait-free),
 *                       only the worker splices it (single consumer).
 *   deferred_xbatches   atomic: batches created and not yet freed by their
 *                       callback. Zero means no deferred free is pending.
 *   deferred_xwake      futex word: the worker's sleep state.
 *   deferred_xasked /   barrier tickets: a barrier takes a ticket; the
 *   deferred_xdone      worker publishes the last ticket it served.
 *
 * No lock on the free path: an append is one exchange and one store on the
 * thread's own slot; a handover is one wait-free enqueue; a new batch is a
 * pantry allocation and one atomic add. Only the worker, the barrier and
 * fork wait, never a thread that frees.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <urcu/wfcqueue.h>

#include "alloc.h"
#include "pantry.h"

#if defined(__SANITIZE_ADDRESS__)
#define DEFERRED_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DEFERRED_ASAN 1
#endif
#endif
#ifndef DEFERRED_ASAN
#define DEFERRED_ASAN 0
#endif
#if DEFERRED_ASAN
#include <sanitizer/asan_interface.h>
#endif

/* liburcu-memb, the default flavor. Declared here: internal.h included
 * urcu/call-rcu.h and urcu/flavor.h under urcu-bp's names, and their include
 * guards keep urcu-memb.h from declaring its own. */
extern const struct rcu_flavor_struct urcu_memb_flavor;
void urcu_memb_call_rcu_before_fork(void);
void urcu_memb_call_rcu_after_fork_parent(void);
void urcu_memb_call_rcu_after_fork_child(void);
struct call_rcu_data *urcu_memb_get_thread_call_rcu_data(void);

/* ------------------------------------------------------------------------ */
/* Tuning                                                                   */
/* ------------------------------------------------------------------------ */

/* One batch: 8 KiB, 1020 pointers, one call_rcu. */
#define DEFERRED_BATCH_BYTES ((size_t)8192)
/* The worker's tick. A partial batch seen unchanged at two ticks is handed
 * over: no pointer waits more than about two ticks before its call_rcu. */
#define DEFERRED_TICK_NS ((int64_t)10 * 1000 * 1000)
#define DEFERRED_FLAVORS_MAX 8
/* How many blocks ahead the callback prefetches the block it will free. */
#define DEFERRED_PREFETCH 8

/* ------------------------------------------------------------------------ */
/* Types                                                                    */
/* ------------------------------------------------------------------------ */

/* A batch of deferred pointers. Held by one thread at a time: its owner
 * (through slot->xbatch), then whoever stole or received it, then, after
 * call_rcu, the callback, which frees it.
 * Invariant: 1 <= count <= DEFERRED_BATCH_CAPACITY once handed over. */
typedef struct deferred_batch {
  struct rcu_head rcu_head;        /* holder: the batch's one call_rcu */
  struct cds_wfcq_node queue_node; /* holder: link in deferred_queue */
  uint32_t count;                  /* holder: items[0..count) wait */
  uint32_t reserved;
  uintptr_t items[];               /* holder: the deferred pointers */
} deferred_batch_t;

#define DEFERRED_BATCH_CAPACITY \
  ((uint32_t)((DEFERRED_BATCH_BYTES - sizeof(deferred_batch_t)) / sizeof(uintptr_t)))

/* A thread's place in pantry's list of batches. Slots are never freed; a
 * slot whose thread exited is claimed by the next thread that defers.
 * One cache line each, so a thread's appends do not bounce another's. */
typedef struct deferred_slot {
  _Alignas(64) pn_atomic_uintptr_t xbatch; /* atomic acq/rel: a non-empty batch, or 0 */
  pn_atomic_uintptr_t xin_use;             /* atomic acq/rel: 1 while a thread owns the slot */
  struct deferred_slot *next;              /* immutable once pushed on deferred_xslots */
  uintptr_t worker_seen;                   /* worker: xbatch at its previous tick */
} deferred_slot_t;

_Static_assert(sizeof(deferred_slot_t) == 64, "a slot is one cache line");

/* A flavor and the functions that rcu_flavor_struct lacks, found by name
 * (urcu_<flavor>_call_rcu_before_fork, ...). Immutable once published. */
typedef struct deferred_flavor {
  const struct rcu_flavor_struct *rcu;
  void (*before_fork)(void);
  void (*after_fork_parent)(void);
  void (*after_fork_child)(void);
  struct call_rcu_data *(*get_thread_call_rcu_data)(void);
} deferred_flavor_t;

/* Worker life (deferred_xlife) and sleep states (deferred_xwake). */
enum { LIFE_NONE, LIFE_STARTING, LIFE_STARTED, LIFE_SHUTDOWN };
enum { WAKE_RUNNING, WAKE_NAPPING, WAKE_IDLE };
/* Commands to the worker (deferred_xcommand), acknowledged in deferred_xack. */
enum { COMMAND_NONE, COMMAND_PAUSE, COMMAND_STOP };

/* ------------------------------------------------------------------------ */
/* State                                                                    */
/* ------------------------------------------------------------------------ */

static deferred_flavor_t deferred_flavors[DEFERRED_FLAVORS_MAX] = {
    {&urcu_memb_flavor, urcu_memb_call_rcu_before_fork, urcu_memb_call_rcu_after_fork_parent,
     urcu_memb_call_rcu_after_fork_child, urcu_memb_get_thread_call_rcu_data},
};
static unsigned deferred_flavor_count = 1;        /* deferred_control_lock */
static pn_atomic_uintptr_t deferred_xflavor;     /* atomic acq/rel: a deferred_flavors entry, 0 = [0] */
static pthread_mutex_t deferred_control_lock = PTHREAD_MUTEX_INITIALIZER; /* set_flavor only */

static pn_atomic_uintptr_t deferred_xslots;   /* atomic acq/rel: the list of slots */
static pn_atomic_uintptr_t deferred_xbatches; /* atomic acq/rel: batches not yet freed */

static struct __cds_wfcq_head deferred_queue_head; /* any thread enqueues; the worker splices */
static struct cds_wfcq_tail deferred_queue_tail;

static pn_atomic_uint32_t deferred_xlife;    /* atomic acq/rel: LIFE_* */
static pn_atomic_uint32_t deferred_xwake;    /* atomic, futex: WAKE_*, written by worker and kickers */
static pn_atomic_uint32_t deferred_xcommand; /* atomic, futex: COMMAND_*, written by fork and exit */
static pn_atomic_uint32_t deferred_xack;     /* atomic, futex: the command the worker obeys */
static pn_atomic_uintptr_t deferred_xasked;  /* atomic acq/rel: barrier tickets taken */
static pn_atomic_uint32_t deferred_xdone;    /* atomic, futex: low 32 bits of the last ticket served */
static pthread_t deferred_worker;            /* written by the thread that starts it */

static pthread_once_t deferred_once = PTHREAD_ONCE_INIT;
static pthread_key_t deferred_key; /* its destructor hands the exiting thread's batch over */
static pn_atomic_uint32_t deferred_xkey_made; /* atomic acq/rel: 1 once deferred_key exists */

static _Thread_local deferred_slot_t *deferred_tls_slot;
static _Thread_local bool deferred_tls_in_callback; /* a batch callback runs on this thread */

/* fork: what the prepare handler did, for the parent and child handlers.
 * Written and read by the forking thread only. */
static const deferred_flavor_t *deferred_fork_flavor;
static const struct rcu_flavor_struct *deferred_fork_online; /* the flavor it went offline in */
static bool deferred_fork_paused;

static const deferred_flavor_t *deferred_flavor(void) {
  uintptr_t f = pn_atomic_load_acquire(&deferred_xflavor);
  return f ? (const deferred_flavor_t *)f : &deferred_flavors[0];
}

/* ------------------------------------------------------------------------ */
/* Futexes and the clock                                                    */
/* ------------------------------------------------------------------------ */

/* Sleep while *word == value, at most `ns` nanoseconds (< 0: no bound). */
static void deferred_futex_wait(pn_atomic_uint32_t *word, uint32_t value, int64_t ns) {
  struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, value, ns < 0 ? NULL : &ts, NULL, 0);
}

static void deferred_futex_wake(pn_atomic_uint32_t *word, int count) {
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

static int64_t deferred_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* AddressSanitizer: a block is poisoned while it waits for its grace       */
/* period, so any write into it (by pantry or anyone) is reported.          */
/* ------------------------------------------------------------------------ */

static inline void deferred_poison(void *p, size_t usable) {
#if DEFERRED_ASAN
  ASAN_POISON_MEMORY_REGION(p, usable);
#else
  (void)p;
  (void)usable;
#endif
}

static inline void deferred_unpoison(void *p) {
#if DEFERRED_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, pn_usable_size_checked(p, "pantry_free_deferred"));
#else
  (void)p;
#endif
}

/* ------------------------------------------------------------------------ */
/* Batches                                                                  */
/* ------------------------------------------------------------------------ */

/* The callback of a batch's call_rcu: a grace period has passed since every
 * pointer in it was deferred. Runs on liburcu's call_rcu thread. */
static void deferred_batch_rcu(struct rcu_head *head) {
  deferred_batch_t *batch = caa_container_of(head, deferred_batch_t, rcu_head);
  deferred_tls_in_callback = true;
  uint32_t count = batch->count;
  for (uint32_t i = 0; i < count; i++) {
    void *p = (void *)batch->items[i];
    /* The blocks are cold (deferred long ago, maybe by another core) and
     * each free writes into its block: start the misses early. */
    if (i + DEFERRED_PREFETCH < count) __builtin_prefetch((void *)batch->items[i + DEFERRED_PREFETCH], 1);
    deferred_unpoison(p);
    pn_free_inline(p, "pantry_free_deferred");
  }
  deferred_tls_in_callback = false;
  pn_free_inline(batch, "pantry_free_deferred");
  /* Release: the frees above happen before any barrier that sees the count
   * drop (its acquire load in pantry_deferred_barrier). */
  pn_atomic_fetch_sub_acq_rel(&deferred_xbatches, 1);
}

/* Hand a full or stolen batch to the worker. Wait-free. */
static void deferred_handover(deferred_batch_t *batch) {
  cds_wfcq_node_init(&batch->queue_node);
  cds_wfcq_enqueue(&deferred_queue_head, &deferred_queue_tail, &batch->queue_node);
}

/* Issue the batch's call_rcu. Worker only (registered with `flavor`). */
static void deferred_batch_call_rcu(const deferred_flavor_t *flavor, deferred_batch_t *batch) {
  flavor->rcu->update_call_rcu(&batch->rcu_head, deferred_batch_rcu);
}

/* ------------------------------------------------------------------------ */
/* The worker                                                               */
/* ------------------------------------------------------------------------ */

/* Wake the worker if it sleeps (any sleep, or only an unbounded one). The
 * caller has published its reason (a ticket, a command, a new batch); the
 * fence orders that store before our read of the sleep state, as the
 * worker's fence orders its state store before its read of our reason. */
static void deferred_worker_kick(bool only_idle) {
  pn_atomic_fence_seq_cst();
  uint32_t state = pn_atomic_load_acquire32(&deferred_xwake);
  if (state == WAKE_RUNNING || (only_idle && state != WAKE_IDLE)) return;
  if (pn_atomic_cas_strong_acq_rel32(&deferred_xwake, &state, WAKE_RUNNING))
    deferred_futex_wake(&deferred_xwake, 1);
}

/* Call call_rcu for every batch in the queue. */
static void deferred_worker_drain(const deferred_flavor_t *flavor) {
  struct __cds_wfcq_head head;
  struct cds_wfcq_tail tail;
  __cds_wfcq_init(&head, &tail);
  if (__cds_wfcq_splice_blocking(&head, &tail, &deferred_queue_head, &deferred_queue_tail) ==
      CDS_WFCQ_RET_SRC_EMPTY)
    return;
  struct cds_wfcq_node *node, *next;
  flavor->rcu->thread_online();
  __cds_wfcq_for_each_blocking_safe(&head, &tail, node, next) {
    deferred_batch_call_rcu(flavor, caa_container_of(node, deferred_batch_t, queue_node));
  }
  flavor->rcu->thread_offline();
}

/* The time bound: steal every batch that has not changed since the last
 * tick (its thread defers slowly, or not at all any more). A batch freed and
 * reallocated at the same address in between is stolen a tick early: harmless. */
static void deferred_worker_age(const deferred_flavor_t *flavor) {
  bool online = false;
  for (deferred_slot_t *slot = (deferred_slot_t *)pn_atomic_load_acquire(&deferred_xslots);
       slot != NULL; slot = slot->next) {
    uintptr_t seen = pn_atomic_load_relaxed(&slot->xbatch);
    if (seen == 0 || seen != slot->worker_seen) {
      slot->worker_seen = seen;
      continue;
    }
    slot->worker_seen = 0;
    /* Acquire: matches the owner's release store, so its appends are seen. */
    uintptr_t batch = pn_atomic_exchange_acquire(&slot->xbatch, 0);
    if (batch == 0) continue;
    if (!online) flavor->rcu->thread_online();
    online = true;
    deferred_batch_call_rcu(flavor, (deferred_batch_t *)batch);
  }
  if (online) flavor->rcu->thread_offline();
}

/* Obey COMMAND_PAUSE (fork): leave the flavor's registry, say so, and wait
 * until the command is withdrawn. */
static void deferred_worker_pause(const struct rcu_flavor_struct **registered) {
  if (*registered != NULL) (*registered)->unregister_thread();
  *registered = NULL;
  pn_atomic_store_release32(&deferred_xack, COMMAND_PAUSE);
  deferred_futex_wake(&deferred_xack, INT_MAX);
  while (pn_atomic_load_acquire32(&deferred_xcommand) == COMMAND_PAUSE)
    deferred_futex_wait(&deferred_xcommand, COMMAND_PAUSE, -1);
  pn_atomic_store_release32(&deferred_xack, COMMAND_NONE);
}

/* Sleep until the next tick while batches are pending, or until kicked
 * when none is. Returns at once when there is work. */
static void deferred_worker_sleep(int64_t next_tick) {
  bool pending = pn_atomic_load_acquire(&deferred_xbatches) != 0;
  uint32_t state = pending ? WAKE_NAPPING : WAKE_IDLE;
  pn_atomic_store_release32(&deferred_xwake, state);
  /* Partner of the fence in deferred_worker_kick. */
  pn_atomic_fence_seq_cst();
  bool work = pn_atomic_load_acquire32(&deferred_xcommand) != COMMAND_NONE ||
              (uint32_t)pn_atomic_load_acquire(&deferred_xasked) !=
                  pn_atomic_load_acquire32(&deferred_xdone) ||
              (!pending && pn_atomic_load_acquire(&deferred_xbatches) != 0);
  if (!work) {
    int64_t ns = -1;
    if (pending) {
      ns = next_tick - deferred_now_ns();
      if (ns < 0) ns = 0;
    }
    if (ns != 0) deferred_futex_wait(&deferred_xwake, state, ns);
  }
  pn_atomic_store_release32(&deferred_xwake, WAKE_RUNNING);
}

static void *deferred_worker_main(void *arg) {
  (void)arg;
  const struct rcu_flavor_struct *registered = NULL;
  int64_t next_tick = deferred_now_ns() + DEFERRED_TICK_NS;
  for (;;) {
    uint32_t command = pn_atomic_load_acquire32(&deferred_xcommand);
    if (command == COMMAND_STOP) break;
    if (command == COMMAND_PAUSE) {
      deferred_worker_pause(&registered);
      continue;
    }
    const deferred_flavor_t *flavor = deferred_flavor();
    if (flavor->rcu != registered) {
      if (registered != NULL) registered->unregister_thread();
      registered = flavor->rcu;
      registered->register_thread();
      registered->thread_offline(); /* QSBR: online only around call_rcu */
    }
    /* Acquire: matches the barrier's ticket; the batches it enqueued before
     * taking the ticket are in the queue we drain next. */
    uintptr_t asked = pn_atomic_load_acquire(&deferred_xasked);
    deferred_worker_drain(flavor);
    int64_t now = deferred_now_ns();
    if (now >= next_tick) {
      deferred_worker_age(flavor);
      next_tick = now + DEFERRED_TICK_NS;
    }
    if ((uint32_t)asked != pn_atomic_load_acquire32(&deferred_xdone)) {
      /* Release: every call_rcu above happens before the barrier's wake. */
      pn_atomic_store_release32(&deferred_xdone, (uint32_t)asked);
      deferred_futex_wake(&deferred_xdone, INT_MAX);
    }
    deferred_worker_sleep(next_tick);
  }
  if (registered != NULL) registered->unregister_thread();
  pn_atomic_store_release32(&deferred_xack, COMMAND_STOP);
  return NULL;
}

/* Start the worker if it is not running. A thread that finds another one
 * starting it does not wait: its batches just queue. */
static void deferred_worker_ensure(void) {
  if (PN_LIKELY(pn_atomic_load_acquire32(&deferred_xlife) != LIFE_NONE)) return;
  uint32_t expected = LIFE_NONE;
  if (!pn_atomic_cas_strong_acq_rel32(&deferred_xlife, &expected, LIFE_STARTING)) return;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old); /* the worker takes no signals */
  int err = pthread_create(&deferred_worker, NULL, deferred_worker_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err != 0) {
    pn_warning("pantry_free_deferred: cannot start the worker thread (%s); deferred frees wait "
               "until a later call starts it",
               strerror(err));
    pn_atomic_store_release32(&deferred_xlife, LIFE_NONE);
    return;
  }
  pn_atomic_store_release32(&deferred_xlife, LIFE_STARTED);
}

/* Stop and join the worker (library unload, process exit). */
static void deferred_worker_stop(void) {
  uint32_t life = pn_atomic_load_acquire32(&deferred_xlife);
  while (!pn_atomic_cas_strong_acq_rel32(&deferred_xlife, &life, LIFE_SHUTDOWN)) {
  }
  if (life != LIFE_STARTED) return;
  pn_atomic_store_release32(&deferred_xcommand, COMMAND_STOP);
  deferred_futex_wake(&deferred_xcommand, INT_MAX);
  deferred_worker_kick(false);
  pthread_join(deferred_worker, NULL);
}

/* ------------------------------------------------------------------------ */
/* Slots                                                                    */
/* ------------------------------------------------------------------------ */

/* Thread exit (pthread key destructor): hand the thread's batch over and
 * free its slot for the next thread. */
static void deferred_thread_exit(void *value) {
  deferred_slot_t *slot = value;
  deferred_tls_slot = NULL;
  uintptr_t batch = pn_atomic_exchange_acquire(&slot->xbatch, 0);
  if (batch != 0) deferred_handover((deferred_batch_t *)batch);
  pn_atomic_store_release(&slot->xin_use, 0);
}

static void deferred_fork_prepare(void);
static void deferred_fork_parent(void);
static void deferred_fork_child(void);

static void deferred_init_once(void) {
  __cds_wfcq_init(&deferred_queue_head, &deferred_queue_tail);
  if (pthread_key_create(&deferred_key, deferred_thread_exit) != 0)
    pn_fatal("pantry_free_deferred: pthread_key_create failed: cannot track thread exits");
  pn_atomic_store_release32(&deferred_xkey_made, 1);
  pthread_atfork(deferred_fork_prepare, deferred_fork_parent, deferred_fork_child);
}

/* A slot for the calling thread: a free one, or one of 64 new ones. */
static PN_NOINLINE PN_COLD deferred_slot_t *deferred_slot_acquire(void) {
  pthread_once(&deferred_once, deferred_init_once);
  deferred_worker_ensure();
  deferred_slot_t *slot = (deferred_slot_t *)pn_atomic_load_acquire(&deferred_xslots);
  for (; slot != NULL; slot = slot->next) {
    uintptr_t expected = 0;
    if (pn_atomic_load_relaxed(&slot->xin_use) == 0 &&
        pn_atomic_cas_strong_acq_rel(&slot->xin_use, &expected, 1))
      break;
  }
  if (slot == NULL) {
    deferred_slot_t *chunk = pn_os_alloc_aligned(PN_OS_PAGE_SIZE, PN_OS_PAGE_SIZE);
    if (chunk == NULL) return NULL;
    size_t n = PN_OS_PAGE_SIZE / sizeof(deferred_slot_t);
    memset(chunk, 0, PN_OS_PAGE_SIZE);
    for (size_t i = 0; i + 1 < n; i++) chunk[i].next = &chunk[i + 1];
    pn_atomic_store_relaxed(&chunk[0].xin_use, 1);
    uintptr_t head = pn_atomic_load_relaxed(&deferred_xslots);
    do {
      chunk[n - 1].next = (deferred_slot_t *)head;
      /* Release: the slots' fields are set before a walker can reach them. */
    } while (!pn_atomic_cas_weak_release(&deferred_xslots, &head, (uintptr_t)chunk));
    slot = &chunk[0];
  }
  deferred_tls_slot = slot;
  pthread_setspecific(deferred_key, slot);
  return slot;
}

/* Take every batch out of every slot and queue it (the barrier, the exit). */
static void deferred_steal_all(void) {
  for (deferred_slot_t *slot = (deferred_slot_t *)pn_atomic_load_acquire(&deferred_xslots);
       slot != NULL; slot = slot->next) {
    if (pn_atomic_load_relaxed(&slot->xbatch) == 0) continue;
    uintptr_t batch = pn_atomic_exchange_acquire(&slot->xbatch, 0);
    if (batch != 0) deferred_handover((deferred_batch_t *)batch);
  }
}

/* ------------------------------------------------------------------------ */
/* Deferring                                                                */
/* ------------------------------------------------------------------------ */

static PN_NOINLINE PN_COLD deferred_batch_t *deferred_batch_new(void) {
  deferred_batch_t *batch = pn_malloc_inline(DEFERRED_BATCH_BYTES);
  if (batch == NULL) return NULL;
  batch->count = 0;
  deferred_worker_ensure(); /* after fork, the child's first batch starts one */
  pn_atomic_fetch_add_acq_rel(&deferred_xbatches, 1);
  deferred_worker_kick(true); /* the worker sleeps without a bound only when none is pending */
  return batch;
}

/* Append `p` (checked, `usable` bytes) to the calling thread's batch. */
static inline void deferred_push(void *p, size_t usable) {
  deferred_slot_t *slot = deferred_tls_slot;
  if (PN_UNLIKELY(slot == NULL)) {
    slot = deferred_slot_acquire();
    if (slot == NULL) goto leak;
  }
  /* Acquire: matches our own previous release store (or sees 0: stolen). */
  deferred_batch_t *batch = (deferred_batch_t *)pn_atomic_exchange_acquire(&slot->xbatch, 0);
  if (batch == NULL) {
    batch = deferred_batch_new();
    if (batch == NULL) goto leak;
  }
  deferred_poison(p, usable);
  batch->items[batch->count++] = (uintptr_t)p;
  if (PN_UNLIKELY(batch->count == DEFERRED_BATCH_CAPACITY)) {
    deferred_handover(batch);
    batch = NULL;
  }
  /* Release: the append above is visible to a stealer's acquire exchange. */
  pn_atomic_store_release(&slot->xbatch, (uintptr_t)batch);
  return;
leak:
  pn_warning("pantry_free_deferred(%p): out of memory for a batch; the block is never freed",
             p);
}

void pantry_free_deferred(void *p) {
  if (p == NULL) return;
  size_t usable = pn_usable_size_checked(p, "pantry_free_deferred");
  deferred_push(p, usable);
}

/* ------------------------------------------------------------------------ */
/* The barrier                                                              */
/* ------------------------------------------------------------------------ */

/* Diagnose a barrier that would wait for itself. */
static void deferred_check_waiter(const deferred_flavor_t *flavor, const char *fn) {
  if (deferred_tls_in_callback)
    pn_fatal("%s: called from a deferred free's callback (an RCU callback): it would wait for "
             "itself",
             fn);
  if (flavor->get_thread_call_rcu_data != NULL && flavor->get_thread_call_rcu_data() != NULL)
    pn_fatal("%s: called from an RCU callback (a call_rcu worker thread of the readers' flavor): "
             "it would wait for itself",
             fn);
  /* QSBR: an online thread is fine (it goes offline while it waits, as
   * rcu_barrier does); any flavor: a read-side critical section is not. */
  if (flavor->rcu->read_ongoing()) {
    flavor->rcu->thread_offline();
    bool inside = flavor->rcu->read_ongoing();
    flavor->rcu->thread_online();
    if (inside)
      pn_fatal("%s: called inside an RCU read-side critical section (between rcu_read_lock and "
               "rcu_read_unlock): the grace period would wait for this thread forever",
               fn);
  }
}

/* Every batch handed over before the call gets its call_rcu, and every
 * callback issued before it has run. */
static void deferred_barrier_wait(const deferred_flavor_t *flavor) {
  deferred_steal_all();
  deferred_worker_ensure();
  /* Release: our enqueues happen before the worker's acquire of the ticket. */
  uintptr_t ticket = pn_atomic_fetch_add_acq_rel(&deferred_xasked, 1) + 1;
  deferred_worker_kick(false);
  for (;;) {
    uint32_t done = pn_atomic_load_acquire32(&deferred_xdone);
    if ((int32_t)(done - (uint32_t)ticket) >= 0) break;
    uint32_t life = pn_atomic_load_acquire32(&deferred_xlife);
    if (life == LIFE_NONE || life == LIFE_SHUTDOWN) {
      /* No worker (it could not start, or the library is shutting down):
       * nobody can serve the ticket. */
      pn_warning("pantry_deferred_barrier: no worker thread; deferred frees still pending");
      return;
    }
    deferred_futex_wait(&deferred_xdone, done, DEFERRED_TICK_NS);
  }
  flavor->rcu->barrier();
}

void pantry_deferred_barrier(void) {
  const deferred_flavor_t *flavor = deferred_flavor();
  deferred_check_waiter(flavor, "pantry_deferred_barrier");
  /* Acquire: matches the callbacks' release decrements. Zero: every
   * deferred free that happened before this call has been done. */
  if (pn_atomic_load_acquire(&deferred_xbatches) == 0) return;
  deferred_barrier_wait(flavor);
}

/* ------------------------------------------------------------------------ */
/* The flavor                                                               */
/* ------------------------------------------------------------------------ */

/* Find urcu_<flavor>_<suffix> next to the flavor's symbol (urcu_<flavor>_flavor). */
static void *deferred_flavor_symbol(void *lib, const char *prefix, const char *suffix) {
  char name[96];
  int n = snprintf(name, sizeof name, "%s%s", prefix, suffix);
  if (n < 0 || (size_t)n >= sizeof name) return NULL;
  return dlsym(lib ? lib : RTLD_DEFAULT, name);
}

/* Fill in the fork and callback-thread functions of `flavor`, found by name.
 * Those it cannot find stay NULL (fork and the callback check then rely on
 * the program). */
static void deferred_flavor_resolve(deferred_flavor_t *flavor) {
  Dl_info info;
  if (dladdr(flavor->rcu, &info) == 0 || info.dli_sname == NULL) return;
  size_t len = strlen(info.dli_sname);
  const char *suffix = "flavor";
  if (len <= strlen(suffix) || strcmp(info.dli_sname + len - strlen(suffix), suffix) != 0) return;
  char prefix[64];
  size_t plen = len - strlen(suffix);
  if (plen >= sizeof prefix) return;
  memcpy(prefix, info.dli_sname, plen);
  prefix[plen] = '\0';
  void *lib = info.dli_fname ? dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD) : NULL;
  flavor->before_fork = (void (*)(void))deferred_flavor_symbol(lib, prefix, "call_rcu_before_fork");
  flavor->after_fork_parent =
      (void (*)(void))deferred_flavor_symbol(lib, prefix, "call_rcu_after_fork_parent");
  flavor->after_fork_child =
      (void (*)(void))deferred_flavor_symbol(lib, prefix, "call_rcu_after_fork_child");
  flavor->get_thread_call_rcu_data = (struct call_rcu_data * (*)(void))
      deferred_flavor_symbol(lib, prefix, "get_thread_call_rcu_data");
  if (lib != NULL) dlclose(lib); /* only drops the reference NOLOAD took */
  if (flavor->before_fork == NULL || flavor->after_fork_parent == NULL ||
      flavor->after_fork_child == NULL) {
    flavor->before_fork = flavor->after_fork_parent = flavor->after_fork_child = NULL;
  }
}

int pantry_deferred_set_flavor(const void *rcu_flavor) {
  const struct rcu_flavor_struct *rcu = rcu_flavor ? rcu_flavor : &urcu_memb_flavor;
  if (rcu->read_lock == NULL || rcu->read_unlock == NULL || rcu->read_ongoing == NULL ||
      rcu->update_call_rcu == NULL || rcu->barrier == NULL || rcu->register_thread == NULL ||
      rcu->unregister_thread == NULL || rcu->thread_offline == NULL ||
      rcu->thread_online == NULL)
    return EINVAL;
  pthread_mutex_lock(&deferred_control_lock);
  const deferred_flavor_t *old = deferred_flavor();
  const deferred_flavor_t *flavor = NULL;
  for (unsigned i = 0; i < deferred_flavor_count; i++)
    if (deferred_flavors[i].rcu == rcu) flavor = &deferred_flavors[i];
  if (flavor == NULL) {
    if (deferred_flavor_count == DEFERRED_FLAVORS_MAX) {
      pthread_mutex_unlock(&deferred_control_lock);
      return ENOMEM;
    }
    deferred_flavor_t *fresh = &deferred_flavors[deferred_flavor_count];
    *fresh = (deferred_flavor_t){.rcu = rcu};
    deferred_flavor_resolve(fresh);
    flavor = fresh;
    deferred_flavor_count++;
  }
  if (flavor != old) {
    /* What was deferred under the old flavor waits for the old flavor's
     * grace period; only then do new call_rcus go to the new one. */
    if (pn_atomic_load_acquire(&deferred_xbatches) != 0) {
      deferred_check_waiter(old, "pantry_deferred_set_flavor");
      deferred_barrier_wait(old);
    }
    /* Release: the entry's fields are set before anyone reads them. */
    pn_atomic_store_release(&deferred_xflavor, (uintptr_t)flavor);
  }
  pthread_mutex_unlock(&deferred_control_lock);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* fork                                                                     */
/* ------------------------------------------------------------------------ */

/* Before fork: park the worker outside liburcu (and out of the flavor's
 * registry), then quiesce the flavor's call_rcu threads. Neither waits on an
 * allocation: pantry's frees take no lock, so a callback that frees during
 * the handshake cannot deadlock with it. */
static void deferred_fork_prepare(void) {
  deferred_fork_flavor = NULL;
  deferred_fork_paused = false;
  if (pn_atomic_load_acquire32(&deferred_xlife) != LIFE_STARTED) return;
  const deferred_flavor_t *flavor = deferred_flavor();
  /* A QSBR thread that forks while online would stall the grace period
   * that liburcu's before_fork waits for. */
  deferred_fork_online = NULL;
  if (flavor->rcu->read_ongoing()) {
    flavor->rcu->thread_offline();
    deferred_fork_online = flavor->rcu;
  }
  pn_atomic_store_release32(&deferred_xcommand, COMMAND_PAUSE);
  deferred_futex_wake(&deferred_xcommand, INT_MAX);
  deferred_worker_kick(false);
  while (pn_atomic_load_acquire32(&deferred_xack) != COMMAND_PAUSE)
    deferred_futex_wait(&deferred_xack, COMMAND_NONE, -1);
  deferred_fork_paused = true;
  if (flavor->before_fork != NULL) {
    flavor->before_fork();
    deferred_fork_flavor = flavor;
  }
}

static void deferred_fork_parent(void) {
  if (deferred_fork_flavor != NULL) deferred_fork_flavor->after_fork_parent();
  if (!deferred_fork_paused) return;
  pn_atomic_store_release32(&deferred_xcommand, COMMAND_NONE);
  deferred_futex_wake(&deferred_xcommand, INT_MAX);
  if (deferred_fork_online != NULL) deferred_fork_online->thread_online();
}

/* In the child only this thread lives: the worker is gone (a new one starts
 * on demand), other threads' slots are free for reuse (their batches stay
 * and are handed over by the next tick or barrier), and batches queued but
 * not yet given to call_rcu stay queued for the new worker. */
static void deferred_fork_child(void) {
  if (deferred_fork_flavor != NULL) deferred_fork_flavor->after_fork_child();
  if (!deferred_fork_paused) return;
  pn_atomic_store_release32(&deferred_xcommand, COMMAND_NONE);
  pn_atomic_store_release32(&deferred_xack, COMMAND_NONE);
  pn_atomic_store_release32(&deferred_xwake, WAKE_RUNNING);
  pn_atomic_store_release32(&deferred_xdone, (uint32_t)pn_atomic_load_acquire(&deferred_xasked));
  /* The queue: a thread of the parent may have been between the two steps
   * of an enqueue; then the batches behind it cannot be reached. */
  struct __cds_wfcq_head head;
  struct cds_wfcq_tail tail;
  __cds_wfcq_init(&head, &tail);
  if (__cds_wfcq_splice_nonblocking(&head, &tail, &deferred_queue_head, &deferred_queue_tail) ==
      CDS_WFCQ_RET_WOULDBLOCK) {
    pn_warning("fork: another thread was handing a batch of deferred frees over; the child "
               "leaks it");
    __cds_wfcq_init(&deferred_queue_head, &deferred_queue_tail);
  } else {
    __cds_wfcq_splice_blocking(&deferred_queue_head, &deferred_queue_tail, &head, &tail);
  }
  for (deferred_slot_t *slot = (deferred_slot_t *)pn_atomic_load_acquire(&deferred_xslots);
       slot != NULL; slot = slot->next)
    if (slot != deferred_tls_slot) pn_atomic_store_relaxed(&slot->xin_use, 0);
  pn_atomic_store_release32(&deferred_xlife, LIFE_NONE);
  if (deferred_fork_online != NULL) deferred_fork_online->thread_online();
}

/* ------------------------------------------------------------------------ */
/* Unload and exit                                                          */
/* ------------------------------------------------------------------------ */

/* Before the library is unloaded or the process exits: finish every
 * deferred free (no callback of ours may run into unmapped code), stop the
 * worker, and wait for the depot's urcu-bp callbacks too. liburcu 0.13 does
 * not tear its call_rcu threads down, so this is the last chance. */
__attribute__((destructor)) static void deferred_unload(void) {
  if (pn_atomic_load_acquire(&deferred_xbatches) != 0) {
    const deferred_flavor_t *flavor = deferred_flavor();
    if (deferred_tls_in_callback || flavor->rcu->read_ongoing())
      pn_warning("exit inside an RCU read-side critical section or callback: pending deferred "
                 "frees are not waited for");
    else
      deferred_barrier_wait(flavor);
  }
  deferred_worker_stop();
  /* No destructor of ours may run after the unload. */
  if (pn_atomic_load_acquire32(&deferred_xkey_made)) pthread_key_delete(deferred_key);
  urcu_bp_barrier();
}
