/* pool.c - object pools: fixed-size objects of one layout with init and drop
 * callbacks, freed from any thread, destroyed in one batch (the kernel's
 * kmem_cache; Rust's Box<T> with Drop).
 *
 * Layer: the top, beside alloc.c. Calls page.c (free lists, the full state,
 * remote frees), segment.c (segments and pages), depot.c (where segments go
 * at destroy) and the public malloc API (for its own small records).
 *
 * The pieces:
 *   pool     one per pantry_pool_create: the layout, the callbacks, and two
 *            lock-free registries (push only): every segment the pool ever
 *            took, and every cache. Destroy finds every object through the
 *            first, whichever thread allocated it, exited threads included.
 *   segment  taken by one cache for the pool's objects only (page->pool =
 *            the pool; a page never mixes pools). segment->xowner stays 0, so
 *            the core's free never takes a pool object for a local block;
 *            segment->xpool_owner holds the owning thread's token instead.
 *   cache    one per (thread, pool): the page the thread allocates from, its
 *            queues of pages (avail, full), its segments and its counters.
 *            The owner allocates and frees locally with no lock and no atomic
 *            read-modify-write, as a thread heap does.
 *   thread   a thread-local table of POOL_SLOTS slots {pool id, cache},
 *            direct-mapped by the pool's id, and the list of its caches. Ids
 *            are never reused, so a slot or cache of a destroyed pool never
 *            matches a new pool, even one at the same address.
 *
 * Shared state (everything else belongs to one owner):
 *   pool->xcaches, pool->xsegments  push-only lists: CAS release in the
 *       push, acquire load in the walks; entries leave only at destroy.
 *   cache->xstate  the hand-off of a cache between its thread and its pool:
 *
 *       ACTIVE --thread exits--> ORPHANED (it has segments) or VACANT (none)
 *       ORPHANED, VACANT --a thread without a cache takes it whole--> ACTIVE
 *       ORPHANED --a cache that needs pages merges its segments--> VACANT
 *       ACTIVE --destroy--> DEAD: its thread frees it (prune, exit)
 *       ORPHANED, VACANT --destroy--> freed by destroy
 *
 *     Every move out of ORPHANED or VACANT is a CAS (adopters race); the
 *     thread's exit is a CAS from ACTIVE (it races with destroy's exchange
 *     to DEAD), so exactly one side frees a cache. An exiting thread touches
 *     only its caches, never the pool or its segments: a pool may be
 *     destroyed while a thread that used it exits.
 *   cache->xallocs, cache->xfrees  written by the owner (relaxed load and
 *       store, no read-modify-write), read by stats.
 *   segment->xpool_owner  written by the owning thread, compared by every
 *       free: relaxed, since only a thread can have stored its own token and
 *       tokens are never reused.
 *   page->xthread_free, segment->xfull_freed  as in page.c.
 *   pool->xlive, xpeak, xpages, xsegments_count, xfrees_lost  atomic relaxed
 *       counters, touched in slow paths only.
 *   pool->xbusy  debug builds: alloc and free in progress, and destroy's mark.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "pantry.h"

#define POOL_SLOTS 16          /* per-thread table of caches: a power of two */
#define POOL_NAME_MAX 48       /* bytes of the name kept, NUL included */
#define POOL_ALIGN_MAX ((size_t)4096)
#define POOL_SIZE_MAX PN_LARGE_SIZE_MAX /* >= 7 objects in a page */
#define POOL_FLUSH_MIN 64      /* count change that a slow path folds into pool->xlive */
#define POOL_PAGE_BLOCKS_MAX 4096 /* the most blocks a page holds: 64 KiB / 16 */
#define POOL_BUSY_DESTROYING ((uintptr_t)1 << (sizeof(uintptr_t) * 8 - 1))

_Static_assert(POOL_PAGE_BLOCKS_MAX * 16 == (size_t)1 << PN_SMALL_PAGE_SHIFT,
               "a small page holds at most 4096 blocks of 16 bytes");
_Static_assert(PN_SEGMENT_HEADER_SIZE % POOL_ALIGN_MAX == 0,
               "page 0 starts after the header: aligned to every pool alignment");

enum pool_cache_state {
  POOL_CACHE_ACTIVE,   /* a live thread owns it */
  POOL_CACHE_ORPHANED, /* its thread exited; the pool owns it and its segments */
  POOL_CACHE_VACANT,   /* the pool owns it; it holds no segment */
  POOL_CACHE_DEAD,     /* the pool was destroyed; its thread frees it */
};

typedef struct pool_cache pool_cache_t;

/* A thread's part of a pool.
 * Invariant (owner's view): page == avail.first, or &pn_page_empty when
 * avail is empty; every page of every segment in `segments` with
 * block_size != 0 is in exactly one of avail and full; a page is in full
 * <=> page->flags.x.in_full.
 * Live objects of the pool == sum over its caches of (xallocs - xfrees),
 * minus pool->xfrees_lost. */
struct pool_cache {
  /* Read by other threads (registry walks); written at hand-offs only. */
  pn_atomic_uintptr_t xstate; /* atomic acq/rel: enum pool_cache_state */
  pool_cache_t *pool_next;    /* immutable once pushed on pool->xcaches */
  uint64_t id;                /* immutable: the pool's id */
  pantry_pool_t *pool;        /* immutable */
  uintptr_t token;            /* owner: its thread's token (stale while not ACTIVE) */
  /* The owner's; the fast paths touch only this line. */
  _Alignas(64) pn_page_t *page; /* owner: the page allocations pop from */
  pn_atomic_uintptr_t xallocs;  /* owner writes (relaxed), stats read: successful allocs */
  pn_atomic_uintptr_t xfrees;   /* owner writes (relaxed), stats read: frees by this thread */
  pn_page_queue_t avail;        /* owner: pages that may have free blocks */
  pn_page_queue_t full;         /* owner: pages parked full (PN_THREAD_FREE_FULL) */
  pn_segment_t *segments;       /* owner: its segments, those with unused pages first */
  uintptr_t flushed;            /* owner: xallocs - xfrees as last added to pool->xlive */
  bool grew;                    /* owner: a fresh page was formatted since the last flush */
  pool_cache_t *thread_next;    /* owner: the thread's list of caches */
  pool_cache_t *thread_prev;    /* owner */
};

