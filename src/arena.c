/* arena.c - arenas: allocation (the slow paths of the inline fast paths in
 * include/pantry.h), serial arenas, chunks, creation, child links, the
 * thread-local caches. Reset, destroy and statistics are in arena_reset.c;
 * the shared types in arena.h.
 *
 * Layer: the top layer, beside alloc.c (DESIGN.md). It takes chunks from the
 * calling thread's heap through pn_malloc_inline / pn_free_inline (alloc.h)
 * and calls nothing else of pantry but pn_fatal.
 *
 * The model is protobuf's ThreadSafeArena. Each thread that allocates in an
 * arena has a serial arena: a list of chunks, a bump pointer `ptr` and an
 * `end`. Cleanups ({drop, obj, ctx}) grow down from the end of the current
 * chunk, so `end` is the lowest cleanup and the free space is [ptr, end).
 * A thread finds its serial arena through a one-entry thread-local cache
 * keyed by the arena's id; ids come from a global counter and are never
 * reused, so the cache of a destroyed arena never matches a new one, even at
 * the same address. The fast path: compare the id, align `ptr`, compare with
 * `end`, add. No atomic, no lock.
 *
 * The first serial arena lives in the arena's header and its first chunk
 * (the initial chunk) in the same allocation, so creating an arena is one
 * allocation and destroying a one-thread arena a few frees (fewer with the
 * thread's cache of one block and one chunk). The creating thread owns it
 * (after a reset that dropped other threads' serial arenas, the first thread
 * to allocate claims it with a CAS). Other threads' serial arenas live at the
 * start of their own first chunk and are CAS-pushed on `xserials`.
 *
 * Shared state, and who touches it:
 *   arena->head.id_        written by create and reset (exclusive); read by every fast path
 *   arena->xserials        CAS push (release) by a thread's first allocation; read (acquire)
 *   arena->first.xowner    set by create; reset may store 0; then claimed by CAS 0 -> token
 *   arena->xspare[]        reset stores (release); any thread takes with an exchange (acquire)
 *   arena->xheld           chunk bytes charged against the limit (only when limit != 0)
 *   arena->xbusy           the token of the thread in reset/destroy, or 0
 *   arena->xchildren/xdead child links: CAS push; xchild cleared by the child's destroy
 *   arena->xcompact        unlinking of dead links, by whoever holds this try-lock
 *   everything in a serial arena but xowner: its owner thread (or reset/destroy)
 *   arena_xids, arena_key_xstate: process-wide; the rest of the thread state is
 *   thread-local.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "arena.h"

/* The thread-local cache (declared in include/pantry.h, whose inline fast
 * paths read it): the serial arena of the last arena this thread used,
 * keyed by the arena's id (0 matches nothing). No tls_model attribute: the
 * header's inline paths compiled into an executable get initial-exec access
 * from the compiler, code in a dlopen'ed object gets the dynamic model, and
 * the library itself uses TLS descriptors (libpantry) or initial-exec
 * (libpantry-malloc), as the rest of pantry does (see CMakeLists.txt).
 * Debug builds store the id with PN_ARENA_KEY_DEBUG set, so the header's inline
 * paths never match and every call reaches the checks in this file. */
PANTRY_API __thread struct pantry_arena_cache_ pantry_arena_cache_;

/* This thread's token, its batch of ids, and its cache of one arena block and
 * one chunk left by a destroy, for the next create (APR keeps such blocks on
 * its allocator's free list; here they skip two trips through the heap per
 * request). Owner: this thread. */
typedef struct arena_thread {
  uintptr_t token; /* 0 until first needed */
  uintptr_t ids_next, ids_end;
  void *spare_block;             /* an PN_ARENA_BLOCK_DEFAULT-byte arena allocation, or NULL */
  pn_arena_chunk_t *spare_chunk; /* a chunk of at most PN_ARENA_CHUNK_MAX bytes, or NULL */
  bool exit_registered;          /* arena_thread_key is set: the cache is freed at exit */
} arena_thread_t;
static __thread arena_thread_t arena_thread;
static pn_atomic_uintptr_t arena_xids; /* atomic relaxed: ids handed out in batches */

