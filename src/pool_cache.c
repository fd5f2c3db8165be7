/* pool_cache.c - the slow paths of object pools: each thread's cache of a
 * pool (its magazine, pages and segments), refilling and emptying the
 * magazine (objects back to their pages: local pushes, or one CAS per run
 * of another thread's page), finding a page with a free block, the full
 * state, adopting what threads that exited left, thread exit, and the
 * pool's counters. pool.c holds the public API and the fast paths.
 *
 * Layer: the top, beside alloc.c (with pool.c). Calls page.c, segment.c and
 * the public malloc API (for the caches themselves). See pool.c for the
 * pieces, the hand-off of a cache between its thread and its pool, and
 * which state other threads touch; pool.h for the types.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "pool.h"

/* The thread's pool state, and pn_pool_tp (see pool.h) pointing at it once
 * the thread's first slow path ran (at pool_thread_none before). */
static _Thread_local pn_pool_thread_t pool_thread;
static const pn_pool_thread_t pool_thread_none;
_Thread_local const pn_pool_thread_t *pn_pool_tp = &pool_thread_none;
static pn_atomic_uintptr_t pool_xnext_token; /* atomic relaxed: the last token given */
static pthread_key_t pool_key;
static pthread_once_t pool_key_once = PTHREAD_ONCE_INIT;

static void pool_queue_push(pn_page_queue_t *q, pn_page_t *page, bool front) {
  if (front) {
    page->prev = NULL;
    page->next = q->first;
    if (q->first)
      q->first->prev = page;
    else
      q->last = page;
    q->first = page;
  } else {
    page->next = NULL;
    page->prev = q->last;
    if (q->last)
      q->last->next = page;
    else
      q->first = page;
    q->last = page;
  }
}

static void pool_queue_remove(pn_page_queue_t *q, pn_page_t *page) {
  if (page->prev)
    page->prev->next = page->next;
  else
    q->first = page->next;
  if (page->next)
    page->next->prev = page->prev;
  else
    q->last = page->prev;
  page->next = page->prev = NULL;
}

/* Move every page of `from` to the end of `to`. */
static void pool_queue_append(pn_page_queue_t *to, pn_page_queue_t *from) {
  if (from->first == NULL)
    return;
  if (to->last) {
    to->last->next = from->first;
    from->first->prev = to->last;
  } else {
    to->first = from->first;
  }
  to->last = from->last;
  from->first = from->last = NULL;
}

static inline void pool_cache_sync_page(pn_pool_cache_t *cache) {
  cache->page = cache->avail.first ? cache->avail.first : &pn_page_empty;
}

/* The segment list of a cache keeps segments with unused pages first. */
static void pool_segment_link(pn_pool_cache_t *cache, pn_segment_t *segment) {
  bool room = segment->used_pages < segment->page_count;
  segment->prev = NULL;
  segment->next = NULL;
  if (room || cache->segments == NULL) {
    segment->next = cache->segments;
    if (cache->segments)
      cache->segments->prev = segment;
    cache->segments = segment;
    return;
  }
  pn_segment_t *last = cache->segments;
  while (last->next)
    last = last->next;
  last->next = segment;
  segment->prev = last;
}

static void pool_segment_unlink(pn_pool_cache_t *cache, pn_segment_t *segment) {
  if (segment->prev)
    segment->prev->next = segment->next;
  else
    cache->segments = segment->next;
  if (segment->next)
    segment->next->prev = segment->prev;
  segment->next = segment->prev = NULL;
}

/* ------------------------------------------------------------------------ */
/* Counters                                                                 */
/* ------------------------------------------------------------------------ */

void pn_pool_peak_raise(pantry_pool_t *pool, uintptr_t live) {
  if ((intptr_t)live <= 0)
    return;
  uintptr_t peak = pn_atomic_load_relaxed(&pool->xpeak);
  while (live > peak && !pn_atomic_cas_strong_relaxed(&pool->xpeak, &peak, live)) {
  }
}

/* Live objects: the counters of every cache, added up (exact when no alloc
 * or free runs; racy otherwise: each counter is read once, relaxed).
 * O(caches). *allocs and *frees receive the totals. */