struct pantry_pool {
  /* Immutable after create: read by every alloc and free. */
  uint64_t id; /* never reused (pool_xnext_id) */
  size_t block_size;
  pantry_init_fn init;
  pantry_drop_fn drop;
  void *ctx;
  pn_page_kind_t kind;
  size_t size;
  size_t align;
  char name[POOL_NAME_MAX];
  /* Shared; slow paths only. */
  _Alignas(64) pn_atomic_uintptr_t xcaches; /* atomic: pool_cache_t *, push only */
  pn_atomic_uintptr_t xsegments;            /* atomic: pn_segment_t *, push only (pool_next) */
  pn_atomic_uintptr_t xsegment_count;       /* atomic relaxed */
  pn_atomic_uintptr_t xpages;               /* atomic relaxed: pages formatted */
  pn_atomic_uintptr_t xlive;  /* atomic relaxed: sum of the caches' `flushed` */
  pn_atomic_uintptr_t xpeak;  /* atomic relaxed: the highest xlive (or stats live) seen */
  pn_atomic_uintptr_t xfrees_lost; /* atomic relaxed: frees by a thread that had no cache */
  _Alignas(64) pn_atomic_uintptr_t xbusy; /* atomic acq/rel, debug builds only: calls in
                                             progress | POOL_BUSY_DESTROYING */
};

typedef struct pool_slot {
  uint64_t id; /* 0: empty */
  pool_cache_t *cache;
} pool_slot_t;

/* A thread's pool state. Thread-local; nothing here is shared. */
typedef struct pool_thread {
  pool_slot_t slots[POOL_SLOTS];
  uintptr_t token;       /* 0 until the thread first uses a pool; then unique */
  pool_cache_t *caches;  /* its caches: ACTIVE, or DEAD until pruned */
  bool exit_hooked;      /* pthread_setspecific(pool_key) done */
} pool_thread_t;

static _Thread_local pool_thread_t pool_thread;
static pn_atomic_uintptr_t pool_xnext_id;    /* atomic relaxed: the last id given */
static pn_atomic_uintptr_t pool_xnext_token; /* atomic relaxed: the last token given */
static pthread_key_t pool_key;
static pthread_once_t pool_key_once = PTHREAD_ONCE_INIT;

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

/* A counter only its owner writes: a plain increment that readers may load. */
static inline void pool_count(pn_atomic_uintptr_t *counter) {
  pn_atomic_store_relaxed(counter, pn_atomic_load_relaxed(counter) + 1);
}

/* Debug builds: the tag a freed object carries in its second word. */
static inline uintptr_t pool_free_tag(const void *obj) {
  return (uintptr_t)obj ^ pn_cookie_key ^ (uintptr_t)0x5a5a5a5a5a5a5a5aull;
}

static void pool_queue_push(pn_page_queue_t *q, pn_page_t *page, bool front) {
  if (front) {
    page->prev = NULL;
    page->next = q->first;
    if (q->first) q->first->prev = page;
    else q->last = page;
    q->first = page;
  } else {
    page->next = NULL;
    page->prev = q->last;
    if (q->last) q->last->next = page;
    else q->first = page;
    q->last = page;
  }
}

static void pool_queue_remove(pn_page_queue_t *q, pn_page_t *page) {
  if (page->prev) page->prev->next = page->next;
  else q->first = page->next;
  if (page->next) page->next->prev = page->prev;
  else q->last = page->prev;
  page->next = page->prev = NULL;
}

/* Move every page of `from` to the end of `to`. */
static void pool_queue_append(pn_page_queue_t *to, pn_page_queue_t *from) {
  if (from->first == NULL) return;
  if (to->last) {
    to->last->next = from->first;
    from->first->prev = to->last;
  } else {
    to->first = from->first;
  }
  to->last = from->last;
  from->first = from->last = NULL;
}

static inline void pool_cache_sync_page(pool_cache_t *cache) {
  cache->page = cache->avail.first ? cache->avail.first : &pn_page_empty;
}

/* The segment list of a cache keeps segments with unused pages first. */
static void pool_segment_link(pool_cache_t *cache, pn_segment_t *segment) {
  bool room = segment->used_pages < segment->page_count;
  segment->prev = NULL;
  segment->next = NULL;
  if (room || cache->segments == NULL) {
    segment->next = cache->segments;
    if (cache->segments) cache->segments->prev = segment;
    cache->segments = segment;
    return;
  }
  pn_segment_t *last = cache->segments;
  while (last->next) last = last->next;
  last->next = segment;
  segment->prev = last;
}

static void pool_segment_unlink(pool_cache_t *cache, pn_segment_t *segment) {
  if (segment->prev) segment->prev->next = segment->next;
  else cache->segments = segment->next;
  if (segment->next) segment->next->prev = segment->prev;
  segment->next = segment->prev = NULL;
}

/* ------------------------------------------------------------------------ */
/* Diagnostics                                                              */
/* ------------------------------------------------------------------------ */

static const char *pool_name_of(const pantry_pool_t *pool) {
  return pool != NULL ? pool->name : "(null)";
}