/* ------------------------------------------------------------------------ */
/* Ids, tokens, small helpers                                               */
/* ------------------------------------------------------------------------ */

/* A fresh id: never 0, never reused (64-bit counter). Relaxed: only the
 * uniqueness of the fetch_add matters. */
uintptr_t pn_arena_id_take(void) {
  arena_thread_t *t = &arena_thread;
  if (PN_UNLIKELY(t->ids_next == t->ids_end)) {
    t->ids_next = pn_atomic_fetch_add_relaxed(&arena_xids, PN_ARENA_ID_BATCH) + 1;
    t->ids_end = t->ids_next + PN_ARENA_ID_BATCH;
  }
  return t->ids_next++;
}

/* This thread's token: an id, so unique among all threads that ever ran. */
uintptr_t pn_arena_token(void) {
  if (PN_UNLIKELY(arena_thread.token == 0))
    arena_thread.token = pn_arena_id_take();
  return arena_thread.token;
}

/* Every free of this file goes through here, out of line: inlined, the
 * thread-heap look-up of pn_free_inline is hoisted to the top of reset and
 * destroy, which then pay for it even when they free nothing. */
void pn_arena_block_free(void *p, const char *fn) { pn_free_inline(p, fn); }

/* ------------------------------------------------------------------------ */
/* The thread's cache of one arena block and one chunk                      */
/* ------------------------------------------------------------------------ */

static pthread_key_t arena_thread_key;
static pn_atomic_uint32_t arena_key_xstate; /* 0: no key yet, 1: being made, 2: ready */

/* At thread exit: free what the cache holds. */
static void arena_thread_exit(void *unused) {
  (void)unused;
  arena_thread_t *t = &arena_thread;
  t->exit_registered = false; /* a later destroy (another destructor) registers again */
  if (t->spare_block != NULL)
    pn_arena_block_free(t->spare_block, "pantry_arena (thread exit)");
  if (t->spare_chunk != NULL)
    pn_arena_block_free(t->spare_chunk, "pantry_arena (thread exit)");
  t->spare_block = NULL;
  t->spare_chunk = NULL;
}

/* Whether this thread may cache: its exit will free the cache. The key is
 * made once per process; a thread that finds another making it does not
 * wait, it just does not cache this time. */
static bool arena_thread_cache_ok(arena_thread_t *t) {
  if (PN_LIKELY(t->exit_registered))
    return true;
  /* Acquire: matches the release store after pthread_key_create. */
  uint32_t state = pn_atomic_load_acquire32(&arena_key_xstate);
  if (state == 0) {
    if (!pn_atomic_cas_strong_acq_rel32(&arena_key_xstate, &state, 1))
      return false;
    if (pthread_key_create(&arena_thread_key, arena_thread_exit) != 0)
      return false; /* stays 1 */
    pn_atomic_store_release32(&arena_key_xstate, 2);
    state = 2;
  }
  if (state != 2 || pthread_setspecific(arena_thread_key, (void *)1) != 0)
    return false;
  t->exit_registered = true;
  return true;
}

/* A destroyed arena's memory: keep its block and its largest chunk (of at
 * most PN_ARENA_CHUNK_MAX bytes) in the thread's cache when there is room;
 * free the rest. `dead` is a list of its chunks (next links). */
void pn_arena_thread_keep(pantry_arena_t *arena, pn_arena_chunk_t *dead) {
  arena_thread_t *t = &arena_thread;
  bool ok = arena_thread_cache_ok(t);
  pn_arena_chunk_t *best = NULL;
  if (ok && t->spare_chunk == NULL)
    for (pn_arena_chunk_t *c = dead; c != NULL; c = c->next)
      if (c != arena->initial && c->size <= PN_ARENA_CHUNK_MAX &&
          (best == NULL || c->size > best->size))
        best = c;
  for (pn_arena_chunk_t *c = dead, *next; c != NULL; c = next) {
    next = c->next;
    if (c != best)
      pn_arena_chunk_free(arena, c);
  }
  t->spare_chunk = ok && t->spare_chunk == NULL ? best : t->spare_chunk;
  if (ok && t->spare_block == NULL && arena->block_size == PN_ARENA_BLOCK_DEFAULT)
    t->spare_block = arena;
  else
    pn_arena_block_free(arena, "pantry_arena_destroy");
}

