/* depot.c - the global fallback: segments of threads that exited
 * (abandoned, still holding live blocks) and free segments cached before they
 * go back to the OS.
 *
 * Layer: below segment.c and heap.c, above os.c. Built on liburcu's
 * lock-free stack (urcu/lfstack.h) and the urcu-bp flavor, made for
 * libraries whose threads never register: a pantry thread becomes an RCU
 * reader the first time it pops, and nothing else about it changes. The
 * host program may use any other flavor for its own readers; the flavors do
 * not interact.
 *
 * Shared state: the two stacks and the cache count. Any thread pushes and
 * pops the abandoned stack; any thread pops the cache, only the call_rcu
 * worker pushes it.
 *
 * Why no pop suffers ABA, and why no pop reads freed memory:
 *   The abandoned stack is only ever emptied whole, with __cds_lfs_pop_all:
 *   one exchange of the head with NULL. It never reads a node it does not
 *   then own, and an exchange has no "expected" value that a recycled node
 *   could match, so it needs no synchronisation with pushes or other
 *   pop_alls (technique 3 of lfstack.h does not even apply: there is no
 *   __cds_lfs_pop on that stack). A thread that adopts takes the whole list,
 *   keeps one segment and pushes the others back, each push a CAS that
 *   cannot suffer ABA either (it never reads through the old head). So a
 *   segment of an exiting thread is adoptable at once, with no grace period.
 *
 *   The cache of free segments is popped one at a time with __cds_lfs_pop,
 *   which reads head, then head->next, then CASes head -> next. That goes
 *   wrong only if, between its read of head and its CAS, the same segment is
 *   popped by another thread and pushed again (ABA: the CAS succeeds with a
 *   stale next), or popped and unmapped (the read of head->next faults).
 *   Every such pop runs inside an urcu-bp read-side critical section, and a
 *   segment goes into the cache, or back to the OS, only from an RCU
 *   callback (call_rcu in pn_depot_release): after a grace period, that is,
 *   after every read-side critical section that was running when it left the
 *   cache has ended. So while a pop is in progress, no segment it can see as
 *   head is pushed again or unmapped; its CAS sees the head it read with the
 *   next it read, or fails and retries (technique 1 of __cds_lfs_pop's
 *   documentation). A segment popped from the cache and later abandoned
 *   lands on the other stack, whose head a stale cache pop never CASes.
 *   The purge (madvise) of a released segment also runs in that callback,
 *   on liburcu's worker thread, off every allocation path.
 *
 * Re-entry: liburcu allocates while it holds its own mutexes (the first
 *   call_rcu creates the worker's data with calloc under call_rcu_mutex; the
 *   fork handlers do the same). Under LD_PRELOAD that allocation is ours, and
 *   if it reached call_rcu again the thread would deadlock on itself. So
 *   every call into liburcu runs with depot_in_urcu set; while it is set, a
 *   release is pushed on depot_pending (push and pop_all only: no ABA, no
 *   RCU) and handed to call_rcu by the next release made from outside, and a
 *   cache pop simply finds nothing (the caller maps a new segment).
 *
 * No lock: __cds_lfs_pop and cds_lfs_push are a CAS loop each; call_rcu
 * enqueues on a wait-free queue and wakes the worker. The urcu-bp
 * registration a thread makes on its first read-side section takes liburcu's
 * registry mutex once per thread (one-time initialisation).
 */
#include <sched.h>
#include <stddef.h>
#include <string.h>

#include "internal.h"

_Static_assert(offsetof(pn_segment_t, pages) <= PN_OS_PAGE_SIZE,
               "a cached segment's header keeps its first OS page only (depot_release_rcu)");

/* Free segments kept mapped (purged) for reuse, at most this many. */
#define DEPOT_CACHE_MAX 16

static struct __cds_lfs_stack depot_abandoned;  /* segments with live blocks */
static struct __cds_lfs_stack depot_cached;     /* empty segments, purged */
static struct __cds_lfs_stack depot_pending;    /* releases made from inside liburcu */
static pn_atomic_uintptr_t depot_xcached_count; /* atomic relaxed: a bound, not an exact count */
static _Thread_local bool depot_in_urcu;        /* this thread is inside a liburcu call */
/* fork: the gate in front of urcu_bp_call_rcu (see depot_call_rcu). */
static pn_atomic_uint32_t depot_xforking;  /* atomic: 1 from the prepare handler to the parent's
                                            * or child's handler; written by the forking thread */