/* pantry_free (or realloc, free_sized, dealloc) of a pool object: alloc.c. */
void pn_pool_misfree(const void *pool, const void *p, const char *fn) {
  pn_fatal("%s(%p): the object belongs to pool '%s' (%p): free it with pantry_pool_free, which "
           "runs its drop and keeps the pool's pages and counts right",
           fn, p, pool_name_of(pool), pool);
}

/* The checks that every pointer given to pantry_pool_free passes; each
 * failure names the pool and the pointer, then aborts. Returns the page. */
static pn_page_t *pool_check_object(pantry_pool_t *pool, void *obj, const char *fn) {
  if (PN_UNLIKELY(pool == NULL)) pn_fatal("%s(NULL, %p): the pool is NULL", fn, obj);
  if (!pn_segment_map_contains(obj) || !pn_segment_is_valid(pn_segment_of(obj)))
    pn_fatal("%s(%p): pool '%s' (%p): pointer was not allocated by pantry (not in any pantry "
             "segment: a stack, static or other allocator's address, or memory already "
             "returned)",
             fn, obj, pool->name, (void *)pool);
  pn_segment_t *segment = pn_segment_of(obj);
  pn_page_t *page = pn_segment_page_of(segment, obj);
  const pantry_pool_t *owner = page->pool;
  if (PN_UNLIKELY(owner != pool)) {
    if (owner == NULL)
      pn_fatal("%s(%p): pool '%s' (%p): pointer is not a pool object (a pantry_malloc block, "
               "an unused page, or an object of a destroyed pool)",
               fn, obj, pool->name, (void *)pool);
    pn_fatal("%s(%p): pool '%s' (%p): the object belongs to another pool, '%s' (%p): freed "
             "into the wrong pool",
             fn, obj, pool->name, (void *)pool, owner->name, (void *)owner);
  }
  if (!pn_page_is_block_start(page, obj))
    pn_fatal("%s(%p): pool '%s' (%p): pointer into the middle of an object (object size %zu)",
             fn, obj, pool->name, (void *)pool, pool->block_size);
  if (pn_debug && (size_t)((uint8_t *)obj - page->page_start) >=
                      (size_t)page->capacity * page->block_size)
    pn_fatal("%s(%p): pool '%s' (%p): pointer to an object never handed out", fn, obj,
             pool->name, (void *)pool);
  return page;
}

PN_COLD static void pool_double_free(const pantry_pool_t *pool, const void *obj,
                                     const char *how) {
  pn_fatal("pantry_pool_free(%p): pool '%s' (%p): double free: the object is already free (%s)",
           obj, pool->name, (const void *)pool, how);
}

/* Debug builds: destroy must not race with alloc or free (include/pantry.h). */
static void pool_busy_enter(pantry_pool_t *pool, const char *fn) {
  uintptr_t busy = pn_atomic_fetch_add_acq_rel(&pool->xbusy, 1);
  if (PN_UNLIKELY(busy & POOL_BUSY_DESTROYING))
    pn_fatal("%s(pool '%s' %p): called while pantry_pool_destroy runs on the pool (from "
             "another thread, or from a drop callback)",
             fn, pool->name, (void *)pool);
}

static void pool_busy_leave(pantry_pool_t *pool) { pn_atomic_fetch_sub_acq_rel(&pool->xbusy, 1); }

/* ------------------------------------------------------------------------ */
/* Counters                                                                 */
/* ------------------------------------------------------------------------ */

static void pool_peak_raise(pantry_pool_t *pool, uintptr_t live) {
  if ((intptr_t)live <= 0) return;
  uintptr_t peak = pn_atomic_load_relaxed(&pool->xpeak);
  while (live > peak && !pn_atomic_cas_strong_relaxed(&pool->xpeak, &peak, live)) {
  }
}

/* Fold the cache's count change into pool->xlive when it moved by
 * POOL_FLUSH_MIN or more (or at all, with `force`), and raise the peak.
 * Owner only; slow paths only. */
static void pool_cache_flush(pool_cache_t *cache, bool force) {
  uintptr_t now = pn_atomic_load_relaxed(&cache->xallocs) - pn_atomic_load_relaxed(&cache->xfrees);
  intptr_t delta = (intptr_t)(now - cache->flushed);
  if (delta == 0 || (!force && delta < POOL_FLUSH_MIN && delta > -POOL_FLUSH_MIN)) return;
  cache->flushed = now;
  pantry_pool_t *pool = cache->pool;
  uintptr_t live = pn_atomic_fetch_add_relaxed(&pool->xlive, (uintptr_t)delta) + (uintptr_t)delta;
  if (delta > 0) pool_peak_raise(pool, live);
}

/* ------------------------------------------------------------------------ */
/* Pages of a cache (owner only)                                            */
/* ------------------------------------------------------------------------ */

/* pn_page_collect, with the double-free check naming the pool: the count
 * of remote frees packed in the thread-free word must not pass the blocks
 * in use. Owner only. */
static void pool_page_collect(const pantry_pool_t *pool, pn_page_t *page) {
  if (page->free != NULL) return;
  if (page->local_free != NULL) {
    page->free = page->local_free;
    page->local_free = NULL;
    return;
  }
  /* racy: a relaxed peek saves the exchange when no remote free came. */
  if ((pn_atomic_load_relaxed(&page->xthread_free) & PN_THREAD_FREE_PTR_MASK) == 0) return;
  /* Acquire: matches the release CAS in pn_page_free_remote (block->next).
   * Pages in avail never carry PN_THREAD_FREE_FULL, so clearing it loses
   * nothing. */
  uintptr_t word = pn_atomic_exchange_acquire(&page->xthread_free, 0);
  pn_block_t *head = (pn_block_t *)(word & PN_THREAD_FREE_PTR_MASK);
  uint32_t count = (uint32_t)(word >> PN_THREAD_FREE_COUNT_SHIFT);
  if (head == NULL) return;
  if (PN_UNLIKELY(count > page->used))
    pn_fatal("pantry_pool_free(%p): pool '%s' (%p): double free: %u objects came back to page "
             "%p from other threads but only %u were in use",
             (void *)head, pool->name, (const void *)pool, count, (void *)page, page->used);
  page->free = head; /* page->free was NULL */
  page->used -= count;
}

