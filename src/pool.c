/* pool.c - object pools: fixed-size objects of one layout with init and drop
 * callbacks, freed from any thread, destroyed in one batch (the kernel's
 * kmem_cache; Rust's Box<T> with Drop).
 *
 * Layer: the top, beside alloc.c. This file: the public API, the fast paths
 * of alloc and free, the checks, the walks of live objects (visit, destroy)
 * and stats; pool_cache.c: the slow paths (per-thread caches and their
 * pages, thread exit, counters); pool.h: the types both share. Calls page.c
 * (free lists, the full state, remote frees), segment.c (segments and
 * pages), depot.c (where segments go at destroy) and the public malloc API
 * (for the pool and cache records).
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
 *   cache    one per (thread, pool): a magazine of free objects (the fast
 *            paths pop and push it, with no lock and no atomic
 *            read-modify-write), the page refills take from, its queues of
 *            pages (avail, full), its segments and its counters (pool.h).
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
 *       ACTIVE --thread exits--> ORPHANED (segments or magazine objects) or
 *                                VACANT (neither)
 *       ORPHANED, VACANT --a thread without a cache takes it whole--> ACTIVE
 *       ORPHANED --a cache that needs pages merges its segments (and gives
 *                  its magazine's objects back to their pages)--> VACANT
 *       ACTIVE --destroy--> DEAD: its thread frees it (prune, exit)
 *       ORPHANED, VACANT --destroy--> freed by destroy
 *
 *     Every move out of ORPHANED or VACANT is a CAS (adopters race); the
 *     thread's exit is a CAS from ACTIVE (it races with destroy's exchange
 *     to DEAD), so exactly one side frees a cache. An exiting thread touches
 *     only its caches, never the pool or its segments: a pool may be
 *     destroyed while a thread that used it exits.
 *   cache->xallocs, cache->xfrees  counters written by
 *       their owner (relaxed load and store, no read-modify-write), read by
 *       stats and at growth (pool_live).
 *   segment->xpool_owner  written by the owning thread, compared by every
 *       free: relaxed, since only a thread can have stored its own token and
 *       tokens are never reused.
 *   page->xthread_free, segment->xfull_freed  as in page.c.
 *   pool->xpeak, xpages, xsegment_count, xfrees_lost  atomic relaxed
 *       counters, touched in slow paths only.
 *   pool->xbusy  debug builds: alloc and free in progress, and destroy's mark.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

static pn_atomic_uintptr_t pool_xnext_id; /* atomic relaxed: the last id given */

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
  if (PN_UNLIKELY(pool == NULL))
    pn_fatal("%s(NULL, %p): the pool is NULL", fn, obj);
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
    pn_fatal("%s(%p): pool '%s' (%p): pointer into the middle of an object (object size %zu)", fn,
             obj, pool->name, (void *)pool, pool->block_size);
  if (pn_debug &&
      (size_t)((uint8_t *)obj - page->page_start) >= (size_t)page->capacity * page->block_size)
    pn_fatal("%s(%p): pool '%s' (%p): pointer to an object never handed out", fn, obj, pool->name,
             (void *)pool);
  return page;
}

/* The same checks, for pantry_pool_free_deferred (deferred.c), at the call. */
void pn_pool_check(void *pool, void *obj, const char *fn) {
  (void)pool_check_object(pool, obj, fn);
}

void pn_pool_double_free(const pantry_pool_t *pool, const void *obj, const char *how) {
  pn_fatal("pantry_pool_free(%p): pool '%s' (%p): double free: the object is already free (%s)",
           obj, pool->name, (const void *)pool, how);
}

/* Debug builds: destroy must not race with alloc or free (include/pantry.h). */
static void pool_busy_enter(pantry_pool_t *pool, const char *fn) {
  uintptr_t busy = pn_atomic_fetch_add_acq_rel(&pool->xbusy, 1);
  if (PN_UNLIKELY(busy & PN_POOL_BUSY_DESTROYING))
    pn_fatal("%s(pool '%s' %p): called while pantry_pool_destroy runs on the pool (from "
             "another thread, or from a drop callback)",
             fn, pool->name, (void *)pool);
}

