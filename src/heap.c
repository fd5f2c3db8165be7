/* heap.c - thread heaps: their lifecycle (creation on first use, abandonment
 * at thread exit through a pthread key destructor) and the slow paths of
 * allocation and free.
 *
 * Layer: below alloc.c; calls page.c, segment.c, depot.c, os.c.
 * Shared state: none of a heap's fields. Other threads reach its pages only
 * through page->xthread_free (remote frees) and segment->xfull_freed (a
 * parked full page got a remote free); see page.c for both protocols.
 *
 * Thread states, by the value of pn_heap_tls:
 *   &pn_heap_empty  no heap yet: the first allocation creates one;
 *   a heap          the thread's own;
 *   &pn_heap_done   its heap was abandoned by the key destructor (the thread
 *                   is exiting): allocations go to the fallback.
 * The sentinels' pages_direct all point at pn_page_empty, whose free list is
 * empty, so the fast path needs no extra test to land in the slow path.
 *
 * The fallback: a block allocated before pantry is initialised, while this
 * thread is initialising it, or after this thread's heap is gone gets a huge
 * segment of its own (a mapping, freed with munmap by whichever thread frees
 * it). Rare, never shared, so it needs no lock and cannot crash.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "internal.h"

pn_page_t pn_page_empty;

static pn_heap_t pn_heap_empty = {
    .pages_direct = {[0 ... PN_DIRECT_WSIZE_MAX] = &pn_page_empty},
    .is_sentinel = true,
};
static pn_heap_t pn_heap_done = {
    .pages_direct = {[0 ... PN_DIRECT_WSIZE_MAX] = &pn_page_empty},
    .is_sentinel = true,
};

_Thread_local pn_heap_t *pn_heap_tls = &pn_heap_empty;
static _Thread_local bool heap_tls_initializing;

/* Process state: 0 = not initialised, 1 = a thread is initialising, 2 = ready.
 * Written once by the initialising thread (acq/rel), read by all. */
static pn_atomic_uint32_t process_xstate;
static pthread_key_t heap_key;

/* ------------------------------------------------------------------------ */
/* Page queues                                                              */
/* ------------------------------------------------------------------------ */

/* direct_hi[bin]: the largest word size that `bin` serves, for the bins
 * that pages_direct serves (0 above them); so bin b serves the word sizes
 * direct_hi[b - 1] + 1 .. direct_hi[b] (and bin 1 also size 0). Written once
 * in pn_process_init, before any heap exists. */
static uint8_t direct_hi[PN_BIN_COUNT];

static void direct_table_init(void) {
  for (unsigned bin = 1; bin < PN_BIN_HUGE; bin++)
    if (pn_bin_size(bin) <= PN_DIRECT_SIZE_MAX)
      direct_hi[bin] = (uint8_t)pn_wsize(pn_bin_size(bin));
}

/* Keep pages_direct in step with the first page of `bin`'s queue. */
static void heap_queue_first_changed(pn_heap_t *heap, unsigned bin) {
  size_t hi = direct_hi[bin];
  if (hi == 0)
    return;
  size_t lo = bin == 1 ? 0 : (size_t)direct_hi[bin - 1] + 1;
  pn_page_t *first = heap->queues[bin].first ? heap->queues[bin].first : &pn_page_empty;
  for (size_t w = lo; w <= hi; w++)
    heap->pages_direct[w] = first;
}

static void heap_queue_push_front(pn_heap_t *heap, unsigned q, pn_page_t *page) {
  pn_page_queue_t *pq = &heap->queues[q];
  page->prev = NULL;
  page->next = pq->first;
  if (pq->first)
    pq->first->prev = page;
  else
    pq->last = page;
  pq->first = page;
  if (q != PN_BIN_FULL)
    heap_queue_first_changed(heap, q);
}

static void heap_queue_push_back(pn_heap_t *heap, unsigned q, pn_page_t *page) {
  pn_page_queue_t *pq = &heap->queues[q];
  page->next = NULL;
  page->prev = pq->last;
  if (pq->last) {
    pq->last->next = page;
    pq->last = page;
    return;
  }
  pq->first = pq->last = page;
  if (q != PN_BIN_FULL)
    heap_queue_first_changed(heap, q);
}