/* Take a parked page back into avail (at the front when about to allocate
 * from it). Clears PN_THREAD_FREE_FULL unless a remote free has (that one
 * set our bit in xfull_freed; pool_cache_reclaim_full skips pages no longer
 * in_full). */
static void pool_page_unfull(pool_cache_t *cache, pn_page_t *page, bool front) {
  pool_queue_remove(&cache->full, page);
  page->flags.x.in_full = 0;
  pn_atomic_fetch_and_relaxed(&page->xthread_free, ~PN_THREAD_FREE_FULL);
  pool_queue_push(&cache->avail, page, front);
  pool_cache_sync_page(cache);
}

/* Parked pages that got a remote free since: back to avail. */
static bool pool_cache_reclaim_full(pool_cache_t *cache) {
  bool any = false;
  for (pn_segment_t *s = cache->segments; s != NULL; s = s->next) {
    if (pn_atomic_load_relaxed(&s->xfull_freed) == 0) continue;
    /* Acquire: matches the release fetch_or in pn_page_free_remote. */
    uintptr_t bits = pn_atomic_exchange_acquire(&s->xfull_freed, 0);
    while (bits) {
      unsigned i = (unsigned)__builtin_ctzl(bits);
      bits &= bits - 1;
      pn_page_t *page = &s->pages[i];
      if (page->block_size != 0 && page->flags.x.in_full) {
        pool_page_unfull(cache, page, true);
        any = true;
      }
    }
  }
  return any;
}

/* Give a segment to `cache`: its pages become the cache's. The caller owns
 * the segment (fresh, or taken from an orphaned cache by CAS). */
static void pool_segment_own(pool_cache_t *cache, pn_segment_t *segment) {
  segment->pool_cache = cache;
  /* Relaxed: only this thread compares equal to its own token. */
  pn_atomic_store_relaxed(&segment->xpool_owner, cache->token);
  pool_segment_link(cache, segment);
}

/* Merge the segments and pages of orphaned caches (their threads exited)
 * into `cache`; the emptied caches become VACANT. */
static bool pool_cache_merge_orphans(pool_cache_t *cache) {
  bool any = false;
  pantry_pool_t *pool = cache->pool;
  /* Acquire: matches the release CAS of pool_cache_attach's push. */
  for (pool_cache_t *o = (pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches); o != NULL;
       o = o->pool_next) {
    uintptr_t state = POOL_CACHE_ORPHANED;
    if (o == cache || pn_atomic_load_relaxed(&o->xstate) != state) continue;
    /* Acquire: matches the release CAS of pool_thread_exit; we own `o` now. */
    if (!pn_atomic_cas_strong_acq_rel(&o->xstate, &state, POOL_CACHE_ACTIVE)) continue;
    pn_segment_t *s;
    while ((s = o->segments) != NULL) {
      pool_segment_unlink(o, s);
      pool_segment_own(cache, s);
    }
    pool_queue_append(&cache->avail, &o->avail);
    pool_queue_append(&cache->full, &o->full);
    o->page = &pn_page_empty;
    pool_cache_sync_page(cache);
    /* Release: our writes to `o` before whoever takes it next. */
    pn_atomic_store_release(&o->xstate, POOL_CACHE_VACANT);
    any = true;
  }
  return any;
}

/* A fresh segment for `cache`, registered with its pool; NULL when out of
 * memory. */
static pn_segment_t *pool_segment_new(pool_cache_t *cache) {
  pantry_pool_t *pool = cache->pool;
  pn_segment_t *segment = pn_segment_alloc(pool->kind);
  if (segment == NULL) return NULL;
  pn_atomic_store_relaxed(&segment->xowner, 0); /* never a heap's: frees go to the pool */
  pool_segment_own(cache, segment);
  /* Push on the pool's registry. Release: matches the acquire load of the
   * walks (destroy, visit); ABA is harmless to a push (see
   * pn_page_free_remote). */
  uintptr_t head = pn_atomic_load_relaxed(&pool->xsegments);
  do {
    segment->pool_next = (pn_segment_t *)head;
  } while (!pn_atomic_cas_weak_release(&pool->xsegments, &head, (uintptr_t)segment));
  pn_atomic_fetch_add_relaxed(&pool->xsegment_count, 1);
  return segment;
}

/* A never-used page of one of the cache's segments, formatted for the pool. */
static pn_page_t *pool_cache_page_fresh(pool_cache_t *cache) {
  pantry_pool_t *pool = cache->pool;
  pn_segment_t *segment = cache->segments;
  if (segment == NULL || segment->used_pages == segment->page_count) {
    segment = pool_segment_new(cache);
    if (segment == NULL) return NULL;
  }
  pn_page_t *page = pn_segment_page_take(segment);
  if (segment->used_pages == segment->page_count && segment->next != NULL) {
    pool_segment_unlink(cache, segment);
    pool_segment_link(cache, segment); /* full: to the back */
  }
  pn_page_format(page, pool->block_size, 0, pool);
  pn_page_extend(page);
  pool_queue_push(&cache->avail, page, true);
  pool_cache_sync_page(cache);
  pn_atomic_fetch_add_relaxed(&pool->xpages, 1);
  cache->grew = true;
  return page;
}

/* A page with a free block, made the cache's current page; NULL when out of
 * memory. Order: the cache's own pages (local frees, remote frees, blocks
 * not yet carved), parked pages that got remote frees, pages of threads that
 * exited, then a fresh page. */