static pn_atomic_uintptr_t depot_xcalling; /* atomic acq/rel: threads inside urcu_bp_call_rcu */

/* The handoff edge. liburcu's stack and call_rcu queue order memory with
 * x86 inline assembly (full barriers), which is enough for the hardware but
 * invisible to the C11 model and to ThreadSanitizer. So every handoff of a
 * segment also carries a C11 edge of its own: the giving thread's release
 * increment of segment->xdepot_handoffs, read with acquire by the taking
 * thread after the pop (or at the start of the RCU callback). Everything the
 * giver wrote to the segment before the handoff happens-before what the
 * taker does with it. */
static void depot_handoff_give(pn_segment_t *segment) {
  pn_atomic_fetch_add_acq_rel(&segment->xdepot_handoffs, 1);
}

static pn_segment_t *depot_handoff_take(pn_segment_t *segment) {
  if (segment != NULL)
    (void)pn_atomic_load_acquire(&segment->xdepot_handoffs);
  return segment;
}

/* Pop one segment of the cache (see the top comment for why RCU). */
static pn_segment_t *depot_pop_cached(void) {
  /* racy: a plain peek; an empty-looking stack just means "try later". */
  if (cds_lfs_empty(&depot_cached) || depot_in_urcu)
    return NULL;
  depot_in_urcu = true;
  urcu_bp_read_lock();
  struct cds_lfs_node *node = __cds_lfs_pop(&depot_cached);
  urcu_bp_read_unlock();
  depot_in_urcu = false;
  return depot_handoff_take(node ? caa_container_of(node, pn_segment_t, depot_node) : NULL);
}

static void depot_push(struct __cds_lfs_stack *stack, pn_segment_t *segment) {
  cds_lfs_node_init(&segment->depot_node);
  depot_handoff_give(segment);
  cds_lfs_push(stack, &segment->depot_node);
}

/* call_rcu, or, while a fork is being prepared, depot_pending (handed to
 * call_rcu by the next release made from outside liburcu, or by the fork
 * handlers). Any thread calls it, so a fork can catch one inside
 * urcu_bp_call_rcu, whose wait-free enqueue swaps the queue's tail and only
 * then links the old tail: frozen in between, the child's call_rcu queue
 * has a hole that liburcu's after_fork_child (splicing it to the new
 * call_rcu thread) or that thread (walking it) waits on forever.
 * Invariant at the fork: depot_xcalling == 0 was seen after depot_xforking
 * was set, so no thread is inside urcu_bp_call_rcu (pn_depot_fork_prepare).
 * Dekker: we publish our entry (RMW), fence, then read the gate; the
 * forking thread sets the gate, fences, then reads the count. One of the
 * two sees the other. */
static void depot_call_rcu(pn_segment_t *segment, void (*fn)(struct rcu_head *)) {
  pn_atomic_fetch_add_acq_rel(&depot_xcalling, 1);
  pn_atomic_fence_seq_cst();
  if (PN_UNLIKELY(pn_atomic_load_acquire32(&depot_xforking) != 0)) {
    pn_atomic_fetch_sub_acq_rel(&depot_xcalling, 1);
    segment->rcu_head.func = fn; /* depot_pending_flush passes it to call_rcu */
    depot_push(&depot_pending, segment);
    return;
  }
  depot_handoff_give(segment);
  urcu_bp_call_rcu(&segment->rcu_head, fn);
  /* Release: the enqueue is complete before the forking thread sees the
   * count drop (its acquire load), so before the fork. */
  pn_atomic_fetch_sub_acq_rel(&depot_xcalling, 1);
}

/* Hand every segment on depot_pending to call_rcu (each with the callback
 * it was meant for). The caller has set depot_in_urcu. */
static void depot_pending_flush(void) {
  if (cds_lfs_empty(&depot_pending))
    return;
  struct cds_lfs_head *head = __cds_lfs_pop_all(&depot_pending);
  for (struct cds_lfs_node *node = head ? &head->node : NULL, *next; node != NULL; node = next) {
    pn_segment_t *pending = depot_handoff_take(caa_container_of(node, pn_segment_t, depot_node));
    next = node->next; /* after the handoff's acquire */
    depot_call_rcu(pending, pending->rcu_head.func);
  }
}

/* call_rcu callbacks: a grace period has passed since the segment was last
 * popped (see the comment at the top). They run on liburcu's worker thread. */