static void heap_queue_remove(pn_heap_t *heap, unsigned q, pn_page_t *page) {
  pn_page_queue_t *pq = &heap->queues[q];
  bool was_first = pq->first == page;
  if (page->prev)
    page->prev->next = page->next;
  else
    pq->first = page->next;
  if (page->next)
    page->next->prev = page->prev;
  else
    pq->last = page->prev;
  page->next = page->prev = NULL;
  if (was_first && q != PN_BIN_FULL)
    heap_queue_first_changed(heap, q);
}

static void heap_queue_move_to_front(pn_heap_t *heap, unsigned q, pn_page_t *page) {
  if (heap->queues[q].first == page)
    return;
  heap_queue_remove(heap, q, page);
  heap_queue_push_front(heap, q, page);
}

/* ------------------------------------------------------------------------ */
/* Segments of a heap                                                       */
/* ------------------------------------------------------------------------ */

/* heap->segments[kind] keeps segments that have unused pages before the
 * ones that are full, so the head tells whether any page is free. */
static void heap_segment_push(pn_heap_t *heap, pn_segment_t *segment, bool front) {
  pn_segment_t **list = &heap->segments[segment->kind];
  segment->prev = NULL;
  if (front || *list == NULL) {
    segment->next = *list;
    if (*list)
      (*list)->prev = segment;
    *list = segment;
    return;
  }
  pn_segment_t *last = *list;
  while (last->next)
    last = last->next;
  last->next = segment;
  segment->prev = last;
}

static void heap_segment_remove(pn_heap_t *heap, pn_segment_t *segment) {
  pn_segment_t **list = &heap->segments[segment->kind];
  if (segment->prev)
    segment->prev->next = segment->next;
  else
    *list = segment->next;
  if (segment->next)
    segment->next->prev = segment->prev;
  segment->next = segment->prev = NULL;
}

/* An empty segment: keep one per heap for reuse, give the rest to the depot. */
static void heap_segment_empty(pn_heap_t *heap, pn_segment_t *segment) {
  heap_segment_remove(heap, segment);
  if (heap->empty_segment == NULL) {
    heap->empty_segment = segment;
    return;
  }
  pn_depot_release(segment);
}

/* Shrinking (page.c's pn_page_shrink): while this thread gives emptied
 * pages back at once (over its purge reserve: a burst of frees), every
 * HEAP_SHRINK_EVERY such pages it also looks at up to HEAP_SHRINK_BUDGET
 * pages and blocks of its queues, round robin over the size classes, and
 * shrinks the pages that kept a few live blocks but were carved far past
 * them: memory that no page release would ever give back, since those pages
 * never empty. A thread that never goes over its reserve never shrinks, so
 * a steady workload never carves a page twice for this. Owner only. */
#define HEAP_SHRINK_EVERY 16
#define HEAP_SHRINK_BUDGET 8192

static void heap_shrink_pages(pn_heap_t *heap, size_t budget) {
  for (unsigned n = 0; n < PN_BIN_LARGE_MAX && budget > 0; n++) {
    unsigned bin = heap->shrink_bin % PN_BIN_LARGE_MAX + 1; /* 1 .. PN_BIN_LARGE_MAX */
    heap->shrink_bin = bin;
    for (pn_page_t *page = heap->queues[bin].first; page != NULL && budget > 0; page = page->next) {
      budget--;
      if (!pn_page_shrink_worth(page))
        continue;
      budget = budget > page->capacity ? budget - page->capacity : 0;
      pn_page_shrink(page); /* its collect may empty the page (remote frees): it stays
                               queued, as after heap_find_page's collect */
    }
  }
}

/* Return an empty page to its segment; owner only. */
static void heap_page_release(pn_heap_t *heap, pn_page_t *page) {
  pn_segment_t *segment = pn_page_segment(page);
  bool was_full = segment->used_pages == segment->page_count;
  pn_heap_stat_pages(heap, page, -1); /* stats */
  pn_segment_page_release(segment, page);
  heap->purge_pages++;
  /* purge.c: beyond a reserve of emptied memory, the page's goes back now, so
   * a burst of frees returns its memory as it goes, not a delay later. */
  if (pn_purge_page_now(segment, page->index) != 0 &&
      ++heap->shrink_releases % HEAP_SHRINK_EVERY == 0)
    heap_shrink_pages(heap, HEAP_SHRINK_BUDGET);
  if (segment->used_pages == 0) {
    heap_segment_empty(heap, segment);
  } else if (was_full) {
    heap_segment_remove(heap, segment);
    heap_segment_push(heap, segment, true);
  }
}