static pn_page_t *pool_cache_find_page(pool_cache_t *cache) {
  const pantry_pool_t *pool = cache->pool;
  for (int attempt = 0; attempt < 4; attempt++) {
    pn_page_t *page = cache->avail.first;
    while (page != NULL) {
      pn_page_t *next = page->next;
      pool_page_collect(pool, page);
      if (page->free == NULL) pn_page_extend(page);
      if (page->free != NULL) {
        if (cache->avail.first != page) {
          pool_queue_remove(&cache->avail, page);
          pool_queue_push(&cache->avail, page, true);
        }
        cache->page = page;
        return page;
      }
      if (pn_page_try_mark_full(page)) {
        pool_queue_remove(&cache->avail, page);
        pool_queue_push(&cache->full, page, true);
      } else {
        next = page; /* a remote free arrived: collect it */
      }
      page = next;
    }
    pool_cache_sync_page(cache);
    if (pool_cache_reclaim_full(cache)) continue;
    if (pool_cache_merge_orphans(cache)) continue;
    break;
  }
  return pool_cache_page_fresh(cache);
}

/* A free by the owner that the fast path did not take: a parked page, or a
 * page with no block in use (a double free). */
static void pool_free_local(pool_cache_t *cache, pn_page_t *page, pn_block_t *block) {
  if (PN_UNLIKELY(page->used == 0))
    pool_double_free(cache->pool, block, "its page has no object in use");
  block->next = page->local_free;
  page->local_free = block;
  page->used--;
  if (page->flags.x.in_full) pool_page_unfull(cache, page, false);
}

/* ------------------------------------------------------------------------ */
/* Caches and threads                                                       */
/* ------------------------------------------------------------------------ */

static void pool_cache_free(pool_cache_t *cache) { pantry_free(cache); }

static void pool_thread_unlink(pool_thread_t *t, pool_cache_t *cache) {
  if (cache->thread_prev) cache->thread_prev->thread_next = cache->thread_next;
  else t->caches = cache->thread_next;
  if (cache->thread_next) cache->thread_next->thread_prev = cache->thread_prev;
  cache->thread_next = cache->thread_prev = NULL;
  for (unsigned i = 0; i < POOL_SLOTS; i++)
    if (t->slots[i].cache == cache) t->slots[i] = (pool_slot_t){0, NULL};
}

static void pool_thread_link(pool_thread_t *t, pool_cache_t *cache) {
  cache->thread_prev = NULL;
  cache->thread_next = t->caches;
  if (t->caches) t->caches->thread_prev = cache;
  t->caches = cache;
}

/* Thread exit (the pool_key destructor): hand every cache to its pool. The
 * exiting thread touches only its caches: the pool may be destroyed at this
 * very moment. */
static void pool_thread_exit(void *arg) {
  pool_thread_t *t = arg;
  pool_cache_t *cache = t->caches;
  t->caches = NULL;
  memset(t->slots, 0, sizeof t->slots);
  t->exit_hooked = false;
  while (cache != NULL) {
    pool_cache_t *next = cache->thread_next;
    cache->thread_next = cache->thread_prev = NULL;
    uintptr_t state = POOL_CACHE_ACTIVE;
    uintptr_t to = cache->segments != NULL ? POOL_CACHE_ORPHANED : POOL_CACHE_VACANT;
    /* Release: every write of ours to the cache and its pages before the
     * adopter's acquire CAS. Fails only when destroy made it DEAD (its
     * exchange): then the cache is ours to free. */
    if (!pn_atomic_cas_strong_acq_rel(&cache->xstate, &state, to)) pool_cache_free(cache);
    cache = next;
  }
}

static void pool_key_create(void) {
  if (pthread_key_create(&pool_key, pool_thread_exit) != 0)
    pn_fatal("pantry_pool_create: pthread_key_create failed: cannot track thread exits");
}

static void pool_thread_start(pool_thread_t *t) {
  if (t->token == 0) t->token = pn_atomic_fetch_add_relaxed(&pool_xnext_token, 1) + 1;
  if (!t->exit_hooked) {
    /* Again after an exit destructor ran: glibc then calls it once more. */
    pthread_setspecific(pool_key, t);
    t->exit_hooked = true;
  }
}

/* The thread's cache for `pool` in its list, freeing DEAD caches on the way. */
static pool_cache_t *pool_thread_find(pool_thread_t *t, uint64_t id) {
  pool_cache_t *cache = t->caches;
  while (cache != NULL) {
    pool_cache_t *next = cache->thread_next;
    if (cache->id == id) return cache;
    /* Acquire: matches destroy's exchange; after it, nobody else touches it. */
    if (pn_atomic_load_acquire(&cache->xstate) == POOL_CACHE_DEAD) {
      pool_thread_unlink(t, cache);
      pool_cache_free(cache);
    }
    cache = next;
  }
  return NULL;
}

/* A cache for this thread: a vacant one of the pool (or, for a thread about
 * to allocate, an orphaned one, pages and all), taken whole, or a new one.
 * A thread that only frees takes no orphan: it would strand the pages with a
 * thread that never allocates from them. NULL when out of memory. */
