/* deferred.c - RCU-deferred frees: pantry_free_deferred frees a block after
 * a grace period of the RCU flavor that the program's readers use, so a
 * reader inside rcu_read_lock() may still be reading it.
 *
 * This file is the deferring threads' side: slots, batches, the callback,
 * the public functions. deferred_worker.c is pantry's worker thread (step 3
 * below, the time bound, the barrier's wait on it, fork); deferred.h is
 * what the two share.
 *
 * Layer: the top, beside alloc.c; calls alloc.h (the checks and the free of
 * pantry_free), pool.c (the checks and the free of pantry_pool_free), os.c
 * (slot memory) and liburcu: the flavor's call_rcu and barrier.
 *
 * The path of a pointer:
 *   1. pantry_free_deferred checks `p` as pantry_free would and appends it to
 *      the calling thread's batch: an array allocated by pantry, never the
 *      block itself. Nothing is written into the block until step 4.
 *   2. A batch is handed over when it is full (to the worker's handover stack), when
 *      the worker finds it idle for a tick or two (the time bound: it steals
 *      it), when its thread exits (pthread key destructor), and when a thread
 *      calls pantry_deferred_barrier (it steals every batch).
 *   3. The worker, a thread of pantry's registered with the chosen flavor
 *      (the only thread pantry ever registers), issues one call_rcu per
 *      batch. So the program's threads need not be registered, and a thread
 *      the program did register is never registered again.
 *   4. After the grace period, the batch's callback (on liburcu's call_rcu
 *      thread) runs the drop of every pool object in it and gives the
 *      object back to its pool, then returns the batch to its thread's slot
 *      (slot->xdone).
 *   5. The thread frees the returned blocks, one batch each time it starts
 *      a batch, and all when it exits: local frees, at the pace of its
 *      allocations, into caches that thread warmed, so its next allocations
 *      find them hot. If the thread is idle for a tick or two, or gone, the
 *      worker frees them; a barrier frees whatever is left.
 *
 * Shared state and who writes it:
 *   slot->xbatch        the owner takes its batch out (exchange) and puts it
 *                       back (release store) around each append; the worker
 *                       and the barrier steal it with an exchange. Whoever
 *                       holds a batch (exchanged out, non-zero) owns it alone.
 *   slot->xdone         a stack of batches past their grace period: the
 *                       callback pushes (CAS), the owner, the worker and the
 *                       barrier take it whole (exchange) and free the blocks.
 *   slot->xtaking       takes of xdone whose frees are still running, so a
 *                       barrier can wait for them to finish.
 *   slot->xin_use       claimed by CAS when a thread starts, released at exit.
 *   pn_deferred_xslots  push-only list of slots (CAS push; never freed).
 *   pn_deferred_xhandover  the handover stack: any thread pushes a batch
 *                       (CAS release), only the worker takes it whole
 *                       (exchange acquire). A push is one CAS of a node
 *                       whose link is already written, so the stack is
 *                       whole at every instant, fork included (a queue
 *                       whose enqueue swaps the tail, then links the old
 *                       one, is not: see pn_deferred_fork_child).
 *   pn_deferred_xbatches  batches made whose blocks are not all freed yet
 *                       (add at creation, sub after the frees). Zero means
 *                       no deferred free is pending.
 *   deferred_xflavor    the readers' flavor: set_flavor (under its lock).
 *   The worker's own state is described in deferred_worker.c.
 *
 * No lock on the free path: an append is one exchange and one store on the
 * thread's own slot; a handover is one CAS push (lock-free); a new batch is a
 * pantry allocation and one atomic add. Only the worker, the barrier and
 * fork wait, never a thread that frees.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "deferred.h"
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

/* One batch: 8 KiB, 1018 pointers, one call_rcu. */
#define DEFERRED_BATCH_BYTES ((size_t)8192)
/* Flavors set_flavor remembers (their fork functions, found once). */
#define DEFERRED_FLAVORS_MAX 8
/* Batches of returned blocks a thread frees each time it starts a batch.
 * One: a thread gets back exactly the batches it made, so freeing one per
 * batch made keeps the backlog at what was in flight, and frees at the
 * pace of allocation, which keeps pages neither emptied nor refilled. */