/* ------------------------------------------------------------------------ */
/* The full state                                                           */
/* ------------------------------------------------------------------------ */

/* Take a parked page back into its bin's queue. Owner only. */
static void heap_page_unfull(pn_heap_t *heap, pn_page_t *page) {
  heap_queue_remove(heap, PN_BIN_FULL, page);
  page->flags.x.in_full = 0;
  /* PN_THREAD_FREE_FULL stays set if no remote free has cleared it: no
   * atomic read-modify-write here, which a page that moves in and out of the
   * full state on every few frees would pay each time. A page back in its
   * queue may so carry the flag on an empty thread-free list: the next
   * remote free clears it and reports the page, and heap_reclaim_full
   * ignores a bit whose page is not in_full; pn_page_try_mark_full takes the
   * flag as already set. */
  pn_page_collect(page);
  pn_heap_stat_page(heap, page); /* stats */
  /* At the back, as mimalloc does: the page has one free block or a few,
   * and the pages before it go on serving, so it gathers more frees before
   * it is used; at the front it would be used up and parked again at once
   * (measured: server/1 parked and took back a page on 15% of its steps). */
  heap_queue_push_back(heap, page->bin, page);
}

/* Take back every parked page that got a remote free since it was parked.
 * Returns whether any came back. */
static bool heap_reclaim_full(pn_heap_t *heap) {
  bool any = false;
  for (int kind = 0; kind < PN_PAGE_HUGE; kind++) {
    for (pn_segment_t *s = heap->segments[kind]; s != NULL; s = s->next) {
      uintptr_t bits = pn_segment_take_full_freed(s);
      while (bits) {
        unsigned i = (unsigned)__builtin_ctzl(bits);
        bits &= bits - 1;
        pn_page_t *page = &s->pages[i];
        if (page->block_size != 0 && page->flags.x.in_full) {
          heap_page_unfull(heap, page);
          any = true;
        }
      }
    }
  }
  return any;
}

/* ------------------------------------------------------------------------ */
/* Adoption                                                                 */
/* ------------------------------------------------------------------------ */

/* Make an abandoned segment ours: collect its remote frees, free its empty
 * pages, queue the others (an emptied segment becomes the heap's spare or
 * goes back to the depot). */
static void heap_adopt(pn_heap_t *heap, pn_segment_t *segment) {
  /* Only this thread writes xowner now: we popped the segment. Relaxed: the
   * pop's CAS (a full barrier in liburcu) already ordered the abandoning
   * owner's writes before ours. */
  pn_atomic_store_relaxed(&segment->xowner, (uintptr_t)heap);
  pn_atomic_exchange_acquire(&segment->xfull_freed, 0);
  heap->adopted++;
  heap->purge_pages += pn_purge_pending_units(segment);
  pn_stat_add(PN_STAT_SEGMENTS_ADOPTED, 1);
  heap_segment_push(heap, segment, segment->used_pages < segment->page_count);
  for (uint32_t i = 0; i < segment->page_count; i++) {
    pn_page_t *page = &segment->pages[i];
    if (page->block_size == 0)
      continue;
    page->flags.x.in_full = 0;
    page->next = page->prev = NULL;
    pn_stats_page_adopted(heap, page); /* stats: its counts move to this heap */
    pn_page_collect_all(page);         /* its exchange clears PN_THREAD_FREE_FULL */
    if (page->used == 0) {
      /* Decide before the release: releasing the last page may hand the
       * segment to the depot, after which it is not ours to read. */
      bool last = segment->used_pages == 1;
      heap_page_release(heap, page);
      if (last)
        return;
      continue;
    }
    pn_heap_stat_page(heap, page); /* stats */
    heap_queue_push_front(heap, page->bin, page);
  }
}