static pool_cache_t *pool_cache_attach(pantry_pool_t *pool, pool_thread_t *t, bool to_alloc) {
  pool_thread_start(t);
  for (pool_cache_t *c = (pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches); c != NULL;
       c = c->pool_next) {
    uintptr_t state = pn_atomic_load_relaxed(&c->xstate);
    if (state != POOL_CACHE_VACANT && (state != POOL_CACHE_ORPHANED || !to_alloc)) continue;
    /* Acquire: matches the release of pool_thread_exit or of a merge. */
    if (!pn_atomic_cas_strong_acq_rel(&c->xstate, &state, POOL_CACHE_ACTIVE)) continue;
    c->token = t->token;
    for (pn_segment_t *s = c->segments; s != NULL; s = s->next)
      pn_atomic_store_relaxed(&s->xpool_owner, t->token);
    pool_thread_link(t, c);
    return c;
  }
  pool_cache_t *c = pantry_aligned_alloc(64, sizeof *c);
  if (c == NULL) return NULL;
  memset(c, 0, sizeof *c);
  pn_atomic_store_relaxed(&c->xstate, POOL_CACHE_ACTIVE);
  c->id = pool->id;
  c->pool = pool;
  c->token = t->token;
  c->page = &pn_page_empty;
  /* Release: the cache's fields before any walker's acquire load. */
  uintptr_t head = pn_atomic_load_relaxed(&pool->xcaches);
  do {
    c->pool_next = (pool_cache_t *)head;
  } while (!pn_atomic_cas_weak_release(&pool->xcaches, &head, (uintptr_t)c));
  pool_thread_link(t, c);
  return c;
}

/* The calling thread's cache for `pool`, found or made (`to_alloc`: the
 * thread is about to allocate); NULL when out of memory. */
static pool_cache_t *pool_cache_get(pantry_pool_t *pool, bool to_alloc) {
  pool_thread_t *t = &pool_thread;
  pool_slot_t *slot = &t->slots[pool->id & (POOL_SLOTS - 1)];
  if (slot->id == pool->id) return slot->cache;
  pool_cache_t *cache = pool_thread_find(t, pool->id);
  if (cache == NULL) cache = pool_cache_attach(pool, t, to_alloc);
  if (cache == NULL) return NULL;
  slot->id = pool->id;
  slot->cache = cache;
  return cache;
}

/* ------------------------------------------------------------------------ */
/* Create                                                                   */
/* ------------------------------------------------------------------------ */

pantry_pool_t *pantry_pool_create(const pantry_pool_config_t *config) {
  if (config == NULL || config->layout.size == 0 || config->layout.size > POOL_SIZE_MAX ||
      config->layout.align == 0 || (config->layout.align & (config->layout.align - 1)) != 0 ||
      config->layout.align > POOL_ALIGN_MAX) {
    errno = EINVAL;
    return NULL;
  }
  pthread_once(&pool_key_once, pool_key_create);
  /* Blocks are 16-byte multiples: the thread-free word keeps bits 4..47 of
   * a block's address (internal.h). */
  size_t align = config->layout.align < 16 ? 16 : config->layout.align;
  size_t block = (config->layout.size + align - 1) & ~(align - 1);
  pantry_pool_t *pool = pantry_aligned_alloc(64, sizeof *pool);
  if (pool == NULL) return NULL;
  memset(pool, 0, sizeof *pool);
  pool->id = pn_atomic_fetch_add_relaxed(&pool_xnext_id, 1) + 1;
  pool->block_size = block;
  pool->init = config->init;
  pool->drop = config->drop;
  pool->ctx = config->ctx;
  pool->kind = block <= PN_SMALL_SIZE_MAX    ? PN_PAGE_SMALL
               : block <= PN_MEDIUM_SIZE_MAX ? PN_PAGE_MEDIUM
                                             : PN_PAGE_LARGE;
  pool->size = config->layout.size;
  pool->align = config->layout.align;
  snprintf(pool->name, sizeof pool->name, "%s", config->name ? config->name : "");
  return pool;
}

/* ------------------------------------------------------------------------ */
/* Alloc                                                                    */
/* ------------------------------------------------------------------------ */

/* Everything the fast path does not: the first use of the pool on this
 * thread, an empty current page, debug builds. */
PN_NOINLINE static void *pool_alloc_slow(pantry_pool_t *pool) {
  if (pn_debug) pool_busy_enter(pool, "pantry_pool_alloc");
  void *obj = NULL;
  pool_cache_t *cache = pool_cache_get(pool, true);
  pn_page_t *page = cache != NULL ? cache->page : NULL;
  if (page != NULL && page->free == NULL) page = pool_cache_find_page(cache);
  if (page == NULL) {
    errno = ENOMEM;
    goto out;
  }
  pn_block_t *block = page->free;
  page->free = block->next;
  page->used++;
  if (pn_debug) ((uintptr_t *)block)[1] = 0; /* not the freed tag */
  if (pool->init != NULL && pool->init(block, pool->ctx) != 0) {
    pool_free_local(cache, page, block);
    errno = ENOMEM;
    goto out;
  }
  pool_count(&cache->xallocs);
  pool_cache_flush(cache, cache->grew); /* growth: where the peak is made */
  cache->grew = false;
  obj = block;
out:
  if (pn_debug) pool_busy_leave(pool);
  return obj;
}

PN_NOINLINE static void *pool_alloc_init_failed(pool_cache_t *cache, pn_page_t *page,
                                                pn_block_t *block) {
  pool_free_local(cache, page, block);
  errno = ENOMEM;
  return NULL;
}

/* The fast path: the thread's slot for the pool -> its cache's page -> pop.
 * No lock, no atomic read-modify-write. */
void *pantry_pool_alloc(pantry_pool_t *pool) {
  pool_slot_t *slot = &pool_thread.slots[pool->id & (POOL_SLOTS - 1)];
  if (PN_LIKELY(slot->id == pool->id && !pn_debug)) {
    pool_cache_t *cache = slot->cache;
    pn_page_t *page = cache->page;
    pn_block_t *block = page->free;
    if (PN_LIKELY(block != NULL)) {
      page->free = block->next;
      page->used++;
      if (pool->init != NULL && PN_UNLIKELY(pool->init(block, pool->ctx) != 0))
        return pool_alloc_init_failed(cache, page, block);
      pool_count(&cache->xallocs);
      return block;
    }
  }
  return pool_alloc_slow(pool);
}