PN_COLD PN_NOINLINE static void arena_race_fatal(const pantry_arena_t *arena, const char *fn) {
  pn_fatal("%s(arena '%s' %p): the arena is being reset or destroyed by another thread "
           "(alloc, own and new must not run concurrently with pantry_arena_reset or "
           "pantry_arena_destroy on the same arena)",
           fn, arena->name, (const void *)arena);
}

/* Debug builds: the fast path checks that no reset or destroy is running
 * (but one on this thread, whose drops may allocate). */
static inline void arena_debug_check(const pantry_arena_t *arena, const char *fn) {
  uintptr_t busy = pn_atomic_load_relaxed(&((pantry_arena_t *)arena)->xbusy);
  if (PN_UNLIKELY(busy != 0) && busy != pn_arena_token())
    arena_race_fatal(arena, fn);
}

/* ------------------------------------------------------------------------ */
/* Chunks                                                                   */
/* ------------------------------------------------------------------------ */

/* Charge `size` bytes against the limit. Relaxed: a counter, it publishes
 * nothing. A CAS loop, not add-then-undo, so a failure is never spurious. */
static bool arena_charge(pantry_arena_t *arena, size_t size) {
  if (arena->limit == 0)
    return true;
  uintptr_t held = pn_atomic_load_relaxed(&arena->xheld);
  do {
    if (held > arena->limit || size > arena->limit - held)
      return false;
  } while (!pn_atomic_cas_strong_relaxed(&arena->xheld, &held, held + size));
  return true;
}

void pn_arena_uncharge(pantry_arena_t *arena, size_t size) {
  if (arena->limit != 0 && size != 0)
    pn_atomic_fetch_sub_relaxed(&arena->xheld, size);
}

/* A spare chunk of at least `min` bytes from the xspare slots, or NULL. */
static pn_arena_chunk_t *arena_spare_take_shared(pantry_arena_t *arena, size_t min) {
  for (int i = 0; i < PN_ARENA_SPARES; i++) {
    if (pn_atomic_load_relaxed(&arena->xspare[i]) == 0)
      continue;
    /* Acquire: matches the release store of reset that put the chunk there. */
    pn_arena_chunk_t *c = (pn_arena_chunk_t *)pn_atomic_exchange_acquire(&arena->xspare[i], 0);
    if (c == NULL)
      continue;
    if (c->size >= min)
      return c;
    uintptr_t empty = 0; /* too small: put it back, or free it if the slot was refilled */
    if (!pn_atomic_cas_strong_acq_rel(&arena->xspare[i], &empty, (uintptr_t)c)) {
      pn_arena_uncharge(arena, c->size);
      pn_arena_block_free(c, "pantry_arena_alloc");
    }
  }
  return NULL;
}

/* A chunk of at least `min` bytes for serial arena `s`: a spare, or a new
 * block. With `grow`, a new block has the next growth size if that is more
 * (or just `min` when the growth size would pass the limit), and the growth
 * size doubles. NULL with errno ENOMEM. */
static pn_arena_chunk_t *arena_chunk_take(pantry_arena_t *arena, pn_arena_serial_t *s, size_t min,
                                          bool grow) {
  for (pn_arena_chunk_t **pc = &s->spare; *pc != NULL; pc = &(*pc)->next) {
    if ((*pc)->size >= min) {
      pn_arena_chunk_t *c = *pc;
      *pc = c->next;
      return c;
    }
  }
  pn_arena_chunk_t *c = arena_spare_take_shared(arena, min);
  if (c != NULL)
    return c;
  size_t want = !grow ? 0 : arena->chunk_size != 0 ? arena->chunk_size : s->next_size;
  size_t size = min > want ? min : want;
  if (!arena_charge(arena, size) && (size == min || !arena_charge(arena, size = min))) {
    errno = ENOMEM;
    return NULL;
  }
  c = pn_malloc_inline(size);
  if (c == NULL) {
    pn_arena_uncharge(arena, size);
    errno = ENOMEM;
    return NULL;
  }
  c->size = size;
  if (grow && arena->chunk_size == 0 && size >= s->next_size && s->next_size < PN_ARENA_CHUNK_MAX)
    s->next_size *= 2;
  return c;
}