#define DEFERRED_FREE_PER_BATCH 1
/* How many blocks ahead a free of a batch prefetches the block it will free. */
#define DEFERRED_PREFETCH 8

/* ------------------------------------------------------------------------ */
/* State                                                                    */
/* ------------------------------------------------------------------------ */

#define DEFERRED_BATCH_CAPACITY                                                                    \
  ((uint32_t)((DEFERRED_BATCH_BYTES - sizeof(pn_deferred_batch_t)) / sizeof(uintptr_t)))

_Static_assert(sizeof(pn_deferred_slot_t) == 64, "a slot is one cache line");

pn_atomic_uintptr_t pn_deferred_xslots;
pn_atomic_uintptr_t pn_deferred_xbatches;
pn_atomic_uintptr_t pn_deferred_xhandover;

static pn_deferred_flavor_t deferred_flavors[DEFERRED_FLAVORS_MAX] = {
    {&urcu_memb_flavor, urcu_memb_call_rcu_before_fork, urcu_memb_call_rcu_after_fork_parent,
     urcu_memb_call_rcu_after_fork_child, urcu_memb_get_thread_call_rcu_data},
};
static unsigned deferred_flavor_count = 1;   /* deferred_control_lock */
static pn_atomic_uintptr_t deferred_xflavor; /* atomic acq/rel: a deferred_flavors entry, 0 = [0] */
static pthread_mutex_t deferred_control_lock = PTHREAD_MUTEX_INITIALIZER; /* set_flavor only */

static pthread_once_t deferred_once = PTHREAD_ONCE_INIT;
static pthread_key_t deferred_key; /* its destructor hands the exiting thread's batch over */
static pn_atomic_uint32_t deferred_xkey_made; /* atomic acq/rel: 1 once deferred_key exists */

static _Thread_local pn_deferred_slot_t *deferred_tls_slot;
static _Thread_local bool deferred_tls_in_callback; /* a pool drop of ours runs on this thread */

/* The readers' flavor now. */
const pn_deferred_flavor_t *pn_deferred_flavor(void) {
  uintptr_t f = pn_atomic_load_acquire(&deferred_xflavor);
  return f ? (const pn_deferred_flavor_t *)f : &deferred_flavors[0];
}

pn_deferred_slot_t *pn_deferred_slot_mine(void) { return deferred_tls_slot; }

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

/* Free every block of a batch whose grace period has ended, then the batch.
 * Any thread; its frees are local where it owns the blocks' pages. */
static void deferred_batch_free(pn_deferred_batch_t *batch) {
  uint32_t count = batch->count;
  for (uint32_t i = 0; i < count; i++) {
    /* The blocks are cold and each free writes into its block: start the
     * misses early. */
    if (i + DEFERRED_PREFETCH < count)
      __builtin_prefetch((void *)(batch->items[i + DEFERRED_PREFETCH] & ~(uintptr_t)1), 1);
    void *p = (void *)batch->items[i];
    if (p == NULL)
      continue; /* a pool object, already given back by the callback */
    deferred_unpoison(p);
    pn_free_inline(p, "pantry_free_deferred");
  }
  pn_free_inline(batch, "pantry_free_deferred");
  /* Release: the frees above happen before any barrier that sees the count
   * drop (its acquire load in pantry_deferred_barrier). */
  pn_atomic_fetch_sub_acq_rel(&pn_deferred_xbatches, 1);
}

/* Free a list of batches taken from a slot's xdone. */
static void deferred_done_free(uintptr_t list) {
  while (list != 0) {
    pn_deferred_batch_t *batch = (pn_deferred_batch_t *)list;
    list = (uintptr_t)batch->done_next;
    deferred_batch_free(batch);
  }
}