/* ------------------------------------------------------------------------ */
/* Finding a page with a free block                                         */
/* ------------------------------------------------------------------------ */

static pn_page_t *heap_page_fresh(pn_heap_t *heap, unsigned bin) {
  pn_page_kind_t kind = pn_bin_kind(bin);
  pn_segment_t *segment = heap->segments[kind];
  pn_page_t *page = NULL;
  if (segment != NULL && segment->used_pages < segment->page_count)
    page = pn_segment_page_take(segment); /* NULL while a purger gives its unused pages back */
  while (page == NULL) {
    if (heap->empty_segment != NULL) {
      segment = heap->empty_segment;
      heap->empty_segment = NULL;
      pn_segment_format(segment, kind);
    } else {
      segment = pn_segment_alloc(kind);
      if (segment == NULL)
        return NULL;
    }
    pn_atomic_store_relaxed(&segment->xowner, (uintptr_t)heap);
    heap_segment_push(heap, segment, true);
    page = pn_segment_page_take(segment); /* NULL only for the spare, if being purged */
  }
  if (segment->used_pages == segment->page_count && segment->next != NULL) {
    heap_segment_remove(heap, segment);
    heap_segment_push(heap, segment, false);
  }
  pn_page_format(page, pn_bin_size(bin), bin, NULL);
  page->stat_used = 0;
  pn_heap_stat_pages(heap, page, +1); /* stats */
  pn_page_extend(page);
  heap_queue_push_front(heap, bin, page);
  return page;
}

/* Trimming (purge.c's side of the page kept per size class, see
 * pn_heap_page_retire): a kept page that emptied after a burst, with more
 * than PAGE_TRIM_MIN bytes of blocks carved, forgets its free blocks (they
 * are carved again on demand) and lends its memory to the purgers, after the
 * purge delay, like a released page: so a thread that goes quiet keeps at
 * most PAGE_TRIM_MIN bytes per size class. Smaller pages are left alone: a
 * thread that allocates and frees a batch over and over (a request's worth)
 * must not carve its pages again every time (measured on bench `batch`,
 * callgrind: 134 instructions per operation when every kept page was
 * trimmed, 127 with a 32 KiB bound, 109 with a small page's 64 KiB).
 * area == 0 marks a trimmed page: no pointer is a block of it. Owner only. */
#define PAGE_TRIM_MIN ((size_t)64 * 1024)

static void heap_page_trim(pn_heap_t *heap, pn_page_t *page) {
  if ((size_t)page->capacity * page->block_size <= PAGE_TRIM_MIN)
    return;
  page->free = page->local_free = NULL;
  page->capacity = 0;
  pn_atomic_store_relaxed32u(&page->area, 0);
  pn_purge_page_release(pn_page_segment(page), page->index);
  heap->purge_pages++;
}

/* Before a trimmed page carves blocks again: take its memory back. False
 * while a purger is giving it back right now (use another page). The
 * caller carves at once (pn_page_extend), which sets area again. */
static bool heap_page_untrim(pn_page_t *page) {
  if (PN_LIKELY(page->area != 0))
    return true;
  return pn_purge_page_take(pn_page_segment(page), page);
}

/* A page of `bin` with at least one free block, at the front of its queue. */
static pn_page_t *heap_find_page(pn_heap_t *heap, unsigned bin) {
  for (int attempt = 0; attempt < 8; attempt++) {
    pn_page_t *page = heap->queues[bin].first;
    while (page != NULL) {
      pn_page_t *next = page->next;
      pn_page_collect(page);
      if (page->free == NULL && !heap_page_untrim(page)) { /* trimmed, being purged */
        page = next;
        continue;
      }
      if (page->free == NULL)
        pn_page_extend(page);
      if (page->free != NULL) {
        heap_queue_move_to_front(heap, bin, page);
        return page;
      }
      if (pn_page_try_mark_full(page)) {
        pn_heap_stat_page(heap, page); /* stats */
        heap_queue_remove(heap, bin, page);
        heap_queue_push_front(heap, PN_BIN_FULL, page);
      } else {
        next = page; /* a remote free arrived: collect it */
      }
      page = next;
    }
    /* Nothing in the queue: parked pages that got remote frees, then an
     * abandoned segment (memory of exited threads is reused before new
     * memory is touched), then a fresh page. */
    if (heap_reclaim_full(heap) && heap->queues[bin].first != NULL)
      continue;
    pn_segment_t *abandoned = pn_depot_adopt();
    if (abandoned != NULL) {
      heap_adopt(heap, abandoned);
      continue;
    }
    return heap_page_fresh(heap, bin);
  }
  return heap_page_fresh(heap, bin);
}