/* Make `c` the current chunk of `s`; the old current chunk records where
 * its allocations and cleanups stopped. */
static void arena_serial_push_chunk(pn_arena_serial_t *s, pn_arena_chunk_t *c, uintptr_t data) {
  if (s->chunks != NULL) {
    s->chunks->top = s->bump.ptr_;
    s->chunks->cleanup = s->bump.end_;
  }
  c->next = s->chunks;
  s->chunks = c;
  s->bump.ptr_ = data;
  s->bump.end_ = pn_arena_chunk_end(c);
}

/* ------------------------------------------------------------------------ */
/* Serial arenas                                                            */
/* ------------------------------------------------------------------------ */

/* A new serial arena for this thread, at the start of its first chunk. */
static pn_arena_serial_t *arena_serial_create(pantry_arena_t *arena, uintptr_t token) {
  pn_arena_serial_t tmp = {.next_size = PN_ARENA_CHUNK_FIRST}; /* for the growth size */
  size_t header = (sizeof(pn_arena_serial_t) + 15) & ~(size_t)15;
  pn_arena_chunk_t *c = arena_chunk_take(arena, &tmp, sizeof(pn_arena_chunk_t) + header + 64, true);
  if (c == NULL)
    return NULL;
  pn_arena_serial_t *s = (pn_arena_serial_t *)pn_arena_chunk_data(c);
  s->spare = s->detached = NULL;
  s->next_size = tmp.next_size;
  c->next = NULL;
  s->chunks = c;
  s->bump.ptr_ = pn_arena_chunk_data(c) + header;
  s->bump.end_ = pn_arena_chunk_end(c);
  pn_atomic_store_relaxed(&s->xowner, token);
  /* Release: matches the acquire loads of xserials in arena_serial_get and
   * in reset, destroy and stats, so they see the serial arena's fields. */
  uintptr_t head = pn_atomic_load_relaxed(&arena->xserials);
  do {
    s->next = (pn_arena_serial_t *)head;
  } while (!pn_atomic_cas_weak_release(&arena->xserials, &head, (uintptr_t)s));
  return s;
}

/* This thread's serial arena in `arena` (found, claimed or created), and the
 * cache pointed at it. NULL with errno ENOMEM. Diagnoses a race with reset. */
static pn_arena_serial_t *arena_serial_get(pantry_arena_t *arena, const char *fn) {
  uintptr_t token = pn_arena_token();
  uintptr_t busy = pn_atomic_load_relaxed(&arena->xbusy);
  if (PN_UNLIKELY(busy != 0 && busy != token))
    arena_race_fatal(arena, fn);
  if (pantry_arena_cache_.id_ == pn_arena_key(arena))
    return (pn_arena_serial_t *)pantry_arena_cache_.serial_;
  pn_arena_serial_t *s = &arena->first;
  uintptr_t owner = pn_atomic_load_relaxed(&s->xowner);
  /* Relaxed claim: the CAS only picks one owner; the first serial arena's
   * fields were written by create or reset, which happen before any use. */
  if (owner != token && !(owner == 0 && pn_atomic_cas_strong_relaxed(&s->xowner, &owner, token))) {
    /* Acquire: matches the release CAS in arena_serial_create. */
    s = (pn_arena_serial_t *)pn_atomic_load_acquire(&arena->xserials);
    while (s != NULL && pn_atomic_load_relaxed(&s->xowner) != token)
      s = s->next;
    if (s == NULL && (s = arena_serial_create(arena, token)) == NULL)
      return NULL;
  }
  pantry_arena_cache_.id_ = pn_arena_key(arena);
  pantry_arena_cache_.serial_ = &s->bump;
  return s;
}