/* Push a chain of batches (first..last) back on the slot's xdone. */
static void deferred_done_push(pn_deferred_slot_t *slot, pn_deferred_batch_t *first,
                               pn_deferred_batch_t *last) {
  uintptr_t head = pn_atomic_load_relaxed(&slot->xdone);
  do {
    last->done_next = (pn_deferred_batch_t *)head;
    /* Release: publishes done_next (and the batch's contents) to the
     * taker's acquire exchange. A push never reads through the old head,
     * so ABA cannot hurt it. */
  } while (!pn_atomic_cas_weak_release(&slot->xdone, &head, (uintptr_t)first));
}

/* Take the slot's returned batches and free the blocks of at most `limit`
 * of them; the rest go back. Bracketed by xtaking so that a barrier that
 * finds xdone empty waits for these frees. */
void pn_deferred_done_take(pn_deferred_slot_t *slot, unsigned limit) {
  if (pn_atomic_load_relaxed(&slot->xdone) == 0)
    return;
  pn_atomic_fetch_add_acq_rel(&slot->xtaking, 1);
  /* Acquire: matches the callback's release push; the grace period of
   * every batch on the list ended before we free its blocks. */
  uintptr_t list = pn_atomic_exchange_acquire(&slot->xdone, 0);
  pn_deferred_batch_t *rest = NULL;
  if (list != 0 && limit != UINT_MAX) {
    pn_deferred_batch_t *last = (pn_deferred_batch_t *)list;
    for (unsigned i = 1; i < limit && last->done_next != NULL; i++)
      last = last->done_next;
    rest = last->done_next;
    last->done_next = NULL;
  }
  deferred_done_free(list);
  if (rest != NULL) {
    pn_deferred_batch_t *tail = rest;
    while (tail->done_next != NULL)
      tail = tail->done_next;
    deferred_done_push(slot, rest, tail);
  }
  pn_atomic_fetch_sub_acq_rel(&slot->xtaking, 1);
}

/* Give the pool objects of a batch back to their pools: drop, then free. */
static void deferred_batch_drop_pool_objects(pn_deferred_batch_t *batch) {
  deferred_tls_in_callback = true;
  for (uint32_t i = 0; i < batch->count; i++) {
    if ((batch->items[i] & 1) == 0)
      continue;
    void *obj = (void *)(batch->items[i] & ~(uintptr_t)1);
    batch->items[i] = 0;
    deferred_unpoison(obj);
    pn_segment_t *segment = pn_segment_of(obj);
    pantry_pool_free(pn_segment_page_of(segment, obj)->pool, obj);
  }
  deferred_tls_in_callback = false;
}

/* The callback of a batch's call_rcu: a grace period has passed since every
 * pointer in it was deferred. Runs on liburcu's call_rcu thread. Pool
 * objects are dropped here; the other blocks go back to their thread. */
static void deferred_batch_rcu(struct rcu_head *head) {
  pn_os_unblock_fault_signals(); /* liburcu's call_rcu thread blocks them */
  pn_deferred_batch_t *batch = caa_container_of(head, pn_deferred_batch_t, rcu_head);
  pn_deferred_tsan_acquire(batch);
  if (batch->pool_objects != 0)
    deferred_batch_drop_pool_objects(batch);
  pn_deferred_slot_t *slot = batch->slot;
  /* racy: a slot released just now is seen in use; its blocks then wait for
   * the worker's next tick instead of being freed here. */
  if (batch->pool_objects == batch->count || pn_atomic_load_relaxed(&slot->xin_use) == 0) {
    deferred_batch_free(batch);
    return;
  }
  deferred_done_push(slot, batch, batch);
}

/* Hand a full or stolen batch to the worker: push it on the handover stack.
 * Lock-free; a push never reads through the old head, so ABA cannot hurt it. */
static void deferred_handover(pn_deferred_batch_t *batch) {
  uintptr_t head = pn_atomic_load_relaxed(&pn_deferred_xhandover);
  do {
    batch->handover_next = (pn_deferred_batch_t *)head;
    /* Release: the batch's contents and its link happen before the
     * worker's acquire exchange in deferred_worker_drain. */
  } while (!pn_atomic_cas_weak_release(&pn_deferred_xhandover, &head, (uintptr_t)batch));
}