/* ------------------------------------------------------------------------ */
/* Free                                                                     */
/* ------------------------------------------------------------------------ */

/* After the checks and the drop: a local free the fast path did not take, or
 * a remote free (one CAS push onto the page's thread-free list). */
PN_NOINLINE static void pool_free_dropped(pantry_pool_t *pool, pn_segment_t *segment,
                                          pn_page_t *page, pn_block_t *block) {
  pool_cache_t *mine = pool_cache_get(pool, false); /* also gives this thread its token */
  if (pn_atomic_load_relaxed(&segment->xpool_owner) == pool_thread.token) {
    pool_free_local(segment->pool_cache, page, block);
  } else {
    pn_page_free_remote(segment, page, block);
  }
  if (mine != NULL) {
    pool_count(&mine->xfrees);
    pool_cache_flush(mine, false);
  } else {
    pn_atomic_fetch_add_relaxed(&pool->xfrees_lost, 1);
  }
}

/* Every free the fast path does not check itself: NULL, bad pointers (each
 * diagnosed), and every free of debug builds. */
PN_NOINLINE static void pool_free_checked(pantry_pool_t *pool, void *obj) {
  if (obj == NULL) return;
  pn_page_t *page = pool_check_object(pool, obj, "pantry_pool_free");
  if (pn_debug) {
    pool_busy_enter(pool, "pantry_pool_free");
    if (((uintptr_t *)obj)[1] == pool_free_tag(obj))
      pool_double_free(pool, obj, "debug: it carries the freed tag");
  }
  if (pool->drop != NULL) pool->drop(obj, pool->ctx);
  if (pn_debug) ((uintptr_t *)obj)[1] = pool_free_tag(obj);
  pool_free_dropped(pool, pn_segment_of(obj), page, obj);
  if (pn_debug) pool_busy_leave(pool);
}

/* The fast path: a valid object of this pool, on a page of this thread's,
 * with no special state, goes on the page's local free list with no atomic
 * read-modify-write. The pool and block-start tests are what make a bad
 * pointer fall through to pool_free_checked, which names it. */
void pantry_pool_free(pantry_pool_t *pool, void *obj) {
  if (PN_LIKELY(pn_segment_map_contains(obj) && !pn_debug)) {
    pn_segment_t *segment = pn_segment_of(obj);
    pn_page_t *page = pn_segment_page_of(segment, obj);
    if (PN_LIKELY(page->pool == pool && pn_page_is_block_start(page, obj))) {
      if (pool->drop != NULL) pool->drop(obj, pool->ctx);
      /* Relaxed: only this thread can have stored its own token. */
      if (PN_LIKELY(pn_atomic_load_relaxed(&segment->xpool_owner) == pool_thread.token &&
                    page->flags.all == 0 && page->used != 0)) {
        pn_block_t *block = obj;
        block->next = page->local_free;
        page->local_free = block;
        page->used--;
        pool_count(&((pool_cache_t *)segment->pool_cache)->xfrees);
        return;
      }
      pool_free_dropped(pool, segment, page, obj);
      return;
    }
  }
  pool_free_checked(pool, obj);
}

/* ------------------------------------------------------------------------ */
/* Live objects: visit and destroy                                          */
/* ------------------------------------------------------------------------ */

/* Mark the blocks of one free list in `bits`; a block seen twice is a double
 * free, a block that is not one of the page's carved blocks a corruption. */
static uint32_t pool_page_mark(const pantry_pool_t *pool, const pn_page_t *page,
                               const pn_block_t *list, uint64_t *bits, uint32_t marked,
                               const char *fn) {
  for (const pn_block_t *b = list; b != NULL; b = b->next) {
    size_t off = (size_t)((const uint8_t *)b - page->page_start);
    size_t index = off / page->block_size;
    if (!pn_page_is_block_start(page, b) || index >= page->capacity)
      pn_fatal("%s(pool '%s' %p): page %p: a free list holds %p, which is not a free object "
               "of the page (memory written after it was freed?)",
               fn, pool->name, (const void *)pool, (const void *)page, (const void *)b);
    if (bits[index / 64] & ((uint64_t)1 << (index % 64)))
      pn_fatal("pantry_pool_free(%p): pool '%s' (%p): double free: the object is on its page's "
               "free lists twice (found by %s)",
               (const void *)b, pool->name, (const void *)pool, fn);
    bits[index / 64] |= (uint64_t)1 << (index % 64);
    marked++;
  }
  return marked;
}

typedef int (*pool_live_fn)(void *obj, void *arg);

/* Call fn on every live object of the page: the carved blocks that are on
 * none of its free lists. The pool must be quiescent (no alloc or free).
 * Returns false when fn asked to stop. */
static bool pool_page_for_each_live(const pantry_pool_t *pool, const pn_page_t *page,
                                    pool_live_fn fn, void *arg, size_t *count, const char *fn_name) {
  uint64_t bits[POOL_PAGE_BLOCKS_MAX / 64];
  memset(bits, 0, ((size_t)page->capacity + 63) / 64 * sizeof bits[0]);
  /* Acquire: the remote frees' block->next (their release CAS). */
  uintptr_t remote = pn_atomic_load_acquire((pn_atomic_uintptr_t *)&page->xthread_free);
  uint32_t marked = pool_page_mark(pool, page, page->free, bits, 0, fn_name);
  marked = pool_page_mark(pool, page, page->local_free, bits, marked, fn_name);
  marked = pool_page_mark(pool, page, (const pn_block_t *)(remote & PN_THREAD_FREE_PTR_MASK),
                          bits, marked, fn_name);
  if (marked == page->capacity) return true;
  for (uint32_t i = 0; i < page->capacity; i++) {
    if (bits[i / 64] & ((uint64_t)1 << (i % 64))) continue;
    ++*count;
    if (fn(page->page_start + (size_t)i * page->block_size, arg) != 0) return false;
  }
  return true;
}

