/* deferred.h - what deferred.c (the deferring threads' side: batches, slots,
 * the public functions) and deferred_worker.c (pantry's worker thread, fork,
 * and the waits on it) share. Included by those two files only.
 *
 * Layer: the top, beside alloc.c (see deferred.c for the whole design).
 */
#ifndef PN_DEFERRED_H
#define PN_DEFERRED_H

#include <pthread.h>

#include "internal.h"

typedef struct pn_deferred_slot pn_deferred_slot_t;

/* A batch of deferred pointers: one call_rcu for all of them. Held by one
 * thread at a time: its owner (through slot->xbatch), then whoever stole or
 * received it, then, after call_rcu, the callback, then (through
 * slot->xdone) whoever frees its blocks.
 * Invariant: 1 <= count <= capacity once handed over;
 * pool_objects == |{i < count : items[i] & 1}| until the callback runs. */
typedef struct pn_deferred_batch {
  struct rcu_head rcu_head;                /* holder: the batch's one call_rcu */
  struct pn_deferred_batch *handover_next; /* holder: link in pn_deferred_xhandover */
  struct pn_deferred_batch *done_next;     /* holder: link in slot->xdone */
  pn_deferred_slot_t *slot;                /* immutable: the slot of the thread that made it */
  uint32_t count;                          /* holder: items[0..count) wait */
  uint32_t pool_objects;                   /* holder: items that are pool objects */
  uintptr_t items[]; /* holder: the deferred pointers, | 1 for a pool object */
} pn_deferred_batch_t;

/* A thread's place in pantry's list of batches. Slots are never freed; a
 * slot whose thread exited is claimed by the next thread that defers.
 * One cache line each, so a thread's appends do not bounce another's.
 * Invariant: xbatch != 0 => that batch has 1 <= count < capacity. */
struct pn_deferred_slot {
  _Alignas(64) pn_atomic_uintptr_t xbatch; /* atomic acq/rel: the owner's open batch, or 0 */
  pn_atomic_uintptr_t xdone;     /* atomic acq/rel: batches whose blocks wait to be freed */
  pn_atomic_uintptr_t xtaking;   /* atomic acq/rel: takes of xdone still freeing */
  pn_atomic_uintptr_t xin_use;   /* atomic acq/rel: 1 while a thread owns the slot */
  struct pn_deferred_slot *next; /* immutable once pushed on pn_deferred_xslots */
  uintptr_t worker_seen;         /* worker: xbatch at its previous tick */
  uintptr_t worker_seen_done;    /* worker: xdone at its previous tick */
};

/* A flavor and the functions that rcu_flavor_struct lacks, found by name
 * (urcu_<flavor>_call_rcu_before_fork, ...); NULL where not found.
 * Immutable once published. */
typedef struct pn_deferred_flavor {
  const struct rcu_flavor_struct *rcu;
  void (*before_fork)(void);
  void (*after_fork_parent)(void);
  void (*after_fork_child)(void);
  struct call_rcu_data *(*get_thread_call_rcu_data)(void);
} pn_deferred_flavor_t;

/* ThreadSanitizer cannot see the synchronisation inside liburcu (its
 * queue and call_rcu are not instrumented), so a batch's hand-offs through
 * them are told to it: a release before the batch enters liburcu, an
 * acquire where it comes out. No code in other builds. */
#if defined(__SANITIZE_THREAD__)
#define PN_DEFERRED_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PN_DEFERRED_TSAN 1
#endif
#endif
#ifdef PN_DEFERRED_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static inline void pn_deferred_tsan_release(void *batch) { __tsan_release(batch); }
static inline void pn_deferred_tsan_acquire(void *batch) { __tsan_acquire(batch); }
#else
static inline void pn_deferred_tsan_release(void *batch) { (void)batch; }
static inline void pn_deferred_tsan_acquire(void *batch) { (void)batch; }
#endif

/* ------------------------------------------------------------------------ */
/* deferred.c                                                               */
/* ------------------------------------------------------------------------ */

/* The list of slots: push-only (CAS), read with an acquire load of the head. */
extern pn_atomic_uintptr_t pn_deferred_xslots PN_HIDDEN;
/* Batches made whose blocks are not all freed yet: 0 = nothing pending. */
extern pn_atomic_uintptr_t pn_deferred_xbatches PN_HIDDEN;
/* The handover stack: batches for the worker's call_rcu. Any thread pushes
 * (one CAS publishes a whole, linked node: no state in between that a fork
 * could freeze), only the worker takes it, whole (exchange: no ABA). */
extern pn_atomic_uintptr_t pn_deferred_xhandover PN_HIDDEN;

/* The readers' flavor now. */
const pn_deferred_flavor_t *pn_deferred_flavor(void) PN_HIDDEN;
/* The calling thread's slot, or NULL. */
pn_deferred_slot_t *pn_deferred_slot_mine(void) PN_HIDDEN;
/* call_rcu for a batch; the caller is registered with (and online in) `flavor`. */
void pn_deferred_batch_call_rcu(const pn_deferred_flavor_t *flavor,
                                pn_deferred_batch_t *batch) PN_HIDDEN;
/* Free the blocks of at most `limit` (UINT_MAX: all) batches returned to `slot`. */
void pn_deferred_done_take(pn_deferred_slot_t *slot, unsigned limit) PN_HIDDEN;

/* ------------------------------------------------------------------------ */
/* deferred_worker.c                                                        */
/* ------------------------------------------------------------------------ */

/* Start the worker if none runs (first use, or in a fork child). */
void pn_deferred_worker_ensure(void) PN_HIDDEN;
/* How hard pn_deferred_worker_kick wakes the worker: only from a sleep
 * without a bound (a new batch: the worker must start counting ticks),
 * also from a nap until the next tick (a full batch handed over), or from
 * any sleep, the short poll included (a barrier's ticket, a command). */
typedef enum {
  PN_DEFERRED_KICK_IDLE,
  PN_DEFERRED_KICK_HANDOVER,
  PN_DEFERRED_KICK_ALL
} pn_deferred_kick_t;
void pn_deferred_worker_kick(pn_deferred_kick_t kick) PN_HIDDEN;
/* Wait until the worker has issued call_rcu for every batch queued before
 * the call. False when no worker can (none could start, or shut down). */
bool pn_deferred_worker_serve(void) PN_HIDDEN;
/* Stop and join the worker (unload, exit); no worker starts afterwards. */
void pn_deferred_worker_stop(void) PN_HIDDEN;
/* pthread_atfork handlers. */
void pn_deferred_fork_prepare(void) PN_HIDDEN;
void pn_deferred_fork_parent(void) PN_HIDDEN;
void pn_deferred_fork_child(void) PN_HIDDEN;

#endif /* PN_DEFERRED_H */