/* ------------------------------------------------------------------------ */
/* Allocation                                                               */
/* ------------------------------------------------------------------------ */

/* Allocate from a new chunk. A request larger than a quarter of the next
 * chunk gets a chunk of its own, put after the current one, so the space
 * left in the current chunk is not lost. */
static void *arena_alloc_chunk(pantry_arena_t *arena, pn_arena_serial_t *s, size_t size,
                               size_t align) {
  size_t min =
      sizeof(pn_arena_chunk_t) + ((size + (align > 16 ? align - 1 : 0) + 15) & ~(size_t)15);
  size_t next = arena->chunk_size != 0 ? arena->chunk_size : s->next_size;
  if (s->chunks != NULL && min > next / 4) {
    pn_arena_chunk_t *c = arena_chunk_take(arena, s, min, false);
    if (c == NULL)
      return NULL;
    uintptr_t p = pn_arena_align_up(pn_arena_chunk_data(c), align);
    c->top = p + size;
    c->cleanup = pn_arena_chunk_end(c);
    c->next = s->chunks->next;
    s->chunks->next = c;
    return (void *)p;
  }
  pn_arena_chunk_t *c = arena_chunk_take(arena, s, min, true);
  if (c == NULL)
    return NULL;
  arena_serial_push_chunk(s, c, pn_arena_chunk_data(c));
  uintptr_t p = pn_arena_align_up(s->bump.ptr_, align);
  s->bump.ptr_ = p + size;
  return (void *)p;
}

PN_NOINLINE static void *arena_alloc_slow(pantry_arena_t *arena, size_t size, size_t align,
                                          const char *fn) {
  if (PN_UNLIKELY(!pn_arena_align_ok(align))) {
    errno = EINVAL;
    return NULL;
  }
  if (PN_UNLIKELY(size > PN_ARENA_SIZE_MAX)) {
    errno = ENOMEM;
    return NULL;
  }
  if (size == 0)
    size = 1; /* a unique pointer */
  pn_arena_serial_t *s = arena_serial_get(arena, fn);
  if (s == NULL)
    return NULL;
  uintptr_t p = pn_arena_align_up(s->bump.ptr_, align);
  if (s->chunks != NULL && p <= s->bump.end_ && size <= s->bump.end_ - p) {
    s->bump.ptr_ = p + size;
    return (void *)p;
  }
  return arena_alloc_chunk(arena, s, size, align);
}

/* The fast paths: as include/pantry.h's inline ones, plus the debug check. */
void *pantry_arena_alloc(pantry_arena_t *arena, size_t size, size_t align) {
  struct pantry_arena_cache_ *cache = &pantry_arena_cache_;
  if (PN_LIKELY(cache->id_ == pn_arena_key(arena) && pn_arena_align_ok(align))) {
    if (pn_debug)
      arena_debug_check(arena, "pantry_arena_alloc");
    struct pantry_arena_bump_ *b = cache->serial_;
    uintptr_t p = pn_arena_align_up(b->ptr_, align);
    uintptr_t end = b->end_;
    /* size - 1 sends size 0 to the slow path; p > end only when closed or
     * when the alignment padding does not fit. */
    if (PN_LIKELY(p <= end && size - 1 < end - p)) {
      b->ptr_ = p + size;
      return (void *)p;
    }
  }
  return arena_alloc_slow(arena, size, align, "pantry_arena_alloc");
}

/* Room for one cleanup in `s`, taking a new chunk when needed. */
static pn_arena_cleanup_t *arena_cleanup_slot(pantry_arena_t *arena, pn_arena_serial_t *s) {
  if (s->chunks == NULL || s->bump.end_ - s->bump.ptr_ < sizeof(pn_arena_cleanup_t)) {
    pn_arena_chunk_t *c = arena_chunk_take(arena, s, sizeof(pn_arena_chunk_t) + 64, true);
    if (c == NULL)
      return NULL;
    arena_serial_push_chunk(s, c, pn_arena_chunk_data(c));
  }
  s->bump.end_ -= sizeof(pn_arena_cleanup_t);
  return (pn_arena_cleanup_t *)s->bump.end_;
}