/* ------------------------------------------------------------------------ */
/* The fallback                                                             */
/* ------------------------------------------------------------------------ */

static void *heap_fallback_alloc(size_t size, size_t align) {
  void *block;
  if (pn_segment_alloc_huge(size, align, &block) == NULL)
    return NULL;
  pn_stat_add(PN_STAT_FALLBACK_ALLOCS, 1);
  return block;
}

/* ------------------------------------------------------------------------ */
/* Lifecycle                                                                */
/* ------------------------------------------------------------------------ */

static void heap_abandon(pn_heap_t *heap);

static void heap_key_destructor(void *value) {
  pn_heap_t *heap = value;
  if (heap == NULL || heap->is_sentinel)
    return;
  pn_heap_tls = &pn_heap_done;
  pn_stat_add(PN_STAT_HEAPS_ABANDONED, 1);
  heap_abandon(heap);
}

static void process_fork_prepare(void) { pn_depot_fork_prepare(); }
static void process_fork_parent(void) { pn_depot_fork_parent(); }
static void process_fork_child(void) { pn_depot_fork_child(); }

/* One-time process initialisation. Lock-free: a thread that finds another
 * thread initialising does not wait; its allocation uses the fallback. */
void pn_process_init(void) {
  uint32_t state = 0;
  if (!pn_atomic_cas_strong_acq_rel32(&process_xstate, &state, 1))
    return;
  heap_tls_initializing = true;
  pn_options_init(); /* options.c: PANTRY_* from the environment, no allocation */
  uintptr_t key = 0;
  if (getrandom(&key, sizeof key, GRND_NONBLOCK) != (ssize_t)sizeof key) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    key = (uintptr_t)ts.tv_nsec * 0x9E3779B97F4A7C15u ^ (uintptr_t)&key;
  }
  pn_cookie_key = key | 1;
  direct_table_init();
  if (pthread_key_create(&heap_key, heap_key_destructor) != 0)
    pn_fatal("pthread_key_create failed: cannot track thread exits");
  pthread_atfork(process_fork_prepare, process_fork_parent, process_fork_child);
  heap_tls_initializing = false;
  pn_atomic_store_release32(&process_xstate, 2);
}

/* Priority 101: before purge.c's (102) and deferred.c's (103) constructors,
 * which register their fork handlers after the depot's (their prepare
 * handlers then run before the depot's, as each file's fork comment needs). */
__attribute__((constructor(101))) static void process_init_at_load(void) { pn_process_init(); }

static pn_heap_t *heap_create(void) {
  size_t size = (sizeof(pn_heap_t) + PN_OS_PAGE_SIZE - 1) & ~(PN_OS_PAGE_SIZE - 1);
  pn_heap_t *heap = pn_os_alloc_aligned(size, PN_OS_PAGE_SIZE);
  if (heap == NULL)
    return NULL;
  memset(heap, 0, sizeof *heap);
  for (size_t w = 0; w <= PN_DIRECT_WSIZE_MAX; w++)
    heap->pages_direct[w] = &pn_page_empty;
  return heap;
}

/* The calling thread's heap, created on first use; NULL when the thread must
 * use the fallback (pantry initialising, or the thread is exiting). */
pn_heap_t *pn_heap_get_or_init(void) {
  pn_heap_t *heap = pn_heap_tls;
  if (PN_LIKELY(!heap->is_sentinel))
    return heap;
  if (heap == &pn_heap_done || heap_tls_initializing)
    return NULL;
  if (pn_atomic_load_acquire32(&process_xstate) != 2) {
    pn_process_init();
    if (pn_atomic_load_acquire32(&process_xstate) != 2)
      return NULL;
  }
  heap_tls_initializing = true;
  heap = heap_create();
  if (heap != NULL) {
    heap->stats = pn_stats_heap_claim();
    pn_stat_add(PN_STAT_HEAPS_CREATED, 1);
    pn_heap_tls = heap;
    pthread_setspecific(heap_key, heap);
  }
  heap_tls_initializing = false;
  return heap;
}