/* Issue the batch's call_rcu. Worker only (registered with `flavor`). */
void pn_deferred_batch_call_rcu(const pn_deferred_flavor_t *flavor, pn_deferred_batch_t *batch) {
  pn_deferred_tsan_release(batch);
  flavor->rcu->update_call_rcu(&batch->rcu_head, deferred_batch_rcu);
}

/* ------------------------------------------------------------------------ */
/* Slots                                                                    */
/* ------------------------------------------------------------------------ */

/* Thread exit (pthread key destructor): hand the thread's batch over, free
 * what came back, and free the slot for the next thread. */
static void deferred_thread_exit(void *value) {
  pn_deferred_slot_t *slot = value;
  deferred_tls_slot = NULL;
  uintptr_t batch = pn_atomic_exchange_acquire(&slot->xbatch, 0);
  if (batch != 0)
    deferred_handover((pn_deferred_batch_t *)batch);
  pn_deferred_done_take(slot, UINT_MAX);
  pn_atomic_store_release(&slot->xin_use, 0);
}

static void deferred_init_once(void) {
  if (pthread_key_create(&deferred_key, deferred_thread_exit) != 0)
    pn_fatal("pantry_free_deferred: pthread_key_create failed: cannot track thread exits");
  pn_atomic_store_release32(&deferred_xkey_made, 1);
}

/* The fork handlers, registered at load, after heap.c's process init (101)
 * and purge.c's (102): pn_deferred_fork_prepare then runs before theirs.
 * Never by the first deferred free: a fork racing that first use ran
 * without them, and its child could keep a worker start caught half-way
 * (LIFE_STARTING: its barrier waited forever). */
__attribute__((constructor(103))) static void deferred_atfork_at_load(void) {
  pthread_atfork(pn_deferred_fork_prepare, pn_deferred_fork_parent, pn_deferred_fork_child);
}

/* A slot for the calling thread: a free one, or one of 64 new ones. */
static PN_NOINLINE PN_COLD pn_deferred_slot_t *deferred_slot_acquire(void) {
  pthread_once(&deferred_once, deferred_init_once);
  pn_deferred_worker_ensure();
  pn_deferred_slot_t *slot = (pn_deferred_slot_t *)pn_atomic_load_acquire(&pn_deferred_xslots);
  for (; slot != NULL; slot = slot->next) {
    uintptr_t expected = 0;
    if (pn_atomic_load_relaxed(&slot->xin_use) == 0 &&
        pn_atomic_cas_strong_acq_rel(&slot->xin_use, &expected, 1))
      break;
  }
  if (slot == NULL) {
    pn_deferred_slot_t *chunk = pn_os_alloc_aligned(PN_OS_PAGE_SIZE, PN_OS_PAGE_SIZE);
    if (chunk == NULL)
      return NULL;
    size_t n = PN_OS_PAGE_SIZE / sizeof(pn_deferred_slot_t);
    memset(chunk, 0, PN_OS_PAGE_SIZE);
    for (size_t i = 0; i + 1 < n; i++)
      chunk[i].next = &chunk[i + 1];
    pn_atomic_store_relaxed(&chunk[0].xin_use, 1);
    uintptr_t head = pn_atomic_load_relaxed(&pn_deferred_xslots);
    do {
      chunk[n - 1].next = (pn_deferred_slot_t *)head;
      /* Release: the slots' fields are set before a walker can reach them. */
    } while (!pn_atomic_cas_weak_release(&pn_deferred_xslots, &head, (uintptr_t)chunk));
    slot = &chunk[0];
  }
  deferred_tls_slot = slot;
  pthread_setspecific(deferred_key, slot);
  return slot;
}

/* Take every open batch out of every slot and hand it over (the barrier). */
static void deferred_steal_all(void) {
  for (pn_deferred_slot_t *slot = (pn_deferred_slot_t *)pn_atomic_load_acquire(&pn_deferred_xslots);
       slot != NULL; slot = slot->next) {
    if (pn_atomic_load_relaxed(&slot->xbatch) == 0)
      continue;
    uintptr_t batch = pn_atomic_exchange_acquire(&slot->xbatch, 0);
    if (batch != 0)
      deferred_handover((pn_deferred_batch_t *)batch);
  }
}