PN_NOINLINE static int arena_own_slow(pantry_arena_t *arena, void *obj, pantry_drop_fn drop,
                                      void *ctx) {
  if (drop == NULL) {
    errno = EINVAL;
    return -1;
  }
  pn_arena_serial_t *s = arena_serial_get(arena, "pantry_arena_own");
  pn_arena_cleanup_t *cl = s != NULL ? arena_cleanup_slot(arena, s) : NULL;
  if (cl == NULL)
    return -1;
  *cl = (pn_arena_cleanup_t){drop, obj, ctx};
  return 0;
}

int pantry_arena_own(pantry_arena_t *arena, void *obj, pantry_drop_fn drop, void *ctx) {
  struct pantry_arena_cache_ *cache = &pantry_arena_cache_;
  if (PN_LIKELY(cache->id_ == pn_arena_key(arena) && drop != NULL)) {
    if (pn_debug)
      arena_debug_check(arena, "pantry_arena_own");
    struct pantry_arena_bump_ *b = cache->serial_;
    if (PN_LIKELY(b->end_ - b->ptr_ >= sizeof(pn_arena_cleanup_t))) {
      b->end_ -= sizeof(pn_arena_cleanup_t);
      *(pn_arena_cleanup_t *)b->end_ = (pn_arena_cleanup_t){drop, obj, ctx};
      return 0;
    }
  }
  return arena_own_slow(arena, obj, drop, ctx);
}

void *pantry_arena_new(pantry_arena_t *arena, pantry_layout_t layout, pantry_drop_fn drop,
                       void *ctx) {
  struct pantry_arena_cache_ *cache = &pantry_arena_cache_;
  if (PN_LIKELY(cache->id_ == pn_arena_key(arena) && pn_arena_align_ok(layout.align) &&
                drop != NULL)) {
    if (pn_debug)
      arena_debug_check(arena, "pantry_arena_new");
    struct pantry_arena_bump_ *b = cache->serial_;
    uintptr_t p = pn_arena_align_up(b->ptr_, layout.align);
    uintptr_t end = b->end_ - sizeof(pn_arena_cleanup_t); /* closed: wraps, then end > b->end_ */
    if (PN_LIKELY(p <= end && end <= b->end_ && layout.size - 1 < end - p)) {
      b->ptr_ = p + layout.size;
      b->end_ = end;
      *(pn_arena_cleanup_t *)end = (pn_arena_cleanup_t){drop, (void *)p, ctx};
      return (void *)p;
    }
  }
  void *obj = arena_alloc_slow(arena, layout.size, layout.align, "pantry_arena_new");
  if (obj == NULL || drop == NULL)
    return obj;
  if (arena_own_slow(arena, obj, drop, ctx) != 0)
    return NULL; /* obj waits for the reset */
  return obj;
}

/* ------------------------------------------------------------------------ */
/* Strings                                                                  */
/* ------------------------------------------------------------------------ */

void *pantry_arena_memdup(pantry_arena_t *arena, const void *p, size_t size) {
  void *q = pantry_arena_alloc(arena, size, 16);
  if (q != NULL && size != 0)
    memcpy(q, p, size);
  return q;
}

char *pantry_arena_strndup(pantry_arena_t *arena, const char *s, size_t n) {
  size_t len = strnlen(s, n);
  char *q = pantry_arena_alloc(arena, len + 1, 1);
  if (q == NULL)
    return NULL;
  memcpy(q, s, len);
  q[len] = '\0';
  return q;
}

char *pantry_arena_strdup(pantry_arena_t *arena, const char *s) {
  return pantry_arena_strndup(arena, s, SIZE_MAX);
}