/* Thread exit: free what is empty, abandon the rest to the depot. */
static void heap_abandon(pn_heap_t *heap) {
  for (int kind = 0; kind < PN_PAGE_HUGE; kind++) {
    pn_segment_t *segment = heap->segments[kind];
    while (segment != NULL) {
      pn_segment_t *next = segment->next;
      for (uint32_t i = 0; i < segment->page_count; i++) {
        pn_page_t *page = &segment->pages[i];
        if (page->block_size == 0)
          continue;
        page->flags.x.in_full = 0;
        pn_page_collect_all(page); /* its exchange clears PN_THREAD_FREE_FULL */
        page->next = page->prev = NULL;
        pn_heap_stat_page(heap, page); /* stats */
        if (page->used == 0) {
          pn_heap_stat_pages(heap, page, -1); /* stats */
          pn_segment_page_release(segment, page);
        }
      }
      segment->next = segment->prev = NULL;
      if (segment->used_pages == 0) {
        pn_depot_release(segment);
      } else {
        /* Release: the adopter's pop (a full barrier) sees our page state. */
        pn_atomic_store_release(&segment->xowner, 0);
        pn_depot_abandon(segment);
      }
      segment = next;
    }
  }
  if (heap->empty_segment)
    pn_depot_release(heap->empty_segment);
  pn_stats_heap_release(heap->stats); /* stats: fold this thread's counts into the total */
  size_t size = (sizeof(pn_heap_t) + PN_OS_PAGE_SIZE - 1) & ~(PN_OS_PAGE_SIZE - 1);
  pn_os_free(heap, size);
}

/* ------------------------------------------------------------------------ */
/* Purging                                                                  */
/* ------------------------------------------------------------------------ */

/* Every 64th slow path, when pages wait to be purged, look at the clock and
 * purge the pages whose delay has passed. */
static void heap_purge_maybe(pn_heap_t *heap) {
  if (PN_LIKELY(heap->purge_pages == 0 || (++heap->slow_count & 63) != 0))
    return;
  uint64_t now = pn_clock_now_ns();
  uint32_t pending = 0;
  for (int kind = 0; kind < PN_PAGE_HUGE; kind++) {
    for (pn_segment_t *s = heap->segments[kind]; s != NULL; s = s->next) {
      if (pn_purge_pending_units(s) == 0)
        continue;
      pn_purge_segment(s, now, false);
      pending += pn_purge_pending_units(s);
    }
  }
  if (heap->empty_segment != NULL) {
    pn_purge_segment(heap->empty_segment, now, false);
    pending += pn_purge_pending_units(heap->empty_segment);
  }
  heap->purge_pages = pending;
  pn_purge_local_reset(pending); /* purge.c: the exact count of this thread's */
}

/* pantry_collect (purge.c): give back now what the heap holds without
 * need. Takes every remote free, releases every page that is empty (even
 * the one kept per size class), purges every unused unit of the heap's
 * segments at once and, when `force`, gives the spare empty segment to the
 * depot. Owner only. */
/* Segments of exited threads wait in the depot until a thread needs memory,
 * while other threads go on freeing their blocks. The purge thread calls
 * this, every purge delay while any wait: it takes the whole abandoned
 * stack (pop_all: the segments are its own until it pushes them back),
 * collects each page's remote frees, releases the pages that emptied and
 * purges them at once, gives empty segments back to the depot, and pushes
 * the rest back, adoptable as before. So a burst whose threads are gone
 * gives its memory back with no further call into pantry. */