static void depot_unmap(pn_segment_t *segment) {
  pn_segment_map_set(segment, false);
  segment->cookie = 0;
  pn_stat_add(PN_STAT_SEGMENTS_UNMAPPED, 1);
  pn_stat_sub(PN_STAT_BYTES_MAPPED, segment->mapping_size);
  pn_stat_sub(PN_STAT_BYTES_COMMITTED, PN_SEGMENT_HEADER_SIZE);
  pn_track_unpoison(segment, segment->mapping_size);
  pn_os_free(segment, segment->mapping_size);
}

static void depot_release_rcu(struct rcu_head *head) {
  pn_os_unblock_fault_signals(); /* liburcu's call_rcu thread blocks them */
  pn_segment_t *segment = depot_handoff_take(caa_container_of(head, pn_segment_t, rcu_head));
  /* A purger madvises part of it, or a remote free has yet to report a
   * page that left the full state (internal.h, pn_page_report_begin):
   * wait for them. Acquire: the increment happened before the publishing
   * CAS that the owner's collect acquired before this release. */
  if (pn_purge_segment_busy(segment) || pn_atomic_load_acquire(&segment->xreporting) != 0) {
    depot_call_rcu(segment, depot_release_rcu);
    return;
  }
  pn_purge_segment_reset(segment); /* all of it goes back below */
  if (pn_atomic_fetch_add_relaxed(&depot_xcached_count, 1) < DEPOT_CACHE_MAX) {
    /* Keep the mapping, give the memory back; the header's first OS page
     * stays (the depot's link, the cookie, the purge state). The rest of
     * the header holds only pages[], which nothing reads while the segment
     * is cached (a stray free reads block_size 0 either way) and which
     * pn_segment_format clears when it is taken again: it goes back too. */
    pn_os_purge((uint8_t *)segment + PN_SEGMENT_FIRST_OFFSET,
                PN_SEGMENT_SIZE - PN_SEGMENT_FIRST_OFFSET - PN_SEGMENT_GUARD_SIZE);
    pn_os_purge((uint8_t *)segment + PN_OS_PAGE_SIZE, PN_SEGMENT_HEADER_SIZE - PN_OS_PAGE_SIZE);
    pn_stat_add(PN_STAT_SEGMENTS_CACHED, 1);
    depot_push(&depot_cached, segment);
    return;
  }
  pn_atomic_fetch_sub_relaxed(&depot_xcached_count, 1);
  depot_unmap(segment);
}

static void depot_unmap_rcu(struct rcu_head *head) {
  pn_os_unblock_fault_signals();
  depot_unmap(depot_handoff_take(caa_container_of(head, pn_segment_t, rcu_head)));
}

/* pantry_collect: wait for every release in flight (urcu_bp_barrier), so
 * their memory is back when this returns; with `flush`, then unmap every
 * cached segment too, after a grace period (a pop in progress may still
 * read one). Not called from inside liburcu, an urcu-bp read-side section
 * or a call_rcu callback. */
void pn_depot_collect(bool flush) {
  pn_segment_t *segment;
  depot_in_urcu = true; /* an allocation inside liburcu must not re-enter it */
  urcu_bp_barrier();    /* releases in flight land in the cache first */
  depot_in_urcu = false;
  if (!flush)
    return;
  while ((segment = depot_pop_cached()) != NULL) {
    pn_atomic_fetch_sub_relaxed(&depot_xcached_count, 1);
    pn_stat_add(PN_STAT_SEGMENTS_FLUSHED, 1);
    depot_in_urcu = true; /* an allocation inside liburcu must not re-enter it */
    depot_call_rcu(segment, depot_unmap_rcu);
    depot_in_urcu = false;
  }
  depot_in_urcu = true;
  urcu_bp_barrier();
  depot_in_urcu = false;
}

/* Hand a segment that still holds live blocks to the depot, adoptable at
 * once. The caller has set segment->xowner to 0 and no longer touches it. */
void pn_depot_abandon(pn_segment_t *segment) {
  pn_stat_add(PN_STAT_SEGMENTS_ABANDONED, 1);
  depot_push(&depot_abandoned, segment);
}

/* Hand an empty segment to the depot: cached (purged) or unmapped. */
void pn_depot_release(pn_segment_t *segment) {
  pn_atomic_store_relaxed(&segment->xowner, 0);
  pn_purge_segment_forget(segment); /* before the grace period: purgers let go of it */
  if (depot_in_urcu) {
    segment->rcu_head.func = depot_release_rcu; /* depot_pending_flush passes it on */
    depot_push(&depot_pending, segment);
    return;
  }
  depot_in_urcu = true;
  depot_call_rcu(segment, depot_release_rcu);
  depot_pending_flush();
  depot_in_urcu = false;
}