static size_t pool_for_each_live(pantry_pool_t *pool, pool_live_fn fn, void *arg,
                                 const char *fn_name) {
  size_t count = 0;
  for (pn_segment_t *s = (pn_segment_t *)pn_atomic_load_acquire(&pool->xsegments); s != NULL;
       s = s->pool_next) {
    for (uint32_t i = 0; i < s->page_count; i++) {
      const pn_page_t *page = &s->pages[i];
      if (page->block_size == 0 || page->pool != pool) continue;
      if (!pool_page_for_each_live(pool, page, fn, arg, &count, fn_name)) return count;
    }
  }
  return count;
}

size_t pantry_pool_visit(pantry_pool_t *pool, pantry_pool_visit_fn fn, void *arg) {
  if (pool == NULL || fn == NULL) return 0;
  if (pn_debug) pool_busy_enter(pool, "pantry_pool_visit");
  size_t count = pool_for_each_live(pool, fn, arg, "pantry_pool_visit");
  if (pn_debug) pool_busy_leave(pool);
  return count;
}

static int pool_drop_one(void *obj, void *arg) {
  const pantry_pool_t *pool = arg;
  pool->drop(obj, pool->ctx);
  return 0;
}

/* Hand a segment of a destroyed pool back: its pages forget the pool (a
 * stale free of one of its objects is then diagnosed), and the depot caches
 * or unmaps it after a grace period (depot.c: a segment once popped from the
 * depot goes back only through call_rcu). */
static void pool_segment_release(pn_segment_t *segment) {
  for (uint32_t i = 0; i < segment->page_count; i++) segment->pages[i].pool = NULL;
  pn_atomic_store_relaxed(&segment->xpool_owner, 0);
  segment->pool_cache = NULL;
  pn_depot_release(segment);
}

void pantry_pool_destroy(pantry_pool_t *pool) {
  if (pool == NULL) return;
  if (pn_debug) {
    uintptr_t idle = 0;
    if (!pn_atomic_cas_strong_acq_rel(&pool->xbusy, &idle, POOL_BUSY_DESTROYING))
      pn_fatal("pantry_pool_destroy(pool '%s' %p): %zu pantry_pool_alloc/free/visit call(s) "
               "still running on the pool (destroy must not race with them)",
               pool->name, (void *)pool, (size_t)(idle & ~POOL_BUSY_DESTROYING));
  }
  if (pool->drop != NULL) pool_for_each_live(pool, pool_drop_one, pool, "pantry_pool_destroy");

  /* The caches: this thread's own is freed now; other threads' ACTIVE ones
   * turn DEAD (their threads free them); orphaned and vacant ones are ours.
   * Read pool_next first: after the exchange the cache may be freed. */
  pool_thread_t *t = &pool_thread;
  pool_cache_t *c = (pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches);
  while (c != NULL) {
    pool_cache_t *next = c->pool_next;
    if (t->token != 0 && c->token == t->token &&
        pn_atomic_load_relaxed(&c->xstate) == POOL_CACHE_ACTIVE) {
      pool_thread_unlink(t, c);
      pool_cache_free(c);
    } else if (pn_atomic_exchange_acq_rel(&c->xstate, POOL_CACHE_DEAD) != POOL_CACHE_ACTIVE) {
      /* Acquire: matches the release CAS of pool_thread_exit. */
      pool_cache_free(c);
    }
    c = next;
  }

  /* Every page at once: no per-object work. */
  pn_segment_t *s = (pn_segment_t *)pn_atomic_load_acquire(&pool->xsegments);
  while (s != NULL) {
    pn_segment_t *next = s->pool_next;
    pool_segment_release(s);
    s = next;
  }
  pantry_free(pool);
}

/* ------------------------------------------------------------------------ */
/* Statistics                                                               */
/* ------------------------------------------------------------------------ */

void pantry_pool_stats(pantry_pool_t *pool, pantry_pool_stats_t *stats) {
  if (stats == NULL) return;
  memset(stats, 0, sizeof *stats);
  if (pool == NULL) return;
  uintptr_t allocs = 0, frees = pn_atomic_load_relaxed(&pool->xfrees_lost);
  size_t threads = 0;
  for (pool_cache_t *c = (pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches); c != NULL;
       c = c->pool_next) {
    /* racy: other threads' counters move while we add; each is exact
     * when read, the sum is exact when the pool is quiescent. */
    allocs += pn_atomic_load_relaxed(&c->xallocs);
    frees += pn_atomic_load_relaxed(&c->xfrees);
    threads++;
  }
  uintptr_t live = allocs - frees;
  if ((intptr_t)live < 0) live = 0; /* frees counted before their allocs */
  pool_peak_raise(pool, live);
  size_t page_bytes = (size_t)1 << (pool->kind == PN_PAGE_SMALL    ? PN_SMALL_PAGE_SHIFT
                                    : pool->kind == PN_PAGE_MEDIUM ? PN_MEDIUM_PAGE_SHIFT
                                                                   : PN_SEGMENT_SHIFT);
  stats->name = pool->name;
  stats->object_size = pool->block_size;
  stats->live = live;
  stats->peak = pn_atomic_load_relaxed(&pool->xpeak);
  if (stats->peak < live) stats->peak = live;
  stats->allocs = allocs;
  stats->frees = frees;
  stats->pages = pn_atomic_load_relaxed(&pool->xpages);
  stats->bytes_reserved = stats->pages * page_bytes;
  stats->bytes_mapped = pn_atomic_load_relaxed(&pool->xsegment_count) * PN_SEGMENT_SIZE;
  stats->threads = threads;
}

const char *pantry_pool_name(const pantry_pool_t *pool) { return pool != NULL ? pool->name : ""; }
