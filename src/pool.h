/* pool.h - the types and invariants that pool.c (the public pool API, its
 * fast paths, the walks of live objects) and pool_cache.c (per-thread
 * caches, their pages, thread exit: the slow paths) share. Only those two
 * files include it. See pool.c for the pieces and who touches what.
 */
#ifndef PN_POOL_H
#define PN_POOL_H

#include "internal.h"
#include "pantry.h"

#define PN_POOL_SLOTS 16    /* per-thread table of caches: a power of two */
#define PN_POOL_NAME_MAX 48 /* bytes of the name kept, NUL included */
#define PN_POOL_ALIGN_MAX ((size_t)4096)
#define PN_POOL_SIZE_MAX PN_LARGE_SIZE_MAX /* >= 7 objects in a page */
#define PN_POOL_PAGE_BLOCKS_MAX 4096       /* the most blocks a page holds: 64 KiB / 16 */
#define PN_POOL_BUSY_DESTROYING ((uintptr_t)1 << (sizeof(uintptr_t) * 8 - 1))
#define PN_POOL_MAG_MAX 64            /* objects a magazine holds, at most */
#define PN_POOL_MAG_BYTES (16 * 1024) /* ... and at most about this many bytes of them */

_Static_assert(PN_POOL_PAGE_BLOCKS_MAX * 16 == (size_t)1 << PN_SMALL_PAGE_SHIFT,
               "a small page holds at most 4096 blocks of 16 bytes");
_Static_assert(PN_SEGMENT_HEADER_SIZE % PN_POOL_ALIGN_MAX == 0,
               "page 0 starts after the header: aligned to every pool alignment");

enum pn_pool_cache_state {
  PN_POOL_CACHE_ACTIVE,   /* a live thread owns it */
  PN_POOL_CACHE_ORPHANED, /* its thread exited; the pool owns it and its segments */
  PN_POOL_CACHE_VACANT,   /* the pool owns it; it holds no segment */
  PN_POOL_CACHE_DEAD,     /* the pool was destroyed; its thread frees it */
};

typedef struct pn_pool_cache pn_pool_cache_t;

/* A thread's part of a pool: a magazine (a LIFO array of free objects, as
 * a kmem_cache's per-CPU array) in front of the thread's pages.
 * pantry_pool_alloc pops the magazine; pantry_pool_free pushes the object
 * on the freeing thread's magazine, whichever thread allocated it. An empty
 * magazine is refilled with half a magazine from the current page; a full
 * one gives its older half back to the objects' pages (a local push for the
 * thread's own pages, one CAS per run of objects of one page for others).
 *
 * Invariants (owner's view): mag[0..n) are free objects of the pool (each
 * counted in its page's `used`, on no page list); page == avail.first, or
 * &pn_page_empty when avail is empty; every page of every segment in
 * `segments` with block_size != 0 is in exactly one of avail and full; a
 * page is in full <=> page->flags.x.in_full.
 * Live objects of the pool == sum over its caches of (xallocs - xfrees) -
 * pool->xfrees_lost (pn_pool_live). */
struct pn_pool_cache {
  /* Read by other threads (registry walks); written at hand-offs only. */
  pn_atomic_uintptr_t xstate; /* atomic acq/rel: enum pn_pool_cache_state */
  pn_pool_cache_t *pool_next; /* immutable once pushed on pool->xcaches */
  uint64_t id;                /* immutable: the pool's id */
  pantry_pool_t *pool;        /* immutable */
  uintptr_t token;            /* owner: its thread's token (stale while not ACTIVE) */
  /* The owner's; the fast paths touch this line and the top of mag. */
  _Alignas(64) uint32_t n;      /* owner: objects in mag */
  uint32_t cap;                 /* immutable: the magazine's capacity (pool->mag_cap) */
  pn_atomic_uintptr_t xallocs;  /* owner writes (relaxed), stats read: successful allocs */
  pn_atomic_uintptr_t xfrees;   /* owner writes (relaxed), stats read: frees by this thread */
  pn_page_t *page;              /* owner: the page refills take from */
  pn_page_queue_t avail;        /* owner: pages that may have free blocks */
  pn_page_queue_t full;         /* owner: pages parked full (PN_THREAD_FREE_FULL) */
  pn_segment_t *segments;       /* owner: its segments, those with unused pages first */
  pn_pool_cache_t *thread_next; /* owner: the thread's list of caches */
  pn_pool_cache_t *thread_prev; /* owner */
  pn_block_t *mag[];            /* owner: the magazine, `cap` entries */
};