/* Free what came back to every slot, and wait for the frees of takes that
 * other threads started (the barrier). */
static void deferred_free_all_done(void) {
  for (pn_deferred_slot_t *slot = (pn_deferred_slot_t *)pn_atomic_load_acquire(&pn_deferred_xslots);
       slot != NULL; slot = slot->next)
    pn_deferred_done_take(slot, UINT_MAX);
  for (pn_deferred_slot_t *slot = (pn_deferred_slot_t *)pn_atomic_load_acquire(&pn_deferred_xslots);
       slot != NULL; slot = slot->next) {
    /* Acquire: matches the taker's release decrement, after its frees. A
     * take that starts now holds only batches returned after ours. */
    while (pn_atomic_load_acquire(&slot->xtaking) != 0)
      sched_yield();
  }
}

/* ------------------------------------------------------------------------ */
/* Deferring                                                                */
/* ------------------------------------------------------------------------ */

/* A fresh batch for `slot`. First frees the blocks of a few batches that
 * came back to the slot, so the new batch (and the thread's next
 * allocations) reuse that memory. Not all: callbacks return batches in
 * bursts (one per grace period), and freeing a burst at once would empty
 * whole pages and segments only to refill them (purge, then page faults). */
static PN_NOINLINE PN_COLD pn_deferred_batch_t *deferred_batch_new(pn_deferred_slot_t *slot) {
  pn_deferred_done_take(slot, DEFERRED_FREE_PER_BATCH);
  pn_deferred_batch_t *batch = pn_malloc_inline(DEFERRED_BATCH_BYTES);
  if (batch == NULL)
    return NULL;
  batch->slot = slot;
  batch->count = 0;
  batch->pool_objects = 0;
  pn_deferred_worker_ensure(); /* after fork, the child's first batch starts one */
  pn_atomic_fetch_add_acq_rel(&pn_deferred_xbatches, 1);
  /* the worker sleeps without a bound only when none is pending */
  pn_deferred_worker_kick(PN_DEFERRED_KICK_IDLE);
  return batch;
}

/* Append `item` (a checked block `p` of `usable` bytes, | 1 for a pool
 * object) to the calling thread's batch. */
static inline void deferred_push(uintptr_t item, void *p, size_t usable, const char *fn) {
  pn_deferred_slot_t *slot = deferred_tls_slot;
  if (PN_UNLIKELY(slot == NULL)) {
    slot = deferred_slot_acquire();
    if (slot == NULL)
      goto leak;
  }
  /* Acquire: matches our own previous release store (or sees 0: stolen). */
  pn_deferred_batch_t *batch = (pn_deferred_batch_t *)pn_atomic_exchange_acquire(&slot->xbatch, 0);
  if (batch == NULL) {
    batch = deferred_batch_new(slot);
    if (batch == NULL)
      goto leak;
  }
  deferred_poison(p, usable);
  batch->items[batch->count++] = item;
  batch->pool_objects += (uint32_t)(item & 1);
  if (PN_UNLIKELY(batch->count == DEFERRED_BATCH_CAPACITY)) {
    deferred_handover(batch);
    /* A napping worker would issue its call_rcu at the next tick: wake it,
     * so blocks wait one grace period, not a tick more. A polling one (it
     * found batches on its last look) comes within DEFERRED_POLL_NS by
     * itself: no system call here for each batch of a thread that defers
     * all the time. */
    pn_deferred_worker_kick(PN_DEFERRED_KICK_HANDOVER);
    batch = NULL;
  }
  /* Release: the append above is visible to a stealer's acquire exchange. */
  pn_atomic_store_release(&slot->xbatch, (uintptr_t)batch);
  return;
leak:
  pn_warning("%s(%p): out of memory for a batch; the block is never freed", fn, p);
}