static void pool_busy_leave(pantry_pool_t *pool) { pn_atomic_fetch_sub_acq_rel(&pool->xbusy, 1); }

/* ------------------------------------------------------------------------ */
/* Create                                                                   */
/* ------------------------------------------------------------------------ */

pantry_pool_t *pantry_pool_create(const pantry_pool_config_t *config) {
  if (config == NULL || config->layout.size == 0 || config->layout.size > PN_POOL_SIZE_MAX ||
      config->layout.align == 0 || (config->layout.align & (config->layout.align - 1)) != 0 ||
      config->layout.align > PN_POOL_ALIGN_MAX) {
    errno = EINVAL;
    return NULL;
  }
  pn_pool_init_once();
  /* Blocks are 16-byte multiples: the thread-free word keeps bits 4..47 of
   * a block's address (internal.h). */
  size_t align = config->layout.align < 16 ? 16 : config->layout.align;
  size_t block = (config->layout.size + align - 1) & ~(align - 1);
  pantry_pool_t *pool = pantry_aligned_alloc(64, sizeof *pool);
  if (pool == NULL)
    return NULL;
  memset(pool, 0, sizeof *pool);
  pool->id = pn_atomic_fetch_add_relaxed(&pool_xnext_id, 1) + 1;
  pool->block_size = block;
  pool->init = config->init;
  pool->drop = config->drop;
  pool->ctx = config->ctx;
  size_t mag = PN_POOL_MAG_BYTES / block;
  pool->mag_cap = (uint32_t)(mag > PN_POOL_MAG_MAX ? PN_POOL_MAG_MAX : mag < 2 ? 2 : mag);
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
 * thread, an empty magazine, debug builds. */
PN_NOINLINE static void *pool_alloc_slow(pantry_pool_t *pool) {
  if (pn_debug)
    pool_busy_enter(pool, "pantry_pool_alloc");
  void *obj = NULL;
  pn_pool_cache_t *cache = pn_pool_cache_get(pool, true);
  if (cache == NULL || (cache->n == 0 && !pn_pool_cache_refill(cache))) {
    errno = ENOMEM;
    goto out;
  }
  pn_block_t *block = cache->mag[--cache->n];
  if (pn_debug)
    ((uintptr_t *)block)[1] = 0; /* not the freed tag */
  if (pool->init != NULL && pool->init(block, pool->ctx) != 0) {
    cache->mag[cache->n++] = block; /* never handed out */
    errno = ENOMEM;
    goto out;
  }
  pn_pool_count(&cache->xallocs);
  obj = block;
out:
  if (pn_debug)
    pool_busy_leave(pool);
  return obj;
}

/* The fast path's object, when the pool has an init: run it (out of line,
 * so the path without one saves no registers). */
PN_NOINLINE static void *pool_alloc_init(pantry_pool_t *pool, pn_pool_cache_t *cache,
                                         pn_block_t *block) {
  if (PN_UNLIKELY(pool->init(block, pool->ctx) != 0)) {
    cache->mag[cache->n++] = block; /* room: it was just popped (init may have run the pool) */
    errno = ENOMEM;
    return NULL;
  }
  pn_pool_count(&cache->xallocs);
  return block;
}

/* The fast path: the thread's slot for the pool -> its cache -> pop the
 * magazine. No lock, no atomic read-modify-write, no page touched. */
void *pantry_pool_alloc(pantry_pool_t *pool) {
  const pn_pool_slot_t *slot = &pn_pool_tp->slots[pool->id & (PN_POOL_SLOTS - 1)];
  if (PN_LIKELY(slot->id == pool->id && !pn_debug)) {
    pn_pool_cache_t *cache = slot->cache;
    uint32_t n = cache->n;
    if (PN_LIKELY(n != 0)) {
      pn_block_t *block = cache->mag[n - 1];
      cache->n = n - 1;
      if (pool->init != NULL)
        return pool_alloc_init(pool, cache, block);
      pn_pool_count(&cache->xallocs);
      return block;
    }
  }
  return pool_alloc_slow(pool);
}

/* ------------------------------------------------------------------------ */
/* Free                                                                     */
/* ------------------------------------------------------------------------ */

/* After the checks and the drop, what the fast path did not take: no slot
 * for the pool on this thread yet, or a full magazine (its older half goes
 * back to the pages first). Without a cache (out of memory) the object goes
 * straight back to its page with a remote free: a thread without a cache
 * owns no page. */
PN_NOINLINE static void pool_free_slow(pantry_pool_t *pool, pn_block_t *block) {
  pn_pool_cache_t *cache = pn_pool_cache_get(pool, false);
  if (PN_UNLIKELY(cache == NULL)) {
    pn_segment_t *segment = pn_segment_of(block);
    pn_page_free_remote(segment, pn_segment_page_of(segment, block), block, "pantry_pool_free");
    pn_atomic_fetch_add_relaxed(&pool->xfrees_lost, 1);
    return;
  }
  if (cache->n != 0 && cache->mag[cache->n - 1] == block)
    pn_pool_double_free(pool, block, "it is the last object this thread freed");
  if (cache->n == cache->cap)
    pn_pool_cache_flush(cache, cache->cap / 2 ? cache->cap / 2 : 1);
  cache->mag[cache->n++] = block;
  pn_pool_count(&cache->xfrees);
}

/* After the checks and the drop: push on this thread's magazine. The same
 * object freed twice in a row lands on top of itself: one compare with the
 * top entry (a line the push writes anyway) catches it. */
static inline void pool_free_push(pantry_pool_t *pool, pn_block_t *block) {
  const pn_pool_slot_t *slot = &pn_pool_tp->slots[pool->id & (PN_POOL_SLOTS - 1)];
  if (PN_LIKELY(slot->id == pool->id)) {
    pn_pool_cache_t *cache = slot->cache;
    uint32_t n = cache->n;
    if (PN_UNLIKELY(n != 0 && cache->mag[n - 1] == block))
      pn_pool_double_free(pool, block, "it is the last object this thread freed");
    if (PN_LIKELY(n < cache->cap)) {
      cache->mag[n] = block;
      cache->n = n + 1;
      pn_pool_count(&cache->xfrees);
      return;
    }
  }
  pool_free_slow(pool, block);
}

/* Debug builds: whether `block` is already in this thread's magazine. */
static bool pool_magazine_contains(pantry_pool_t *pool, const pn_block_t *block) {
  const pn_pool_slot_t *slot = &pn_pool_tp->slots[pool->id & (PN_POOL_SLOTS - 1)];
  if (slot->id != pool->id)
    return false;
  for (uint32_t i = 0; i < slot->cache->n; i++)
    if (slot->cache->mag[i] == block)
      return true;
  return false;
}

/* Every free the fast path does not check itself: NULL, bad pointers (each
 * diagnosed), and every free of debug builds. */
PN_NOINLINE static void pool_free_checked(pantry_pool_t *pool, void *obj) {
  if (obj == NULL)
    return;
  (void)pool_check_object(pool, obj, "pantry_pool_free");
  if (pn_debug) {
    pool_busy_enter(pool, "pantry_pool_free");
    if (((uintptr_t *)obj)[1] == pn_pool_free_tag(obj) || pool_magazine_contains(pool, obj))
      pn_pool_double_free(pool, obj, "debug: it carries the freed tag");
  }
  if (pool->drop != NULL)
    pool->drop(obj, pool->ctx);
  if (pn_debug)
    ((uintptr_t *)obj)[1] = pn_pool_free_tag(obj);
  pool_free_push(pool, obj);
  if (pn_debug)
    pool_busy_leave(pool);
}

/* The fast path's free when the pool has a drop (out of line, so the path
 * without one saves no registers). */
PN_NOINLINE static void pool_free_drop(pantry_pool_t *pool, pn_block_t *block) {
  pool->drop(block, pool->ctx);
  pool_free_push(pool, block);
}

/* The fast path: a valid object of this pool goes on the freeing thread's
 * magazine, whichever thread allocated it: no lock, no atomic, no page
 * touched but for reading its (immutable) pool and geometry. The pool and
 * block-start tests make a bad pointer fall through to pool_free_checked,
 * which names it. Unlike pantry_free, the fast path does not look at the
 * object's own words for a double-free suspect: a load right after the
 * caller's last write to the object stalls on store forwarding (about 2 ns
 * a pair), not "free of cost". Double frees are caught where that costs
 * nothing: the same object freed twice in a row by a thread (the magazine's
 * top), a page with no object in use (a flush), remote frees outnumbering
 * the objects in use (pool_page_collect), the walks of visit and destroy,
 * and every free in debug builds. */
void pantry_pool_free(pantry_pool_t *pool, void *obj) {
  if (PN_LIKELY(pn_segment_map_contains(obj) && !pn_debug)) {
    pn_segment_t *segment = pn_segment_of(obj);
    pn_page_t *page = pn_segment_page_of(segment, obj);
    if (PN_LIKELY(page->pool == pool && pn_page_is_block_start(page, obj))) {
      if (pool->drop != NULL) {
        pool_free_drop(pool, obj);
        return;
      }
      pool_free_push(pool, obj);
      return;
    }
  }
  pool_free_checked(pool, obj);
}

/* ------------------------------------------------------------------------ */
/* Live objects: visit and destroy                                          */
/* ------------------------------------------------------------------------ */

/* Mark the free block `b` of `page` in `bits`; a block marked twice is a
 * double free, a block that is not one of the page's carved blocks a
 * corruption. */
static void pool_page_mark(const pantry_pool_t *pool, const pn_page_t *page, const pn_block_t *b,
                           uint64_t *bits, const char *fn) {
  size_t off = (size_t)((const uint8_t *)b - page->page_start);
  size_t index = off / page->block_size;
  if (!pn_page_is_block_start(page, b) || index >= page->capacity)
    pn_fatal("%s(pool '%s' %p): page %p: a free list holds %p, which is not a free object "
             "of the page (memory written after it was freed?)",
             fn, pool->name, (const void *)pool, (const void *)page, (const void *)b);
  if (bits[index / 64] & ((uint64_t)1 << (index % 64)))
    pn_fatal("pantry_pool_free(%p): pool '%s' (%p): double free: the object is free twice (on "
             "its page's free lists or in a thread's magazine; found by %s)",
             (const void *)b, pool->name, (const void *)pool, fn);
  bits[index / 64] |= (uint64_t)1 << (index % 64);
}

static uint32_t pool_page_mark_list(const pantry_pool_t *pool, const pn_page_t *page,
                                    const pn_block_t *list, uint64_t *bits, const char *fn) {
  uint32_t marked = 0;
  for (const pn_block_t *b = list; b != NULL; b = pn_block_next(page, b), marked++)
    pool_page_mark(pool, page, b, bits, fn);
  return marked;
}

/* The objects in the caches' magazines: free, though their pages count them
 * in use. Sorted, so each page finds its own with a binary search; `v` is
 * NULL when there are none, or when no memory was left for the array (the
 * pages then scan the magazines themselves). */
typedef struct pool_free_set {
  pn_block_t **v;
  size_t n;
} pool_free_set_t;

static int pool_ptr_cmp(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (pn_block_t *const *)a, y = (uintptr_t) * (pn_block_t *const *)b;
  return x < y ? -1 : x > y;
}

static pool_free_set_t pool_magazines_gather(pantry_pool_t *pool) {
  pool_free_set_t set = {NULL, 0};
  for (pn_pool_cache_t *c = (pn_pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches); c != NULL;
       c = c->pool_next)
    set.n += c->n;
  if (set.n == 0 || (set.v = pantry_malloc(set.n * sizeof set.v[0])) == NULL)
    return set;
  size_t k = 0;
  for (pn_pool_cache_t *c = (pn_pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches); c != NULL;
       c = c->pool_next)
    for (uint32_t i = 0; i < c->n; i++)
      set.v[k++] = c->mag[i];
  qsort(set.v, set.n, sizeof set.v[0], pool_ptr_cmp);
  return set;
}

static uint32_t pool_page_mark_magazines(pantry_pool_t *pool, const pn_page_t *page,
                                         const pool_free_set_t *set, uint64_t *bits,
                                         const char *fn) {
  const uint8_t *lo = page->page_start, *hi = page->page_start + page->area;
  uint32_t marked = 0;
  if (set->v == NULL) { /* no array: every magazine, for every page */
    for (pn_pool_cache_t *c = (pn_pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches); c != NULL;
         c = c->pool_next)
      for (uint32_t i = 0; i < c->n; i++)
        if ((const uint8_t *)c->mag[i] >= lo && (const uint8_t *)c->mag[i] < hi) {
          pool_page_mark(pool, page, c->mag[i], bits, fn);
          marked++;
        }
    return marked;
  }
  size_t first = 0, last = set->n; /* the first entry >= lo */
  while (first < last) {
    size_t mid = first + (last - first) / 2;
    if ((const uint8_t *)set->v[mid] < lo)
      first = mid + 1;
    else
      last = mid;
  }
  for (size_t i = first; i < set->n && (const uint8_t *)set->v[i] < hi; i++, marked++)
    pool_page_mark(pool, page, set->v[i], bits, fn);
  return marked;
}

typedef int (*pool_live_fn)(void *obj, void *arg);

/* Call fn on every live object of the page: the carved blocks that are on
 * none of its free lists and in no magazine. The pool must be quiescent (no
 * alloc or free). Returns false when fn asked to stop. */
static bool pool_page_for_each_live(pantry_pool_t *pool, const pn_page_t *page,
                                    const pool_free_set_t *set, pool_live_fn fn, void *arg,
                                    size_t *count, const char *fn_name) {
  uint64_t bits[PN_POOL_PAGE_BLOCKS_MAX / 64];
  memset(bits, 0, ((size_t)page->capacity + 63) / 64 * sizeof bits[0]);
  /* Acquire: the remote frees' links (their release CAS). */
  uintptr_t remote = pn_atomic_load_acquire((pn_atomic_uintptr_t *)&page->xthread_free);
  uint32_t marked = pool_page_mark_list(pool, page, page->free, bits, fn_name);
  marked += pool_page_mark_list(pool, page, page->local_free, bits, fn_name);
  marked += pool_page_mark_list(pool, page, (const pn_block_t *)(remote & PN_THREAD_FREE_PTR_MASK),
                                bits, fn_name);
  marked += pool_page_mark_magazines(pool, page, set, bits, fn_name);
  if (marked == page->capacity)
    return true;
  for (uint32_t i = 0; i < page->capacity; i++) {
    if (bits[i / 64] & ((uint64_t)1 << (i % 64)))
      continue;
    ++*count;
    if (fn(page->page_start + (size_t)i * page->block_size, arg) != 0)
      return false;
  }
  return true;
}

static size_t pool_for_each_live(pantry_pool_t *pool, pool_live_fn fn, void *arg,
                                 const char *fn_name) {
  size_t count = 0;
  pool_free_set_t set = pool_magazines_gather(pool);
  for (pn_segment_t *s = (pn_segment_t *)pn_atomic_load_acquire(&pool->xsegments); s != NULL;
       s = s->pool_next) {
    for (uint32_t i = 0; i < s->page_count; i++) {
      const pn_page_t *page = &s->pages[i];
      if (page->block_size == 0 || page->pool != pool)
        continue;
      if (!pool_page_for_each_live(pool, page, &set, fn, arg, &count, fn_name))
        goto out;
    }
  }
out:
  pantry_free(set.v);
  return count;
}

size_t pantry_pool_visit(pantry_pool_t *pool, pantry_pool_visit_fn fn, void *arg) {
  if (pool == NULL || fn == NULL)
    return 0;
  if (pn_debug)
    pool_busy_enter(pool, "pantry_pool_visit");
  size_t count = pool_for_each_live(pool, fn, arg, "pantry_pool_visit");
  if (pn_debug)
    pool_busy_leave(pool);
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
  for (uint32_t i = 0; i < segment->page_count; i++)
    segment->pages[i].pool = NULL;
  pn_atomic_store_relaxed(&segment->xpool_owner, 0);
  segment->pool_cache = NULL;
  pn_depot_release(segment);
}

/* A deferred free names the pool: remember it, once (no RMW after that). */
void pn_pool_note_deferred(struct pantry_pool *pool) {
  if (pn_atomic_load_relaxed(&pool->xdeferred_used) == 0)
    pn_atomic_store_relaxed(&pool->xdeferred_used, 1);
}

void pantry_pool_destroy(pantry_pool_t *pool) {
  if (pool == NULL)
    return;
  /* Objects freed deferred must be dropped and back before the pool goes:
   * wait for every deferred free issued so far (their drops run once, in
   * the callbacks, and the objects are then free, not live). Relaxed: the
   * caller's own deferred frees are program-ordered before this load; other
   * threads' must happen-before destroy anyway (destroy races nothing). */
  if (pn_atomic_load_relaxed(&pool->xdeferred_used) != 0)
    pantry_deferred_barrier();
  if (pn_debug) {
    uintptr_t idle = 0;
    if (!pn_atomic_cas_strong_acq_rel(&pool->xbusy, &idle, PN_POOL_BUSY_DESTROYING))
      pn_fatal("pantry_pool_destroy(pool '%s' %p): %zu pantry_pool_alloc/free/visit call(s) "
               "still running on the pool (destroy must not race with them)",
               pool->name, (void *)pool, (size_t)(idle & ~PN_POOL_BUSY_DESTROYING));
  }
  if (pool->drop != NULL)
    pool_for_each_live(pool, pool_drop_one, pool, "pantry_pool_destroy");

  pn_pool_caches_release(pool);

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
  if (stats == NULL)
    return;
  memset(stats, 0, sizeof *stats);
  if (pool == NULL)
    return;
  uintptr_t allocs, frees;
  uintptr_t live = pn_pool_live(pool, &allocs, &frees);
  pn_pool_peak_raise(pool, live);
  size_t threads = 0;
  for (pn_pool_cache_t *c = (pn_pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches); c != NULL;
       c = c->pool_next)
    threads++;
  size_t page_bytes = (size_t)1 << (pool->kind == PN_PAGE_SMALL    ? PN_SMALL_PAGE_SHIFT
                                    : pool->kind == PN_PAGE_MEDIUM ? PN_MEDIUM_PAGE_SHIFT
                                                                   : PN_SEGMENT_SHIFT);
  stats->name = pool->name;
  stats->object_size = pool->block_size;
  stats->live = live;
  stats->peak = pn_atomic_load_relaxed(&pool->xpeak);
  if (stats->peak < live)
    stats->peak = live;
  stats->allocs = allocs;
  stats->frees = frees;
  stats->pages = pn_atomic_load_relaxed(&pool->xpages);
  stats->bytes_reserved = stats->pages * page_bytes;
  stats->bytes_mapped = pn_atomic_load_relaxed(&pool->xsegment_count) * PN_SEGMENT_SIZE;
  stats->threads = threads;
}

const char *pantry_pool_name(const pantry_pool_t *pool) { return pool != NULL ? pool->name : ""; }