uintptr_t pn_pool_live(pantry_pool_t *pool, uintptr_t *allocs, uintptr_t *frees) {
  uintptr_t a = 0, f = pn_atomic_load_relaxed(&pool->xfrees_lost);
  for (pn_pool_cache_t *c = (pn_pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches); c != NULL;
       c = c->pool_next) {
    a += pn_atomic_load_relaxed(&c->xallocs);
    f += pn_atomic_load_relaxed(&c->xfrees);
  }
  if (allocs)
    *allocs = a;
  if (frees)
    *frees = f;
  uintptr_t live = a - f;
  return (intptr_t)live < 0 ? 0 : live; /* a snapshot can see a free before its alloc */
}

/* ------------------------------------------------------------------------ */
/* Pages of a cache (owner only)                                            */
/* ------------------------------------------------------------------------ */

/* pn_page_collect, with the double-free check naming the pool: the count
 * of remote frees packed in the thread-free word must not pass the blocks
 * in use. Owner only. */
static void pool_page_collect(const pantry_pool_t *pool, pn_page_t *page) {
  if (page->free != NULL)
    return;
  if (page->local_free != NULL) {
    page->free = page->local_free;
    page->local_free = NULL;
    return;
  }
  /* racy: a relaxed peek saves the exchange when no remote free came. */
  if ((pn_atomic_load_relaxed(&page->xthread_free) & PN_THREAD_FREE_PTR_MASK) == 0)
    return;
  /* Acquire: matches the release CAS in pn_page_free_remote (the links).
   * Pages in avail never carry PN_THREAD_FREE_FULL, so clearing it loses
   * nothing. */
  uintptr_t word = pn_atomic_exchange_acquire(&page->xthread_free, 0);
  pn_block_t *head = (pn_block_t *)(word & PN_THREAD_FREE_PTR_MASK);
  uint32_t count = (uint32_t)(word >> PN_THREAD_FREE_COUNT_SHIFT);
  if (head == NULL)
    return;
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
static void pool_page_unfull(pn_pool_cache_t *cache, pn_page_t *page, bool front) {
  pool_queue_remove(&cache->full, page);
  page->flags.x.in_full = 0;
  pn_atomic_fetch_and_relaxed(&page->xthread_free, ~PN_THREAD_FREE_FULL);
  pool_queue_push(&cache->avail, page, front);
  pool_cache_sync_page(cache);
}

/* Parked pages that got a remote free since: back to avail. */
static bool pool_cache_reclaim_full(pn_pool_cache_t *cache) {
  bool any = false;
  for (pn_segment_t *s = cache->segments; s != NULL; s = s->next) {
    uintptr_t bits = pn_segment_take_full_freed(s);
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
static void pool_segment_own(pn_pool_cache_t *cache, pn_segment_t *segment) {
  segment->pool_cache = cache;
  /* Relaxed: only this thread compares equal to its own token. */
  pn_atomic_store_relaxed(&segment->xpool_owner, cache->token);
  pool_segment_link(cache, segment);
}

/* Merge the segments, pages and magazine objects of orphaned caches (their
 * threads exited) into `cache`; the emptied caches become VACANT. */
static bool pool_cache_merge_orphans(pn_pool_cache_t *cache) {
  bool any = false;
  pantry_pool_t *pool = cache->pool;
  /* Acquire: matches the release CAS of pool_cache_attach's push. */
  for (pn_pool_cache_t *o = (pn_pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches); o != NULL;
       o = o->pool_next) {
    uintptr_t state = PN_POOL_CACHE_ORPHANED;
    if (o == cache || pn_atomic_load_relaxed(&o->xstate) != state)
      continue;
    /* Acquire: matches the release CAS of pool_thread_exit; we own `o` now. */
    if (!pn_atomic_cas_strong_acq_rel(&o->xstate, &state, PN_POOL_CACHE_ACTIVE))
      continue;
    pn_segment_t *s;
    while ((s = o->segments) != NULL) {
      pool_segment_unlink(o, s);
      pool_segment_own(cache, s);
    }
    pool_queue_append(&cache->avail, &o->avail);
    pool_queue_append(&cache->full, &o->full);
    o->page = &pn_page_empty;
    pool_cache_sync_page(cache);
    pn_pool_return(cache, o->mag, o->n); /* its pages are ours now, mostly */
    o->n = 0;
    /* Release: our writes to `o` before whoever takes it next. */
    pn_atomic_store_release(&o->xstate, PN_POOL_CACHE_VACANT);
    any = true;
  }
  return any;
}

/* A fresh segment for `cache`, registered with its pool; NULL when out of
 * memory. */
static pn_segment_t *pool_segment_new(pn_pool_cache_t *cache) {
  pantry_pool_t *pool = cache->pool;
  pn_segment_t *segment = pn_segment_alloc(pool->kind);
  if (segment == NULL)
    return NULL;
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
static pn_page_t *pool_cache_page_fresh(pn_pool_cache_t *cache) {
  pantry_pool_t *pool = cache->pool;
  pn_segment_t *segment = cache->segments;
  if (segment == NULL || segment->used_pages == segment->page_count) {
    segment = pool_segment_new(cache);
    if (segment == NULL)
      return NULL;
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
  /* Growth is where the peak is made: count now (one pass over the caches
   * per new page). The object being allocated is not counted yet: + 1. */
  pn_pool_peak_raise(pool, pn_pool_live(pool, NULL, NULL) + 1);
  return page;
}

/* A page with a free block, made the cache's current page; NULL when out of
 * memory. Order: the cache's own pages (local frees, remote frees, blocks
 * not yet carved), parked pages that got remote frees, pages of threads that
 * exited, then a fresh page. */
static pn_page_t *pool_cache_find_page(pn_pool_cache_t *cache) {
  const pantry_pool_t *pool = cache->pool;
  for (int attempt = 0; attempt < 4; attempt++) {
    pn_page_t *page = cache->avail.first;
    while (page != NULL) {
      pn_page_t *next = page->next;
      pool_page_collect(pool, page);
      if (page->free == NULL)
        pn_page_extend(page);
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
    if (pool_cache_reclaim_full(cache))
      continue;
    if (pool_cache_merge_orphans(cache))
      continue;
    break;
  }
  return pool_cache_page_fresh(cache);
}

/* An object back on a page of the calling thread's: a local push (no
 * atomic), and the page leaves the full state. Owner only. */
static void pool_free_local(pn_pool_cache_t *cache, pn_page_t *page, pn_block_t *block) {
  if (PN_UNLIKELY(page->used == 0))
    pn_pool_double_free(cache->pool, block, "its page has no object in use");
  pn_block_set_next(page, block, page->local_free);
  page->local_free = block;
  page->used--;
  if (page->flags.x.in_full)
    pool_page_unfull(cache, page, false);
}

/* Give free objects back to their pages: a local push for the pages of the
 * calling thread (whose cache is `cache`), one CAS per run of consecutive
 * objects of one other page. */
void pn_pool_return(pn_pool_cache_t *cache, pn_block_t *const *objs, uint32_t count) {
  pn_segment_t *run_segment = NULL;
  pn_page_t *run_page = NULL;
  pn_block_t *head = NULL, *tail = NULL;
  uint32_t run = 0;
  for (uint32_t i = 0; i < count; i++) {
    pn_block_t *block = objs[i];
    pn_segment_t *segment = pn_segment_of(block);
    pn_page_t *page = pn_segment_page_of(segment, block);
    /* Relaxed: only this thread can have stored its own token. */
    if (pn_atomic_load_relaxed(&segment->xpool_owner) == cache->token) {
      pool_free_local(segment->pool_cache, page, block);
      continue;
    }
    if (page != run_page) {
      if (run != 0)
        pn_page_push_remote(run_segment, run_page, head, tail, run);
      run_segment = segment;
      run_page = page;
      head = tail = block;
      run = 1;
      continue;
    }
    pn_block_set_next(page, block, head);
    head = block;
    run++;
  }
  if (run != 0)
    pn_page_push_remote(run_segment, run_page, head, tail, run);
}

/* A full magazine: give its `count` oldest objects back to their pages. */
void pn_pool_cache_flush(pn_pool_cache_t *cache, uint32_t count) {
  if (count > cache->n)
    count = cache->n;
  pn_pool_return(cache, cache->mag, count);
  cache->n -= count;
  memmove(cache->mag, cache->mag + count, (size_t)cache->n * sizeof cache->mag[0]);
}

/* An empty magazine: half a magazine from the current page (or the next
 * page with a free block). False when out of memory. */
bool pn_pool_cache_refill(pn_pool_cache_t *cache) {
  pn_page_t *page = cache->page;
  if (page->free == NULL) {
    page = pool_cache_find_page(cache);
    if (page == NULL)
      return false;
  }
  uint32_t want = cache->cap / 2;
  if (want == 0)
    want = 1;
  while (cache->n < want && page->free != NULL)
    cache->mag[cache->n++] = pn_page_pop(page);
  return true;
}

/* ------------------------------------------------------------------------ */
/* Caches and threads                                                       */
/* ------------------------------------------------------------------------ */

void pn_pool_cache_free(pn_pool_cache_t *cache) { pantry_free(cache); }

static void pool_thread_unlink(pn_pool_thread_t *t, pn_pool_cache_t *cache) {
  if (cache->thread_prev)
    cache->thread_prev->thread_next = cache->thread_next;
  else
    t->caches = cache->thread_next;
  if (cache->thread_next)
    cache->thread_next->thread_prev = cache->thread_prev;
  cache->thread_next = cache->thread_prev = NULL;
  for (unsigned i = 0; i < PN_POOL_SLOTS; i++)
    if (t->slots[i].cache == cache)
      t->slots[i] = (pn_pool_slot_t){0, NULL};
}

static void pool_thread_link(pn_pool_thread_t *t, pn_pool_cache_t *cache) {
  cache->thread_prev = NULL;
  cache->thread_next = t->caches;
  if (t->caches)
    t->caches->thread_prev = cache;
  t->caches = cache;
}

/* Thread exit (the pool_key destructor): hand every cache to its pool. The
 * exiting thread touches only its caches: the pool may be destroyed at this
 * very moment. */
static void pool_thread_exit(void *arg) {
  pn_pool_thread_t *t = arg;
  pn_pool_cache_t *cache = t->caches;
  t->caches = NULL;
  memset(t->slots, 0, sizeof t->slots);
  t->exit_hooked = false;
  while (cache != NULL) {
    pn_pool_cache_t *next = cache->thread_next;
    cache->thread_next = cache->thread_prev = NULL;
    uintptr_t state = PN_POOL_CACHE_ACTIVE;
    uintptr_t to =
        cache->segments != NULL || cache->n != 0 ? PN_POOL_CACHE_ORPHANED : PN_POOL_CACHE_VACANT;
    /* Release: every write of ours to the cache and its pages before the
     * adopter's acquire CAS. Fails only when destroy made it DEAD (its
     * exchange): then the cache is ours to free. */
    if (!pn_atomic_cas_strong_acq_rel(&cache->xstate, &state, to))
      pn_pool_cache_free(cache);
    cache = next;
  }
}

static void pool_key_create(void) {
  if (pthread_key_create(&pool_key, pool_thread_exit) != 0)
    pn_fatal("pantry_pool_create: pthread_key_create failed: cannot track thread exits");
}

static void pool_thread_start(pn_pool_thread_t *t) {
  if (t->token == 0)
    t->token = pn_atomic_fetch_add_relaxed(&pool_xnext_token, 1) + 1;
  if (!t->exit_hooked) {
    /* Again after an exit destructor ran: glibc then calls it once more. */
    pthread_setspecific(pool_key, t);
    t->exit_hooked = true;
  }
}

/* The thread's cache for `pool` in its list, freeing DEAD caches on the way. */
static pn_pool_cache_t *pool_thread_find(pn_pool_thread_t *t, uint64_t id) {
  pn_pool_cache_t *cache = t->caches;
  while (cache != NULL) {
    pn_pool_cache_t *next = cache->thread_next;
    if (cache->id == id)
      return cache;
    /* Acquire: matches destroy's exchange; after it, nobody else touches it. */
    if (pn_atomic_load_acquire(&cache->xstate) == PN_POOL_CACHE_DEAD) {
      pool_thread_unlink(t, cache);
      pn_pool_cache_free(cache);
    }
    cache = next;
  }
  return NULL;
}

/* A cache for this thread: a vacant one of the pool (or, for a thread about
 * to allocate, an orphaned one, pages and all), taken whole, or a new one.
 * A thread that only frees takes no orphan: it would strand the pages with a
 * thread that never allocates from them. NULL when out of memory. */
static pn_pool_cache_t *pool_cache_attach(pantry_pool_t *pool, pn_pool_thread_t *t, bool to_alloc) {
  pool_thread_start(t);
  for (pn_pool_cache_t *c = (pn_pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches); c != NULL;
       c = c->pool_next) {
    uintptr_t state = pn_atomic_load_relaxed(&c->xstate);
    if (state != PN_POOL_CACHE_VACANT && (state != PN_POOL_CACHE_ORPHANED || !to_alloc))
      continue;
    /* Acquire: matches the release of pool_thread_exit or of a merge. */
    if (!pn_atomic_cas_strong_acq_rel(&c->xstate, &state, PN_POOL_CACHE_ACTIVE))
      continue;
    c->token = t->token;
    for (pn_segment_t *s = c->segments; s != NULL; s = s->next)
      pn_atomic_store_relaxed(&s->xpool_owner, t->token);
    pool_thread_link(t, c);
    return c;
  }
  size_t size = sizeof(pn_pool_cache_t) + (size_t)pool->mag_cap * sizeof(pn_block_t *);
  pn_pool_cache_t *c = pantry_aligned_alloc(64, size);
  if (c == NULL)
    return NULL;
  memset(c, 0, size);
  c->cap = pool->mag_cap;
  pn_atomic_store_relaxed(&c->xstate, PN_POOL_CACHE_ACTIVE);
  c->id = pool->id;
  c->pool = pool;
  c->token = t->token;
  c->page = &pn_page_empty;
  /* Release: the cache's fields before any walker's acquire load. */
  uintptr_t head = pn_atomic_load_relaxed(&pool->xcaches);
  do {
    c->pool_next = (pn_pool_cache_t *)head;
  } while (!pn_atomic_cas_weak_release(&pool->xcaches, &head, (uintptr_t)c));
  pool_thread_link(t, c);
  return c;
}

/* The calling thread's cache for `pool`, found or made (`to_alloc`: the
 * thread is about to allocate); NULL when out of memory. */
pn_pool_cache_t *pn_pool_cache_get(pantry_pool_t *pool, bool to_alloc) {
  pn_pool_thread_t *t = &pool_thread;
  pn_pool_tp = t;
  pn_pool_slot_t *slot = &t->slots[pool->id & (PN_POOL_SLOTS - 1)];
  if (slot->id == pool->id)
    return slot->cache;
  pn_pool_cache_t *cache = pool_thread_find(t, pool->id);
  if (cache == NULL)
    cache = pool_cache_attach(pool, t, to_alloc);
  if (cache == NULL)
    return NULL;
  slot->id = pool->id;
  slot->cache = cache;
  return cache;
}

/* Destroy's part: detach every cache of `pool`. This thread's own is freed
 * now; other threads' ACTIVE ones turn DEAD (their threads free them);
 * orphaned and vacant ones are the pool's, freed here. Read pool_next
 * first: after the exchange the cache may be freed. */
void pn_pool_caches_release(pantry_pool_t *pool) {
  pn_pool_thread_t *t = &pool_thread;
  pn_pool_cache_t *c = (pn_pool_cache_t *)pn_atomic_load_acquire(&pool->xcaches);
  while (c != NULL) {
    pn_pool_cache_t *next = c->pool_next;
    if (t->token != 0 && c->token == t->token &&
        pn_atomic_load_relaxed(&c->xstate) == PN_POOL_CACHE_ACTIVE) {
      pool_thread_unlink(t, c);
      pn_pool_cache_free(c);
    } else if (pn_atomic_exchange_acq_rel(&c->xstate, PN_POOL_CACHE_DEAD) != PN_POOL_CACHE_ACTIVE) {
      /* Acquire: matches the release CAS of pool_thread_exit. */
      pn_pool_cache_free(c);
    }
    c = next;
  }
}

/* One-time set-up of the thread-exit hook (pantry_pool_create). */
void pn_pool_init_once(void) { pthread_once(&pool_key_once, pool_key_create); }