void pantry_free_deferred(void *p) {
  /* The common case checked inline, as free's fast path checks it: a
   * pointer into a live pantry segment, at the start of a block of a page
   * of the malloc API (not a pool's, not huge). Anything else, NULL too,
   * goes through the full check, which names the mistake. */
  if (PN_LIKELY(pn_segment_map_contains(p))) {
    pn_segment_t *segment = pn_segment_of(p);
    pn_page_t *page = pn_segment_page_of(segment, p);
    if (PN_LIKELY(segment->kind != PN_PAGE_HUGE && page->pool == NULL &&
                  pn_page_is_block_start(page, p))) {
      deferred_push((uintptr_t)p, p, page->block_size, "pantry_free_deferred");
      return;
    }
  }
  if (p == NULL)
    return;
  size_t usable = pn_usable_size_checked(p, "pantry_free_deferred");
  pn_page_t *page = pn_segment_page_of(pn_segment_of(p), p);
  if (PN_UNLIKELY(page->pool != NULL))
    pn_pool_misfree(page->pool, p, "pantry_free_deferred");
  deferred_push((uintptr_t)p, p, usable, "pantry_free_deferred");
}

void pantry_pool_free_deferred(pantry_pool_t *pool, void *obj) {
  if (obj == NULL)
    return;
  pn_pool_check(pool, obj, "pantry_pool_free_deferred");
  pn_pool_note_deferred(pool);
  size_t usable = pn_segment_page_of(pn_segment_of(obj), obj)->block_size;
  deferred_push((uintptr_t)obj | 1, obj, usable, "pantry_pool_free_deferred");
}

/* ------------------------------------------------------------------------ */
/* The barrier                                                              */
/* ------------------------------------------------------------------------ */

/* Why the calling thread cannot wait for a grace period of `flavor` (it
 * would wait for itself), or NULL when it can. */
static const char *deferred_waiter_problem(const pn_deferred_flavor_t *flavor) {
  if (deferred_tls_in_callback)
    return "called from a pool object's drop run by a deferred free (an RCU callback): it would "
           "wait for itself";
  if (flavor->get_thread_call_rcu_data != NULL && flavor->get_thread_call_rcu_data() != NULL)
    return "called from an RCU callback (a call_rcu worker thread of the readers' flavor): it "
           "would wait for itself";
  /* QSBR: an online thread is fine (it goes offline while it waits, as
   * rcu_barrier does); any flavor: a read-side critical section is not. */
  if (flavor->rcu->read_ongoing()) {
    flavor->rcu->thread_offline();
    bool inside = flavor->rcu->read_ongoing();
    flavor->rcu->thread_online();
    if (inside)
      return "called inside an RCU read-side critical section (between rcu_read_lock and "
             "rcu_read_unlock): the grace period would wait for this thread forever";
  }
  return NULL;
}

/* Diagnose a barrier that would wait for itself. */
static void deferred_check_waiter(const pn_deferred_flavor_t *flavor, const char *fn) {
  const char *problem = deferred_waiter_problem(flavor);
  if (problem != NULL)
    pn_fatal("%s: %s", fn, problem);
}

/* Every batch made before the call gets its call_rcu, every callback issued
 * before it runs, and every block they returned is freed. */
static void deferred_barrier_wait(const pn_deferred_flavor_t *flavor) {
  deferred_steal_all();
  if (!pn_deferred_worker_serve()) {
    pn_warning("pantry_deferred_barrier: no worker thread; deferred frees still pending");
    return;
  }
  flavor->rcu->barrier();
  deferred_free_all_done();
}

void pantry_deferred_barrier(void) {
  const pn_deferred_flavor_t *flavor = pn_deferred_flavor();
  deferred_check_waiter(flavor, "pantry_deferred_barrier");
  /* Acquire: matches the release decrements after each batch's frees.
   * Zero: every deferred free that happened before this call is done. */
  if (pn_atomic_load_acquire(&pn_deferred_xbatches) == 0)
    return;
  deferred_barrier_wait(flavor);
}

/* ------------------------------------------------------------------------ */
/* The flavor                                                               */
/* ------------------------------------------------------------------------ */