/* An abandoned segment for the calling thread to adopt, or NULL: take the
 * whole stack, keep the first, push the rest back. */
pn_segment_t *pn_depot_adopt(void) {
  /* racy: a plain peek, as above. */
  if (cds_lfs_empty(&depot_abandoned))
    return NULL;
  struct cds_lfs_head *head = __cds_lfs_pop_all(&depot_abandoned);
  if (head == NULL)
    return NULL;
  struct cds_lfs_node *node = &head->node;
  pn_segment_t *segment = depot_handoff_take(caa_container_of(node, pn_segment_t, depot_node));
  struct cds_lfs_node *rest = node->next;
  while (rest != NULL) {
    pn_segment_t *other = depot_handoff_take(caa_container_of(rest, pn_segment_t, depot_node));
    rest = rest->next;
    depot_push(&depot_abandoned, other);
  }
  return segment;
}

/* Give back a segment taken with pn_depot_take_abandoned (not a new
 * abandonment: not counted). */
void pn_depot_return_abandoned(pn_segment_t *segment) { depot_push(&depot_abandoned, segment); }

/* The whole abandoned stack, linked through segment->next (pop_all: no
 * ABA, see the top), for the purge thread's tidy (heap.c). */
pn_segment_t *pn_depot_take_abandoned(void) {
  if (cds_lfs_empty(&depot_abandoned))
    return NULL;
  struct cds_lfs_head *head = __cds_lfs_pop_all(&depot_abandoned);
  pn_segment_t *list = NULL;
  for (struct cds_lfs_node *node = head ? &head->node : NULL, *next; node != NULL; node = next) {
    /* The handoff's acquire before the node's link is read (see its comment). */
    pn_segment_t *segment = depot_handoff_take(caa_container_of(node, pn_segment_t, depot_node));
    next = node->next;
    segment->next = list;
    list = segment;
  }
  return list;
}

/* A cached empty segment, or NULL. */
pn_segment_t *pn_depot_take_cached(void) {
  pn_segment_t *segment = depot_pop_cached();
  if (segment != NULL) {
    pn_atomic_fetch_sub_relaxed(&depot_xcached_count, 1);
    pn_stat_add(PN_STAT_SEGMENTS_REUSED, 1);
  }
  return segment;
}

/* fork: liburcu's call_rcu worker and the urcu-bp registry must be quiesced
 * around fork (liburcu's README, "Interaction with fork()"). pantry's own
 * allocation paths hold no lock, so these handlers cannot deadlock with a
 * malloc that a callback makes.
 *
 * First the gate (depot_call_rcu): close it, then wait until no thread is
 * inside urcu_bp_call_rcu. This comes before liburcu's handlers, which
 * take the locks that a thread inside call_rcu may be waiting for (the
 * call_rcu lock when its first call creates the worker, the registry lock
 * when its read-side section registers it). The threads in there hold no
 * lock of ours and never wait for this one, so the wait ends; threads that
 * come to the gate meanwhile push on depot_pending and go on. */
void pn_depot_fork_prepare(void) {
  depot_in_urcu = true;
  pn_atomic_store_release32(&depot_xforking, 1);
  /* Partner of the fence in depot_call_rcu. */
  pn_atomic_fence_seq_cst();
  /* Acquire: matches each caller's release decrement after its enqueue. */
  while (pn_atomic_load_acquire(&depot_xcalling) != 0)
    sched_yield();
  urcu_bp_call_rcu_before_fork();
  urcu_bp_before_fork();
}

void pn_depot_fork_parent(void) {
  urcu_bp_after_fork_parent();
  urcu_bp_call_rcu_after_fork_parent();
  pn_atomic_store_release32(&depot_xforking, 0);
  depot_pending_flush(); /* what came to the gate while it was closed */
  depot_in_urcu = false;
}

void pn_depot_fork_child(void) {
  urcu_bp_after_fork_child();
  urcu_bp_call_rcu_after_fork_child();
  /* The threads counted in depot_xcalling are gone: they were only on
   * their way out of the gate (its count was seen at 0 while it closed). */
  pn_atomic_store_relaxed(&depot_xcalling, 0);
  pn_atomic_store_release32(&depot_xforking, 0);
  depot_pending_flush();
  depot_in_urcu = false;
}