char *pantry_arena_asprintf(pantry_arena_t *arena, const char *fmt, ...) {
  char small[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0)
    return NULL; /* errno from vsnprintf */
  char *q = pantry_arena_alloc(arena, (size_t)n + 1, 1);
  if (q == NULL)
    return NULL;
  if ((size_t)n < sizeof small) {
    memcpy(q, small, (size_t)n + 1);
  } else {
    va_start(ap, fmt);
    vsnprintf(q, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  return q;
}

/* ------------------------------------------------------------------------ */
/* Creation and children                                                    */
/* ------------------------------------------------------------------------ */

pantry_arena_t *pantry_arena_create(const pantry_arena_config_t *config) {
  pantry_arena_config_t cfg = {0};
  if (config != NULL)
    cfg = *config;
  if (cfg.chunk_size > PN_ARENA_CHUNK_SIZE_MAX) {
    errno = EINVAL;
    return NULL;
  }
  size_t chunk_size = 0, initial = PN_ARENA_BLOCK_DEFAULT - PN_ARENA_HEADER_SIZE;
  if (cfg.chunk_size != 0) {
    chunk_size = cfg.chunk_size < PN_ARENA_CHUNK_MIN ? PN_ARENA_CHUNK_MIN : cfg.chunk_size;
    initial = chunk_size = (chunk_size + 15) & ~(size_t)15;
  }
  if (cfg.limit != 0 && initial > cfg.limit)
    initial = cfg.limit & ~(size_t)15;
  if (initial < sizeof(pn_arena_chunk_t) + 16)
    initial = 0;
  pn_arena_link_t *link = NULL;
  if (cfg.parent != NULL) {
    uintptr_t busy = pn_atomic_load_relaxed(&cfg.parent->xbusy);
    if (PN_UNLIKELY(busy != 0 && busy != pn_arena_token()))
      arena_race_fatal(cfg.parent, "pantry_arena_create");
    if ((link = pn_malloc_inline(sizeof *link)) == NULL) {
      errno = ENOMEM;
      return NULL;
    }
  }

  arena_thread_t *t = &arena_thread;
  size_t block_size = PN_ARENA_HEADER_SIZE + initial;
  pantry_arena_t *arena;
  if (block_size == PN_ARENA_BLOCK_DEFAULT && t->spare_block != NULL) {
    arena = t->spare_block;
    t->spare_block = NULL;
  } else if ((arena = pn_malloc_inline(block_size)) == NULL) {
    if (link != NULL)
      pn_arena_block_free(link, "pantry_arena_create");
    errno = ENOMEM;
    return NULL;
  }
  arena->block_size = block_size;
  if (PN_UNLIKELY(pn_leak_tracking))
    pn_leak_arena_created();
  /* Field by field: a memset of the whole header (rep stos) was 40% of create. */
  arena->head.id_ = pn_arena_id_take();
  arena->parent = cfg.parent;
  arena->link = NULL;
  arena->chunk_size = chunk_size;
  arena->limit = cfg.limit;
  size_t len = cfg.name != NULL ? strnlen(cfg.name, PN_ARENA_NAME_MAX - 1) : 0;
  memcpy(arena->name, cfg.name != NULL ? cfg.name : "", len);
  arena->name[len] = '\0';
  pn_atomic_store_relaxed(&arena->xserials, 0);
  pn_atomic_store_relaxed(&arena->xbusy, 0);
  pn_atomic_store_relaxed(&arena->xheld, cfg.limit != 0 ? initial : 0);
  pn_atomic_store_relaxed(&arena->xchildren, 0);
  pn_atomic_store_relaxed(&arena->xdead, 0);
  pn_atomic_store_relaxed(&arena->xcompact, 0);
  for (int i = 0; i < PN_ARENA_SPARES; i++)
    pn_atomic_store_relaxed(&arena->xspare[i], 0);
  arena->shared_spares = 0;
  pn_arena_serial_t *first = &arena->first;
  first->spare = first->detached = NULL;
  first->next = NULL;
  first->next_size = chunk_size != 0 ? chunk_size : PN_ARENA_CHUNK_FIRST;
  /* The creating thread owns the first serial arena (most arenas are used
   * where they are made): relaxed, the arena is not published yet. */
  pn_atomic_store_relaxed(&first->xowner, pn_arena_token());
  pn_arena_chunk_t *c = NULL;
  if (initial != 0) {
    c = (pn_arena_chunk_t *)((char *)arena + PN_ARENA_HEADER_SIZE);
    c->size = initial;
    c->next = NULL;
  }
  arena->initial = first->chunks = c;
  first->bump.ptr_ = c != NULL ? pn_arena_chunk_data(c) : 0;
  first->bump.end_ = c != NULL ? pn_arena_chunk_end(c) : 0;
  /* A chunk cached by a destroy on this thread becomes the current chunk
   * (the initial chunk waits as a spare): a request like the last one then
   * needs no chunk switch and no trip to the heap. */
  if (chunk_size == 0 && t->spare_chunk != NULL && arena_charge(arena, t->spare_chunk->size)) {
    first->spare = c;
    c = t->spare_chunk;
    t->spare_chunk = NULL;
    c->next = NULL;
    first->chunks = c;
    first->bump.ptr_ = pn_arena_chunk_data(c);
    first->bump.end_ = pn_arena_chunk_end(c);
  }
  if (link != NULL) {
    arena->link = link;
    pn_atomic_store_relaxed(&link->xchild, (uintptr_t)arena);
    /* Release: matches the acquire loads of xchildren in the parent's
     * reset, destroy and arena_links_compact (they read link->next). */
    uintptr_t head = pn_atomic_load_relaxed(&cfg.parent->xchildren);
    do {
      link->next = (pn_arena_link_t *)head;
    } while (!pn_atomic_cas_weak_release(&cfg.parent->xchildren, &head, (uintptr_t)link));
  }
  pantry_arena_cache_.id_ = pn_arena_key(arena);
  pantry_arena_cache_.serial_ = &arena->first.bump;
  return arena;
}

/* Unlink the parent's dead links and free them, unless another thread is
 * doing it (a try-lock: nobody waits for it). Pushers only CAS the head, so
 * interior links are unlinked with plain stores and the head with a CAS;
 * an unlinked link is reachable by nobody (pushers never walk the list). */
static void arena_links_compact(pantry_arena_t *parent) {
  uintptr_t unlocked = 0;
  /* Acquire: matches the release store that ended the previous compaction,
   * so its unlinks are seen. */
  if (!pn_atomic_cas_strong_acq_rel(&parent->xcompact, &unlocked, 1))
    return;
  /* Acquire: matches the release CAS of the pushes in pantry_arena_create. */
  pn_arena_link_t *head = (pn_arena_link_t *)pn_atomic_load_acquire(&parent->xchildren);
  uintptr_t removed = 0;
  for (pn_arena_link_t *prev = head; prev != NULL && prev->next != NULL;) {
    pn_arena_link_t *l = prev->next;
    /* Acquire: matches the release store of the child's destroy. */
    if (pn_atomic_load_acquire(&l->xchild) == 0) {
      prev->next = l->next;
      pn_arena_block_free(l, "pantry_arena_destroy");
      removed++;
    } else {
      prev = l;
    }
  }
  uintptr_t expected = (uintptr_t)head;
  if (head != NULL && pn_atomic_load_acquire(&head->xchild) == 0 &&
      pn_atomic_cas_strong_acq_rel(&parent->xchildren, &expected, (uintptr_t)head->next)) {
    pn_arena_block_free(head, "pantry_arena_destroy");
    removed++;
  }
  pn_atomic_fetch_sub_relaxed(&parent->xdead, removed);
  pn_atomic_store_release(&parent->xcompact, 0);
}

/* A child destroyed on its own: mark its link dead (the child never touches
 * the link again: a compaction may free it at once). */
void pn_arena_unlink(pantry_arena_t *arena) {
  pantry_arena_t *parent = arena->parent;
  pn_atomic_store_release(&arena->link->xchild, 0);
  if (pn_atomic_fetch_add_relaxed(&parent->xdead, 1) + 1 >= PN_ARENA_COMPACT_AT)
    arena_links_compact(parent);
}