/* Find urcu_<flavor>_<suffix> next to the flavor's symbol (urcu_<flavor>_flavor). */
static void *deferred_flavor_symbol(void *lib, const char *prefix, const char *suffix) {
  char name[96];
  int n = snprintf(name, sizeof name, "%s%s", prefix, suffix);
  if (n < 0 || (size_t)n >= sizeof name)
    return NULL;
  return dlsym(lib ? lib : RTLD_DEFAULT, name);
}

/* Fill in the fork and callback-thread functions of `flavor`, found by name.
 * Those it cannot find stay NULL (fork and the callback check then rely on
 * the program). */
static void deferred_flavor_resolve(pn_deferred_flavor_t *flavor) {
  Dl_info info;
  if (dladdr(flavor->rcu, &info) == 0 || info.dli_sname == NULL)
    return;
  size_t len = strlen(info.dli_sname);
  const char *suffix = "flavor";
  if (len <= strlen(suffix) || strcmp(info.dli_sname + len - strlen(suffix), suffix) != 0)
    return;
  char prefix[64];
  size_t plen = len - strlen(suffix);
  if (plen >= sizeof prefix)
    return;
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
  if (lib != NULL)
    dlclose(lib); /* only drops the reference NOLOAD took */
  if (flavor->before_fork == NULL || flavor->after_fork_parent == NULL ||
      flavor->after_fork_child == NULL) {
    flavor->before_fork = flavor->after_fork_parent = flavor->after_fork_child = NULL;
  }
}

int pantry_deferred_set_flavor(const void *rcu_flavor) {
  const struct rcu_flavor_struct *rcu = rcu_flavor ? rcu_flavor : &urcu_memb_flavor;
  if (rcu->read_lock == NULL || rcu->read_unlock == NULL || rcu->read_ongoing == NULL ||
      rcu->update_call_rcu == NULL || rcu->barrier == NULL || rcu->register_thread == NULL ||
      rcu->unregister_thread == NULL || rcu->thread_offline == NULL || rcu->thread_online == NULL)
    return EINVAL;
  pthread_mutex_lock(&deferred_control_lock);
  const pn_deferred_flavor_t *old = pn_deferred_flavor();
  const pn_deferred_flavor_t *flavor = NULL;
  for (unsigned i = 0; i < deferred_flavor_count; i++)
    if (deferred_flavors[i].rcu == rcu)
      flavor = &deferred_flavors[i];
  if (flavor == NULL) {
    if (deferred_flavor_count == DEFERRED_FLAVORS_MAX) {
      pthread_mutex_unlock(&deferred_control_lock);
      return ENOMEM;
    }
    pn_deferred_flavor_t *fresh = &deferred_flavors[deferred_flavor_count];
    *fresh = (pn_deferred_flavor_t){.rcu = rcu};
    deferred_flavor_resolve(fresh);
    flavor = fresh;
    deferred_flavor_count++;
  }
  if (flavor != old) {
    /* What was deferred under the old flavor waits for the old flavor's
     * grace period; only then do new call_rcus go to the new one. */
    if (pn_atomic_load_acquire(&pn_deferred_xbatches) != 0) {
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
/* Unload and exit                                                          */
/* ------------------------------------------------------------------------ */

/* Before the library is unloaded or the process exits: finish every
 * deferred free (no callback of ours may run into unmapped code), stop the
 * worker, and wait for the depot's urcu-bp callbacks too. liburcu 0.13 does
 * not tear its call_rcu threads down, so this is the last chance. */
__attribute__((destructor)) static void deferred_unload(void) {
  if (pn_atomic_load_acquire(&pn_deferred_xbatches) != 0) {
    const pn_deferred_flavor_t *flavor = pn_deferred_flavor();
    const char *problem = deferred_waiter_problem(flavor);
    if (problem != NULL)
      pn_warning("exit or unload %s; pending deferred frees are not waited for", problem);
    else
      deferred_barrier_wait(flavor);
  }
  pn_deferred_worker_stop();
  /* No destructor of ours may run after the unload. */
  if (pn_atomic_load_acquire32(&deferred_xkey_made))
    pthread_key_delete(deferred_key);
  urcu_bp_barrier();
}