bool pn_heap_tidy_abandoned(uint64_t now) {
  pn_segment_t *list = pn_depot_take_abandoned();
  bool any_left = false;
  while (list != NULL) {
    pn_segment_t *segment = list;
    list = list->next;
    segment->next = NULL;
    for (uint32_t i = 0; i < segment->page_count; i++) {
      pn_page_t *page = &segment->pages[i];
      if (page->block_size == 0 || page->pool != NULL)
        continue;
      page->flags.x.in_full = 0;
      pn_page_collect_all(page); /* its exchange clears PN_THREAD_FREE_FULL */
      bool released = page->used == 0;
      pn_stats_orphan_page(page, page->used, released);
      if (released)
        pn_segment_page_release(segment, page);
      else
        pn_page_shrink(page); /* live blocks left: give back the free tail */
    }
    if (segment->used_pages == 0) {
      pn_depot_release(segment);
      continue;
    }
    pn_purge_segment(segment, now, true);
    pn_depot_return_abandoned(segment);
    any_left = true;
  }
  return any_left;
}

void pn_heap_collect(pn_heap_t *heap, bool force) {
  /* Segments of exited threads wait in the depot until a thread needs
   * memory; blocks freed in them since are free but their pages still hold
   * memory. Adopt them all now: their empty pages and segments go back
   * below, the rest stays with this heap (bounded, against a depot that
   * other threads refill as fast as this loop empties it). */
  for (int i = 0; i < 65536; i++) {
    pn_segment_t *abandoned = pn_depot_adopt();
    if (abandoned == NULL)
      break;
    heap_adopt(heap, abandoned);
  }
  heap_reclaim_full(heap);
  for (unsigned bin = 1; bin <= PN_BIN_LARGE_MAX; bin++) {
    pn_page_t *page = heap->queues[bin].first;
    while (page != NULL) {
      pn_page_t *next = page->next;
      pn_page_collect_all(page);
      pn_heap_stat_page(heap, page);
      if (page->used == 0) {
        heap_queue_remove(heap, bin, page);
        heap_page_release(heap, page);
      }
      page = next;
    }
  }
  heap_shrink_pages(heap, SIZE_MAX); /* every size class once, no budget */
  uint64_t now = pn_clock_now_ns();
  for (int kind = 0; kind < PN_PAGE_HUGE; kind++)
    for (pn_segment_t *s = heap->segments[kind]; s != NULL; s = s->next)
      pn_purge_segment(s, now, true);
  if (heap->empty_segment != NULL) {
    if (force) {
      pn_depot_release(heap->empty_segment);
      heap->empty_segment = NULL;
    } else {
      pn_purge_segment(heap->empty_segment, now, true);
    }
  }
  heap->purge_pages = 0;
  pn_purge_local_reset(0);
}

/* ------------------------------------------------------------------------ */
/* Slow paths                                                               */
/* ------------------------------------------------------------------------ */

/* Everything the fast path does not: a first allocation, an empty free
 * list, a size above PN_DIRECT_SIZE_MAX, a huge block. */
void *pn_heap_malloc_slow(pn_heap_t *heap, size_t size) {
  /* The commonest miss first: the page's free list ran out while the
   * owner's own frees wait on its local_free; take them and go (the
   * sentinels' pages_direct point at pn_page_empty, whose lists are empty). */
  if (PN_LIKELY(size <= PN_DIRECT_SIZE_MAX)) {
    pn_page_t *page = heap->pages_direct[pn_wsize(size)];
    if (page->local_free != NULL) {
      page->free = page->local_free;
      page->local_free = NULL;
      return pn_page_pop(page);
    }
  }
  if (PN_UNLIKELY(heap->is_sentinel)) {
    heap = pn_heap_get_or_init();
    if (heap == NULL)
      return heap_fallback_alloc(size, 16);
  }
  if (PN_UNLIKELY(size > PN_LARGE_SIZE_MAX)) {
    if (size > PTRDIFF_MAX) {
      errno = ENOMEM;
      return NULL;
    }
    void *block;
    if (pn_segment_alloc_huge(size, 16, &block) == NULL)
      return NULL;
    return block;
  }
  heap_purge_maybe(heap);
  unsigned bin = pn_bin(size);
  pn_page_t *page = heap->queues[bin].first;
  if (page == NULL || page->free == NULL) {
    page = heap_find_page(heap, bin);
    if (page == NULL) {
      errno = ENOMEM;
      return NULL;
    }
    /* purge.c: start the purge thread once pantry maps 8 MiB; here, where
     * the heap is consistent, since pthread_create may allocate. */
    pn_purge_thread_start_maybe();
  }
  void *block = pn_page_pop(page);
  pn_heap_stat_page(heap, page); /* stats: blocks handed out since the last slow path */
  return block;
}