struct pantry_pool {
  /* Immutable after create: read by every alloc and free. */
  uint64_t id; /* never reused (pool_xnext_id) */
  size_t block_size;
  pantry_init_fn init;
  pantry_drop_fn drop;
  void *ctx;
  pn_page_kind_t kind;
  uint32_t mag_cap; /* magazine entries: PN_POOL_MAG_MAX, fewer for big objects */
  size_t size;
  size_t align;
  char name[PN_POOL_NAME_MAX];
  /* Shared; slow paths only. */
  _Alignas(64) pn_atomic_uintptr_t xcaches; /* atomic: pn_pool_cache_t *, push only */
  pn_atomic_uintptr_t xsegments;            /* atomic: pn_segment_t *, push only (pool_next) */
  pn_atomic_uintptr_t xsegment_count;       /* atomic relaxed */
  pn_atomic_uintptr_t xpages;               /* atomic relaxed: pages formatted */
  pn_atomic_uintptr_t xpeak;                /* atomic relaxed: the highest pn_pool_live seen */
  pn_atomic_uintptr_t xfrees_lost;        /* atomic relaxed: frees by a thread that had no cache */
  pn_atomic_uintptr_t xdeferred_used;     /* atomic relaxed: set once a deferred free names the
                                             pool; destroy then waits for them (the barrier) */
  _Alignas(64) pn_atomic_uintptr_t xbusy; /* atomic acq/rel, debug builds only: calls in
                                             progress | PN_POOL_BUSY_DESTROYING */
};

typedef struct pn_pool_slot {
  uint64_t id; /* 0: empty */
  pn_pool_cache_t *cache;
} pn_pool_slot_t;

/* A thread's pool state. Thread-local; nothing here is shared. */
typedef struct pn_pool_thread {
  pn_pool_slot_t slots[PN_POOL_SLOTS];
  uintptr_t token;         /* 0 until the thread first uses a pool; then unique */
  pn_pool_cache_t *caches; /* its caches: ACTIVE, or DEAD until pruned */
  bool exit_hooked;        /* pthread_setspecific(pool_key) done */
} pn_pool_thread_t;

/* The state lives in ordinary TLS; the fast paths reach it through
 * pn_pool_tp, one word. Its TLS model is the build's (see CMakeLists.txt):
 * initial-exec in libpantry-malloc, TLS descriptors in libpantry, so that
 * libpantry stays safe to dlopen (a descriptor call costs about 1 ns where
 * the module sits in static TLS). pn_pool_tp points at a constant empty state (no slot matches,
 * token 0 matches no segment) until the thread's first slow path points it at the thread's own
 * (pool_cache.c). */
extern _Thread_local const pn_pool_thread_t *pn_pool_tp PN_HIDDEN;

/* A counter only its owner writes: a plain increment that readers may load. */
static inline void pn_pool_count(pn_atomic_uintptr_t *counter) {
  pn_atomic_store_relaxed(counter, pn_atomic_load_relaxed(counter) + 1);
}

/* Debug builds: the tag a freed object carries in its second word. */
static inline uintptr_t pn_pool_free_tag(const void *obj) {
  return (uintptr_t)obj ^ pn_cookie_key ^ (uintptr_t)0x5a5a5a5a5a5a5a5aull;
}

/* pool.c */
_Noreturn void pn_pool_double_free(const pantry_pool_t *pool, const void *obj,
                                   const char *how) PN_HIDDEN PN_COLD;

/* pool_cache.c */
void pn_pool_init_once(void) PN_HIDDEN;
pn_pool_cache_t *pn_pool_cache_get(pantry_pool_t *pool, bool to_alloc) PN_HIDDEN;
bool pn_pool_cache_refill(pn_pool_cache_t *cache) PN_HIDDEN;
void pn_pool_cache_flush(pn_pool_cache_t *cache, uint32_t count) PN_HIDDEN;
void pn_pool_return(pn_pool_cache_t *cache, pn_block_t *const *objs, uint32_t count) PN_HIDDEN;
void pn_pool_caches_release(pantry_pool_t *pool) PN_HIDDEN;
uintptr_t pn_pool_live(pantry_pool_t *pool, uintptr_t *allocs, uintptr_t *frees) PN_HIDDEN;
void pn_pool_peak_raise(pantry_pool_t *pool, uintptr_t live) PN_HIDDEN;

#endif /* PN_POOL_H */