/* `size` bytes aligned to `align` (a power of two, 16 < align <=
 * PN_ALIGN_MAX): a block of size + align - 1 bytes, and a pointer into it.
 * When the pointer is not the block's start, the page is marked has_aligned
 * (before the pointer is handed out, so any thread that frees it sees the
 * mark) and free finds the block's start by division. */
void *pn_heap_malloc_aligned(pn_heap_t *heap, size_t size, size_t align) {
  if (size > PTRDIFF_MAX - align) {
    errno = ENOMEM;
    return NULL;
  }
  size_t padded = size + align - 1;
  if (padded > PN_LARGE_SIZE_MAX) {
    void *block;
    if (pn_segment_alloc_huge(size, align, &block) == NULL)
      return NULL;
    return block;
  }
  /* The next block of `size`'s class may be aligned already (a class that
   * is a multiple of `align` in a page whose start is aligned): take it. */
  if (!heap->is_sentinel) {
    pn_page_t *first = heap->queues[pn_bin(size)].first;
    if (first != NULL && first->free != NULL && ((uintptr_t)first->free & (align - 1)) == 0)
      return pn_page_pop(first);
  }
  uint8_t *block;
  block = pn_heap_malloc_slow(heap, padded);
  if (block == NULL)
    return NULL;
  uint8_t *aligned = (uint8_t *)(((uintptr_t)block + align - 1) & ~(uintptr_t)(align - 1));
  if (aligned != block) {
    pn_segment_t *segment = pn_segment_of(block);
    pn_page_t *page = pn_segment_page_of(segment, block);
    if (segment->kind != PN_PAGE_HUGE)
      pn_atomic_store_relaxed8(&page->flags.x.has_aligned, 1);
  }
  return aligned;
}

/* The page's last block came back (used == 0). Keep the page if it is the
 * only one of its size class, so alloc/free of one block does not map and
 * unmap; otherwise hand it back to its segment. Owner only. */
void pn_heap_page_retire(pn_heap_t *heap, pn_page_t *page) {
  pn_heap_stat_page(heap, page); /* stats */
  if (page->flags.x.in_full)
    heap_page_unfull(heap, page);
  pn_page_queue_t *pq = &heap->queues[page->bin];
  if (pq->first == page && pq->last == page) {
    heap_page_trim(heap, page); /* kept, but its memory may go after the purge delay */
    return;
  }
  heap_queue_remove(heap, page->bin, page);
  heap_page_release(heap, page);
}

/* The owner's fast free (alloc.h) has freed a block of `page`, which was
 * parked full or is now empty: take it out of the full state, or retire it.
 * Owner only. */
void pn_heap_page_freed(pn_heap_t *heap, pn_page_t *page) {
  if (page->used == 0) {
    pn_heap_page_retire(heap, page);
    return;
  }
  heap_page_unfull(heap, page);
}

/* A free by the owner that the fast path did not take: an interior pointer
 * of an aligned block, or a block whose first word looks like a free
 * block's link. `block` is the block's start. */
void pn_heap_free_local_slow(pn_heap_t *heap, pn_page_t *page, pn_block_t *block, const char *fn) {
  if (PN_UNLIKELY(page->used == 0))
    pn_fatal("%s(%p): double free (no block of its page is in use; block size %zu)", fn,
             (void *)block, page->block_size);
  if (pn_block_maybe_free(page, block)) {
    /* Collect remote frees first so the scan sees every free block. */
    pn_page_collect_all(page);
    if (pn_page_contains_free(page, block))
      pn_fatal("%s(%p): double free (the block is already on its page's free list; block "
               "size %zu)",
               fn, (void *)block, page->block_size);
  }
  pn_block_release(page, block, fn);
  pn_block_set_next(page, block, page->local_free);
  page->local_free = block;
  page->used--;
  pn_heap_stat_page(heap, page); /* stats */
  if (page->flags.x.in_full)
    heap_page_unfull(heap, page);
  if (page->used == 0)
    pn_heap_page_retire(heap, page);
}
