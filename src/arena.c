/* arena.c - arenas: serial arenas, chunks, cleanups, child arenas.
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
 * allocation and destroying a one-thread arena a few frees. The first thread
 * to allocate claims it (one CAS). Other threads' serial arenas live at the
 * start of their own first chunk and are CAS-pushed on `xserials`.
 *
 * Reset and destroy (exclusive: see include/pantry.h) work in rounds. A round
 * detaches every serial arena's chunks, leaving ptr == end == 0, so that any
 * allocation falls into the slow path (which diagnoses another thread racing
 * with the reset), then runs the detached cleanups, newest first per serial
 * arena. A drop that allocates or registers in the arena (on the resetting
 * thread) fills fresh chunks, which the next round detaches; rounds go on
 * until one finds nothing. Reset then keeps up to ARENA_KEEP bytes of chunks
 * as spares (the first serial arena's own chunks in its private list, the
 * other threads' chunks in `xspare` slots that any thread may take with one
 * exchange) and frees the rest.
 *
 * Shared state, and who touches it:
 *   arena->id              written by create and reset (exclusive); read by every fast path
 *   arena->xserials        CAS push (release) by a thread's first allocation; read (acquire)
 *   arena->first.xowner    claimed by CAS 0 -> token; reset stores 0
 *   arena->xspare[]        reset stores; any thread takes with an exchange (acquire)
 *   arena->xheld           chunk bytes charged against the limit (only when limit != 0)
 *   arena->xbusy           the token of the thread in reset/destroy, or 0
 *   arena->xchildren/xdead child links: CAS push; xchild cleared by the child's destroy;
 *   arena->xcompact        unlinking of dead links by whoever holds this try-lock
 *   everything in a serial arena but xowner: its owner thread (or reset/destroy)
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "pantry.h"

#define ARENA_ALIGN_MAX ((size_t)4096)
#define ARENA_BLOCK_DEFAULT ((size_t)1024)     /* create's one allocation, by default */
#define ARENA_CHUNK_FIRST ((size_t)8 * 1024)   /* default chunks start here ... */
#define ARENA_CHUNK_MAX ((size_t)64 * 1024)    /* ... and double up to here */
#define ARENA_CHUNK_MIN ((size_t)256)          /* a smaller chunk_size is raised to this */
#define ARENA_CHUNK_SIZE_MAX ((size_t)1 << 30) /* a larger chunk_size is EINVAL */
#define ARENA_KEEP ((size_t)256 * 1024)        /* reset keeps this much besides the initial chunk */
#define ARENA_SPARES 8                         /* xspare slots */
#define ARENA_COMPACT_AT 32                    /* dead child links before unlinking them */
#define ARENA_ROUNDS_MAX 100000                /* reset rounds before drops are called a loop */
#define ARENA_ID_BATCH 1024                    /* ids a thread takes from the counter at once */
#define ARENA_NAME_MAX 32
#define ARENA_SIZE_MAX ((size_t)PTRDIFF_MAX - 2 * ARENA_ALIGN_MAX)

/* A chunk: a block from the thread heap (or the initial chunk in the arena's
 * own allocation). Its bytes are [data, chunk + size): allocations grow up
 * from data, cleanups down from the end. While it is the current chunk of a
 * serial arena, the serial arena's ptr and end say where they are; `top`
 * and `cleanup` are written when it stops being current. */
typedef struct arena_chunk {
  struct arena_chunk *next; /* owner: the next older chunk (or the next spare) */
  size_t size;              /* immutable: bytes, this header included, a multiple of 16 */
  uintptr_t top;            /* owner: the bump pointer when it stopped being current */
  uintptr_t cleanup;        /* owner: its lowest cleanup then (its end when none) */
} arena_chunk_t;

typedef struct arena_cleanup {
  pantry_drop_fn drop;
  void *obj;
  void *ctx;
} arena_cleanup_t;

/* A serial arena: one thread's part of an arena.
 * Invariant: chunks == NULL <=> ptr == end == 0; otherwise
 *   data(chunks) <= ptr <= end <= end(chunks), (end(chunks) - end) % sizeof(cleanup) == 0.
 * Written by its owner thread, or by reset/destroy while nothing else runs. */
typedef struct arena_serial {
  uintptr_t ptr;            /* owner: the next free byte of the current chunk */
  uintptr_t end;            /* owner: the end of the free space: the lowest cleanup */
  arena_chunk_t *chunks;    /* owner: the current chunk, then older ones */
  arena_chunk_t *spare;     /* owner: chunks kept by reset (first serial arena only) */
  arena_chunk_t *detached;  /* reset/destroy: chunks taken out in this round */
  size_t next_size;         /* owner: bytes of the next chunk (grows) */
  pn_atomic_uintptr_t xowner; /* atomic: the owner's thread token; 0 = unclaimed (first only) */
  struct arena_serial *next;  /* immutable once pushed on xserials */
} arena_serial_t;

/* A child arena's entry in its parent's list. */
typedef struct arena_link {
  pn_atomic_uintptr_t xchild; /* atomic rel/acq: the child, 0 once the child is destroyed */
  struct arena_link *next;    /* the pusher before its CAS; then the xcompact holder or the
                               * parent's reset/destroy */
} arena_link_t;

struct pantry_arena {
  /* Read by every fast path, written only by create and reset. */
  uintptr_t id;
  pantry_arena_t *parent;  /* immutable */
  arena_link_t *link;      /* immutable: our entry in the parent's list */
  arena_chunk_t *initial;  /* immutable: the chunk in this allocation, or NULL */
  size_t chunk_size;       /* immutable: 0 = grow */
  size_t limit;            /* immutable: 0 = none */
  char name[ARENA_NAME_MAX]; /* immutable */
  /* At offset >= 64 (not on id's cache line): written by slow paths. */
  pn_atomic_uintptr_t xserials; /* atomic: serial arenas other than first, newest first */
  pn_atomic_uintptr_t xbusy;    /* atomic relaxed: token of the thread in reset/destroy */
  pn_atomic_uintptr_t xheld;    /* atomic relaxed: chunk bytes held (limit != 0 only) */
  pn_atomic_uintptr_t xchildren; /* atomic: child links, newest first */
  pn_atomic_uintptr_t xdead;    /* atomic relaxed: links whose child is destroyed */
  pn_atomic_uintptr_t xcompact; /* atomic acq/rel: 1 while a thread unlinks dead links */
  pn_atomic_uintptr_t xspare[ARENA_SPARES]; /* atomic: spare chunks kept by reset, or 0 */
  arena_serial_t first;
};

_Static_assert(sizeof(arena_chunk_t) % 16 == 0, "chunk data must stay 16-aligned");
_Static_assert(sizeof(pantry_arena_t) % 16 == 0, "the initial chunk must be 16-aligned");
_Static_assert(offsetof(pantry_arena_t, xserials) >= 64, "id shares a line with writers");
_Static_assert(offsetof(pantry_arena_t, first) >= 64, "id shares a line with the first ptr");
_Static_assert(sizeof(pantry_arena_t) < ARENA_BLOCK_DEFAULT / 2, "the header outgrew its block");

/* The thread-local cache: the serial arena of the last arena this thread
 * used, keyed by the arena's id (0 matches nothing). */
typedef struct arena_cache {
  uintptr_t id;
  arena_serial_t *serial;
} arena_cache_t;

static _Thread_local arena_cache_t arena_cache;
static _Thread_local uintptr_t arena_thread_token; /* 0 until first needed */
static _Thread_local uintptr_t arena_ids_next, arena_ids_end;
static pn_atomic_uintptr_t arena_xids; /* atomic relaxed: ids handed out in batches */

/* ------------------------------------------------------------------------ */
/* Ids, tokens, small helpers                                               */
/* ------------------------------------------------------------------------ */

/* A fresh id: never 0, never reused (64-bit counter). Relaxed: only the
 * uniqueness of the fetch_add matters. */
static uintptr_t arena_id_take(void) {
  if (PN_UNLIKELY(arena_ids_next == arena_ids_end)) {
    arena_ids_next = pn_atomic_fetch_add_relaxed(&arena_xids, ARENA_ID_BATCH) + 1;
    arena_ids_end = arena_ids_next + ARENA_ID_BATCH;
  }
  return arena_ids_next++;
}

/* This thread's token: an id, so unique among all threads that ever ran. */
static uintptr_t arena_token(void) {
  if (PN_UNLIKELY(arena_thread_token == 0)) arena_thread_token = arena_id_take();
  return arena_thread_token;
}

static inline bool arena_align_ok(size_t align) {
  return align - 1 < ARENA_ALIGN_MAX && (align & (align - 1)) == 0;
}

static inline uintptr_t arena_align_up(uintptr_t p, size_t align) {
  return (p + align - 1) & ~(uintptr_t)(align - 1);
}

static inline uintptr_t chunk_data(const arena_chunk_t *c) {
  return (uintptr_t)c + sizeof(arena_chunk_t);
}

static inline uintptr_t chunk_end(const arena_chunk_t *c) { return (uintptr_t)c + c->size; }

static void arena_chunk_free(pantry_arena_t *arena, arena_chunk_t *c) {
  if (c != arena->initial) pn_free_inline(c, "pantry_arena_destroy");
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
  if (PN_UNLIKELY(busy != 0) && busy != arena_token()) arena_race_fatal(arena, fn);
}

/* ------------------------------------------------------------------------ */
/* Chunks                                                                   */
/* ------------------------------------------------------------------------ */

/* Charge `size` bytes against the limit. Relaxed: a counter, it publishes
 * nothing. A CAS loop, not add-then-undo, so a failure is never spurious. */
static bool arena_charge(pantry_arena_t *arena, size_t size) {
  if (arena->limit == 0) return true;
  uintptr_t held = pn_atomic_load_relaxed(&arena->xheld);
  do {
    if (held > arena->limit || size > arena->limit - held) return false;
  } while (!pn_atomic_cas_strong_relaxed(&arena->xheld, &held, held + size));
  return true;
}

static void arena_uncharge(pantry_arena_t *arena, size_t size) {
  if (arena->limit != 0 && size != 0) pn_atomic_fetch_sub_relaxed(&arena->xheld, size);
}

/* A spare chunk of at least `min` bytes from the xspare slots, or NULL. */
static arena_chunk_t *arena_spare_take_shared(pantry_arena_t *arena, size_t min) {
  for (int i = 0; i < ARENA_SPARES; i++) {
    if (pn_atomic_load_relaxed(&arena->xspare[i]) == 0) continue;
    /* Acquire: matches the release store of reset that put the chunk there. */
    arena_chunk_t *c = (arena_chunk_t *)pn_atomic_exchange_acquire(&arena->xspare[i], 0);
    if (c == NULL) continue;
    if (c->size >= min) return c;
    uintptr_t empty = 0; /* too small: put it back, or free it if the slot was refilled */
    if (!pn_atomic_cas_strong_acq_rel(&arena->xspare[i], &empty, (uintptr_t)c)) {
      arena_uncharge(arena, c->size);
      pn_free_inline(c, "pantry_arena_alloc");
    }
  }
  return NULL;
}

/* A chunk of at least `min` bytes for serial arena `s`: a spare, or a new
 * block. With `grow`, a new block has the next growth size if that is more
 * (or just `min` when the growth size would pass the limit), and the growth
 * size doubles. NULL with errno ENOMEM. */
static arena_chunk_t *arena_chunk_take(pantry_arena_t *arena, arena_serial_t *s, size_t min,
                                       bool grow) {
  for (arena_chunk_t **pc = &s->spare; *pc != NULL; pc = &(*pc)->next) {
    if ((*pc)->size >= min) {
      arena_chunk_t *c = *pc;
      *pc = c->next;
      return c;
    }
  }
  arena_chunk_t *c = arena_spare_take_shared(arena, min);
  if (c != NULL) return c;
  size_t want = !grow ? 0 : arena->chunk_size != 0 ? arena->chunk_size : s->next_size;
  size_t size = min > want ? min : want;
  if (!arena_charge(arena, size) && (size == min || !arena_charge(arena, size = min))) {
    errno = ENOMEM;
    return NULL;
  }
  c = pn_malloc_inline(size);
  if (c == NULL) {
    arena_uncharge(arena, size);
    errno = ENOMEM;
    return NULL;
  }
  c->size = size;
  if (grow && arena->chunk_size == 0 && size >= s->next_size && s->next_size < ARENA_CHUNK_MAX)
    s->next_size *= 2;
  return c;
}

/* Make `c` the current chunk of `s`; the old current chunk records where
 * its allocations and cleanups stopped. */
static void arena_serial_push_chunk(arena_serial_t *s, arena_chunk_t *c, uintptr_t data) {
  if (s->chunks != NULL) {
    s->chunks->top = s->ptr;
    s->chunks->cleanup = s->end;
  }
  c->next = s->chunks;
  s->chunks = c;
  s->ptr = data;
  s->end = chunk_end(c);
}

/* ------------------------------------------------------------------------ */
/* Serial arenas                                                            */
/* ------------------------------------------------------------------------ */

/* A new serial arena for this thread, at the start of its first chunk. */
static arena_serial_t *arena_serial_create(pantry_arena_t *arena, uintptr_t token) {
  arena_serial_t tmp = {.next_size = ARENA_CHUNK_FIRST};
  size_t header = (sizeof(arena_serial_t) + 15) & ~(size_t)15;
  arena_chunk_t *c = arena_chunk_take(arena, &tmp, sizeof(arena_chunk_t) + header + 64, true);
  if (c == NULL) return NULL;
  arena_serial_t *s = (arena_serial_t *)chunk_data(c);
  *s = tmp;
  c->next = NULL;
  s->chunks = c;
  s->ptr = chunk_data(c) + header;
  s->end = chunk_end(c);
  pn_atomic_store_relaxed(&s->xowner, token);
  /* Release: matches the acquire loads of xserials in arena_serial_find and
   * reset, so they see the serial arena's fields. */
  uintptr_t head = pn_atomic_load_relaxed(&arena->xserials);
  do {
    s->next = (arena_serial_t *)head;
  } while (!pn_atomic_cas_weak_release(&arena->xserials, &head, (uintptr_t)s));
  return s;
}

/* This thread's serial arena in `arena` (found, claimed or created), and the
 * cache pointed at it. NULL with errno ENOMEM. Diagnoses a race with reset. */
static arena_serial_t *arena_serial_get(pantry_arena_t *arena, const char *fn) {
  uintptr_t token = arena_token();
  uintptr_t busy = pn_atomic_load_relaxed(&arena->xbusy);
  if (PN_UNLIKELY(busy != 0 && busy != token)) arena_race_fatal(arena, fn);
  if (arena_cache.id == arena->id) return arena_cache.serial;
  arena_serial_t *s = &arena->first;
  uintptr_t owner = pn_atomic_load_relaxed(&s->xowner);
  /* Relaxed claim: the CAS only picks one owner; the first serial arena's
   * fields were written by create or reset, which happen before any use. */
  if (owner != token &&
      !(owner == 0 && pn_atomic_cas_strong_relaxed(&s->xowner, &owner, token))) {
    /* Acquire: matches the release CAS in arena_serial_create. */
    s = (arena_serial_t *)pn_atomic_load_acquire(&arena->xserials);
    while (s != NULL && pn_atomic_load_relaxed(&s->xowner) != token) s = s->next;
    if (s == NULL && (s = arena_serial_create(arena, token)) == NULL) return NULL;
  }
  arena_cache.id = arena->id;
  arena_cache.serial = s;
  return s;
}

/* ------------------------------------------------------------------------ */
/* Allocation                                                               */
/* ------------------------------------------------------------------------ */

/* Allocate from a new chunk. A request larger than a quarter of the next
 * chunk gets a chunk of its own, put after the current one, so the space
 * left in the current chunk is not lost. */
static void *arena_alloc_chunk(pantry_arena_t *arena, arena_serial_t *s, size_t size,
                               size_t align) {
  size_t min = sizeof(arena_chunk_t) + ((size + (align > 16 ? align - 1 : 0) + 15) & ~(size_t)15);
  size_t next = arena->chunk_size != 0 ? arena->chunk_size : s->next_size;
  if (s->chunks != NULL && min > next / 4) {
    arena_chunk_t *c = arena_chunk_take(arena, s, min, false);
    if (c == NULL) return NULL;
    uintptr_t p = arena_align_up(chunk_data(c), align);
    c->top = p + size;
    c->cleanup = chunk_end(c);
    c->next = s->chunks->next;
    s->chunks->next = c;
    return (void *)p;
  }
  arena_chunk_t *c = arena_chunk_take(arena, s, min, true);
  if (c == NULL) return NULL;
  arena_serial_push_chunk(s, c, chunk_data(c));
  uintptr_t p = arena_align_up(s->ptr, align);
  s->ptr = p + size;
  return (void *)p;
}

PN_NOINLINE static void *arena_alloc_slow(pantry_arena_t *arena, size_t size, size_t align,
                                          const char *fn) {
  if (PN_UNLIKELY(!arena_align_ok(align))) {
    errno = EINVAL;
    return NULL;
  }
  if (PN_UNLIKELY(size > ARENA_SIZE_MAX)) {
    errno = ENOMEM;
    return NULL;
  }
  if (size == 0) size = 1; /* a unique pointer */
  arena_serial_t *s = arena_serial_get(arena, fn);
  if (s == NULL) return NULL;
  uintptr_t p = arena_align_up(s->ptr, align);
  if (s->chunks != NULL && p <= s->end && size <= s->end - p) {
    s->ptr = p + size;
    return (void *)p;
  }
  return arena_alloc_chunk(arena, s, size, align);
}

void *pantry_arena_alloc(pantry_arena_t *arena, size_t size, size_t align) {
  arena_cache_t *cache = &arena_cache;
  if (PN_LIKELY(cache->id == arena->id && arena_align_ok(align))) {
    if (pn_debug) arena_debug_check(arena, "pantry_arena_alloc");
    arena_serial_t *s = cache->serial;
    uintptr_t p = arena_align_up(s->ptr, align);
    uintptr_t end = s->end;
    /* size - 1 sends size 0 to the slow path; p > end only when closed or
     * when the alignment padding does not fit. */
    if (PN_LIKELY(p <= end && size - 1 < end - p)) {
      s->ptr = p + size;
      return (void *)p;
    }
  }
  return arena_alloc_slow(arena, size, align, "pantry_arena_alloc");
}

/* Room for one cleanup in `s`, taking a new chunk when needed. */
static arena_cleanup_t *arena_cleanup_slot(pantry_arena_t *arena, arena_serial_t *s) {
  if (s->chunks == NULL || s->end - s->ptr < sizeof(arena_cleanup_t)) {
    arena_chunk_t *c = arena_chunk_take(arena, s, sizeof(arena_chunk_t) + 64, true);
    if (c == NULL) return NULL;
    arena_serial_push_chunk(s, c, chunk_data(c));
  }
  s->end -= sizeof(arena_cleanup_t);
  return (arena_cleanup_t *)s->end;
}

PN_NOINLINE static int arena_own_slow(pantry_arena_t *arena, void *obj, pantry_drop_fn drop,
                                      void *ctx) {
  if (drop == NULL) {
    errno = EINVAL;
    return -1;
  }
  arena_serial_t *s = arena_serial_get(arena, "pantry_arena_own");
  arena_cleanup_t *cl = s != NULL ? arena_cleanup_slot(arena, s) : NULL;
  if (cl == NULL) return -1;
  *cl = (arena_cleanup_t){drop, obj, ctx};
  return 0;
}

int pantry_arena_own(pantry_arena_t *arena, void *obj, pantry_drop_fn drop, void *ctx) {
  arena_cache_t *cache = &arena_cache;
  if (PN_LIKELY(cache->id == arena->id && drop != NULL)) {
    if (pn_debug) arena_debug_check(arena, "pantry_arena_own");
    arena_serial_t *s = cache->serial;
    if (PN_LIKELY(s->end - s->ptr >= sizeof(arena_cleanup_t))) {
      s->end -= sizeof(arena_cleanup_t);
      *(arena_cleanup_t *)s->end = (arena_cleanup_t){drop, obj, ctx};
      return 0;
    }
  }
  return arena_own_slow(arena, obj, drop, ctx);
}

void *pantry_arena_new(pantry_arena_t *arena, pantry_layout_t layout, pantry_drop_fn drop,
                       void *ctx) {
  arena_cache_t *cache = &arena_cache;
  if (PN_LIKELY(cache->id == arena->id && arena_align_ok(layout.align) && drop != NULL)) {
    if (pn_debug) arena_debug_check(arena, "pantry_arena_new");
    arena_serial_t *s = cache->serial;
    uintptr_t p = arena_align_up(s->ptr, layout.align);
    uintptr_t end = s->end - sizeof(arena_cleanup_t); /* closed: wraps, then p > end fails */
    if (PN_LIKELY(p <= end && end <= s->end && layout.size - 1 < end - p)) {
      s->ptr = p + layout.size;
      s->end = end;
      *(arena_cleanup_t *)end = (arena_cleanup_t){drop, (void *)p, ctx};
      return (void *)p;
    }
  }
  void *obj = arena_alloc_slow(arena, layout.size, layout.align, "pantry_arena_new");
  if (obj == NULL || drop == NULL) return obj;
  if (arena_own_slow(arena, obj, drop, ctx) != 0) return NULL; /* obj waits for the reset */
  return obj;
}

/* ------------------------------------------------------------------------ */
/* Strings                                                                  */
/* ------------------------------------------------------------------------ */

void *pantry_arena_memdup(pantry_arena_t *arena, const void *p, size_t size) {
  void *q = pantry_arena_alloc(arena, size, 16);
  if (q != NULL && size != 0) memcpy(q, p, size);
  return q;
}

char *pantry_arena_strndup(pantry_arena_t *arena, const char *s, size_t n) {
  size_t len = strnlen(s, n);
  char *q = pantry_arena_alloc(arena, len + 1, 1);
  if (q == NULL) return NULL;
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
  if (n < 0) return NULL; /* errno from vsnprintf */
  char *q = pantry_arena_alloc(arena, (size_t)n + 1, 1);
  if (q == NULL) return NULL;
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
  if (config != NULL) cfg = *config;
  if (cfg.chunk_size > ARENA_CHUNK_SIZE_MAX) {
    errno = EINVAL;
    return NULL;
  }
  size_t chunk_size = 0, initial = ARENA_BLOCK_DEFAULT - sizeof(pantry_arena_t);
  if (cfg.chunk_size != 0) {
    chunk_size = cfg.chunk_size < ARENA_CHUNK_MIN ? ARENA_CHUNK_MIN : cfg.chunk_size;
    initial = chunk_size = (chunk_size + 15) & ~(size_t)15;
  }
  if (cfg.limit != 0 && initial > cfg.limit) initial = cfg.limit & ~(size_t)15;
  if (initial < sizeof(arena_chunk_t) + 16) initial = 0;
  if (cfg.parent != NULL) {
    uintptr_t busy = pn_atomic_load_relaxed(&cfg.parent->xbusy);
    if (PN_UNLIKELY(busy != 0 && busy != arena_token()))
      arena_race_fatal(cfg.parent, "pantry_arena_create");
  }

  pantry_arena_t *arena = pn_malloc_inline(sizeof(pantry_arena_t) + initial);
  if (arena == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  memset(arena, 0, sizeof *arena);
  arena->id = arena_id_take();
  arena->parent = cfg.parent;
  arena->chunk_size = chunk_size;
  arena->limit = cfg.limit;
  if (cfg.name != NULL) {
    size_t len = strnlen(cfg.name, ARENA_NAME_MAX - 1);
    memcpy(arena->name, cfg.name, len);
  }
  arena->first.next_size = chunk_size != 0 ? chunk_size : ARENA_CHUNK_FIRST;
  if (initial != 0) {
    arena_chunk_t *c = (arena_chunk_t *)(arena + 1);
    c->size = initial;
    c->next = NULL;
    arena->initial = c;
    arena->first.chunks = c;
    arena->first.ptr = chunk_data(c);
    arena->first.end = chunk_end(c);
    if (cfg.limit != 0) pn_atomic_store_relaxed(&arena->xheld, initial);
  }
  if (cfg.parent != NULL) {
    arena_link_t *link = pn_malloc_inline(sizeof *link);
    if (link == NULL) {
      pn_free_inline(arena, "pantry_arena_create");
      errno = ENOMEM;
      return NULL;
    }
    arena->link = link;
    pn_atomic_store_relaxed(&link->xchild, (uintptr_t)arena);
    /* Release: matches the acquire loads of xchildren in the parent's
     * reset, destroy and arena_links_compact (they read link->next). */
    uintptr_t head = pn_atomic_load_relaxed(&cfg.parent->xchildren);
    do {
      link->next = (arena_link_t *)head;
    } while (!pn_atomic_cas_weak_release(&cfg.parent->xchildren, &head, (uintptr_t)link));
  }
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
  if (!pn_atomic_cas_strong_acq_rel(&parent->xcompact, &unlocked, 1)) return;
  /* Acquire: matches the release CAS of the pushes in pantry_arena_create. */
  arena_link_t *head = (arena_link_t *)pn_atomic_load_acquire(&parent->xchildren);
  uintptr_t removed = 0;
  for (arena_link_t *prev = head; prev != NULL && prev->next != NULL;) {
    arena_link_t *l = prev->next;
    /* Acquire: matches the release store of the child's destroy. */
    if (pn_atomic_load_acquire(&l->xchild) == 0) {
      prev->next = l->next;
      pn_free_inline(l, "pantry_arena_destroy");
      removed++;
    } else {
      prev = l;
    }
  }
  uintptr_t expected = (uintptr_t)head;
  if (head != NULL && pn_atomic_load_acquire(&head->xchild) == 0 &&
      pn_atomic_cas_strong_acq_rel(&parent->xchildren, &expected, (uintptr_t)head->next)) {
    pn_free_inline(head, "pantry_arena_destroy");
    removed++;
  }
  pn_atomic_fetch_sub_relaxed(&parent->xdead, removed);
  pn_atomic_store_release(&parent->xcompact, 0);
}

/* A child destroyed on its own: mark its link dead (the child never touches
 * the link again: a compaction may free it at once). */
static void arena_unlink(pantry_arena_t *arena) {
  pantry_arena_t *parent = arena->parent;
  pn_atomic_store_release(&arena->link->xchild, 0);
  if (pn_atomic_fetch_add_relaxed(&parent->xdead, 1) + 1 >= ARENA_COMPACT_AT)
    arena_links_compact(parent);
}

/* ------------------------------------------------------------------------ */
/* Reset and destroy                                                        */
/* ------------------------------------------------------------------------ */

/* Mark the arena busy (diagnosing a reset or destroy already running). The
 * CAS of debug builds also catches two threads entering at once; release
 * builds catch re-entry from a drop with a plain load and store. */
static void arena_busy_enter(pantry_arena_t *arena, const char *fn) {
  uintptr_t token = arena_token(), idle = 0;
  bool ok;
  if (pn_debug) {
    ok = pn_atomic_cas_strong_acq_rel(&arena->xbusy, &idle, token);
  } else {
    ok = pn_atomic_load_relaxed(&arena->xbusy) == 0;
    pn_atomic_store_relaxed(&arena->xbusy, token);
  }
  if (PN_UNLIKELY(!ok))
    pn_fatal("%s(arena '%s' %p): the arena is already being reset or destroyed (from one of "
             "its own drops, or by another thread at the same time)",
             fn, arena->name, (void *)arena);
}

/* Take the chunks out of `s`, leaving it closed (ptr == end == 0). */
static bool arena_serial_detach(arena_serial_t *s) {
  if (s->chunks == NULL) return false;
  s->chunks->top = s->ptr;
  s->chunks->cleanup = s->end;
  s->detached = s->chunks;
  s->chunks = NULL;
  s->ptr = s->end = 0;
  return true;
}

/* Run the detached cleanups of `s`, newest first, and move its detached
 * chunks to `*dead` (not freed yet: a serial arena lives in one of them). */
static void arena_serial_run(arena_serial_t *s, arena_chunk_t **dead) {
  arena_chunk_t *c = s->detached;
  s->detached = NULL;
  while (c != NULL) {
    arena_chunk_t *next = c->next;
    for (uintptr_t e = c->cleanup; e < chunk_end(c); e += sizeof(arena_cleanup_t)) {
      arena_cleanup_t *cl = (arena_cleanup_t *)e;
      cl->drop(cl->obj, cl->ctx);
    }
    c->next = *dead;
    *dead = c;
    c = next;
  }
}

/* One round: detach every serial arena, then run the cleanups. Returns
 * whether anything was detached. */
static bool arena_round(pantry_arena_t *arena, arena_chunk_t **dead_first,
                        arena_chunk_t **dead_other) {
  /* Acquire: matches the release CAS in arena_serial_create. */
  arena_serial_t *others = (arena_serial_t *)pn_atomic_load_acquire(&arena->xserials);
  bool any = arena_serial_detach(&arena->first);
  for (arena_serial_t *s = others; s != NULL; s = s->next) any |= arena_serial_detach(s);
  if (!any) return false;
  arena_serial_run(&arena->first, dead_first);
  for (arena_serial_t *s = others; s != NULL; s = s->next) arena_serial_run(s, dead_other);
  return true;
}

static void arena_destroy_internal(pantry_arena_t *arena, bool by_parent);

/* Destroy every child (those that drops create too). Returns whether any. */
static bool arena_children_destroy(pantry_arena_t *arena) {
  /* Acquire: matches the release CAS of the pushes in pantry_arena_create. */
  arena_link_t *l = (arena_link_t *)pn_atomic_exchange_acquire(&arena->xchildren, 0);
  bool any = l != NULL;
  while (l != NULL) {
    arena_link_t *next = l->next;
    pantry_arena_t *child = (pantry_arena_t *)pn_atomic_load_acquire(&l->xchild);
    if (child != NULL) arena_destroy_internal(child, true);
    pn_free_inline(l, "pantry_arena_destroy");
    l = next;
  }
  pn_atomic_store_relaxed(&arena->xdead, 0);
  return any;
}

/* Reset every live child and free the dead links (nothing else runs). */
static void arena_children_reset(pantry_arena_t *arena) {
  arena_link_t *l = (arena_link_t *)pn_atomic_load_acquire(&arena->xchildren);
  arena_link_t *keep = NULL, **tail = &keep;
  while (l != NULL) {
    arena_link_t *next = l->next;
    pantry_arena_t *child = (pantry_arena_t *)pn_atomic_load_acquire(&l->xchild);
    if (child != NULL) {
      pantry_arena_reset(child);
      *tail = l;
      tail = &l->next;
    } else {
      pn_free_inline(l, "pantry_arena_reset");
    }
    l = next;
  }
  *tail = NULL;
  pn_atomic_store_relaxed(&arena->xchildren, (uintptr_t)keep);
  pn_atomic_store_relaxed(&arena->xdead, 0);
}

static void arena_rounds(pantry_arena_t *arena, bool destroy, arena_chunk_t **dead_first,
                         arena_chunk_t **dead_other) {
  for (unsigned round = 0;; round++) {
    bool any = destroy && arena_children_destroy(arena);
    any |= arena_round(arena, dead_first, dead_other);
    if (!any) return;
    if (round == ARENA_ROUNDS_MAX)
      pn_fatal("%s(arena '%s' %p): drops kept registering new drops for %u rounds",
               destroy ? "pantry_arena_destroy" : "pantry_arena_reset", arena->name,
               (void *)arena, round);
  }
}

static void arena_destroy_internal(pantry_arena_t *arena, bool by_parent) {
  arena_busy_enter(arena, "pantry_arena_destroy");
  arena_chunk_t *dead_first = NULL, *dead_other = NULL;
  arena_rounds(arena, true, &dead_first, &dead_other);
  arena_chunk_t *lists[3] = {dead_first, dead_other, arena->first.spare};
  for (int i = 0; i < 3; i++) {
    for (arena_chunk_t *c = lists[i], *next; c != NULL; c = next) {
      next = c->next;
      arena_chunk_free(arena, c);
    }
  }
  for (int i = 0; i < ARENA_SPARES; i++) {
    arena_chunk_t *c = (arena_chunk_t *)pn_atomic_load_relaxed(&arena->xspare[i]);
    if (c != NULL) pn_free_inline(c, "pantry_arena_destroy");
  }
  if (arena->parent != NULL && !by_parent) arena_unlink(arena);
  pn_free_inline(arena, "pantry_arena_destroy");
}

void pantry_arena_destroy(pantry_arena_t *arena) {
  if (arena != NULL) arena_destroy_internal(arena, false);
}

/* Keep chunks for reuse, up to ARENA_KEEP bytes: the first serial arena's
 * in its private list (spares it did not use first), the other threads' in
 * the xspare slots; free the rest. */
static void arena_keep(pantry_arena_t *arena, arena_chunk_t *dead_first,
                       arena_chunk_t *dead_other) {
  size_t budget = ARENA_KEEP, freed = 0;
  arena_chunk_t *keep = NULL, **tail = &keep;
  arena_chunk_t *lists[2] = {arena->first.spare, dead_first};
  for (int i = 0; i < 2; i++) {
    for (arena_chunk_t *c = lists[i], *next; c != NULL; c = next) {
      next = c->next;
      if (c == arena->initial) continue;
      if (c->size <= budget) {
        budget -= c->size;
        *tail = c;
        tail = &c->next;
      } else {
        freed += c->size;
        pn_free_inline(c, "pantry_arena_reset");
      }
    }
  }
  *tail = NULL;
  arena->first.spare = keep;

  arena_chunk_t *shared = dead_other;
  for (int i = 0; i < ARENA_SPARES; i++) {
    arena_chunk_t *c = (arena_chunk_t *)pn_atomic_load_relaxed(&arena->xspare[i]);
    if (c != NULL) {
      c->next = shared;
      shared = c;
    }
  }
  int slot = 0;
  for (arena_chunk_t *c = shared, *next; c != NULL; c = next) {
    next = c->next;
    if (slot < ARENA_SPARES && c->size <= budget) {
      budget -= c->size;
      c->next = NULL;
      /* Release: matches the acquire exchange in arena_spare_take_shared. */
      pn_atomic_store_release(&arena->xspare[slot++], (uintptr_t)c);
    } else {
      freed += c->size;
      pn_free_inline(c, "pantry_arena_reset");
    }
  }
  for (; slot < ARENA_SPARES; slot++) pn_atomic_store_relaxed(&arena->xspare[slot], 0);
  arena_uncharge(arena, freed);
}

void pantry_arena_reset(pantry_arena_t *arena) {
  if (arena == NULL) return;
  arena_busy_enter(arena, "pantry_arena_reset");
  arena_children_reset(arena);
  arena_chunk_t *dead_first = NULL, *dead_other = NULL;
  arena_rounds(arena, false, &dead_first, &dead_other);
  arena_keep(arena, dead_first, dead_other);

  arena_serial_t *first = &arena->first;
  arena_chunk_t *c = arena->initial;
  if (c != NULL) {
    c->next = NULL;
    first->chunks = c;
    first->ptr = chunk_data(c);
    first->end = chunk_end(c);
  }
  /* Other threads' serial arenas lived in the chunks just kept or freed:
   * forget them and take a new id, so every thread's cache is stale. With
   * none, the id and the first serial arena's owner stay valid. */
  if (pn_atomic_load_relaxed(&arena->xserials) != 0) {
    pn_atomic_store_relaxed(&arena->xserials, 0);
    pn_atomic_store_relaxed(&first->xowner, 0);
    arena->id = arena_id_take();
  }
  pn_atomic_store_release(&arena->xbusy, 0);
}

/* ------------------------------------------------------------------------ */
/* Statistics                                                               */
/* ------------------------------------------------------------------------ */

static void arena_stats_serial(const arena_serial_t *s, pantry_arena_stats_t *st) {
  for (const arena_chunk_t *c = s->chunks; c != NULL; c = c->next) {
    uintptr_t top = c == s->chunks ? s->ptr : c->top;
    uintptr_t cleanup = c == s->chunks ? s->end : c->cleanup;
    st->bytes_held += c->size;
    st->chunks++;
    st->bytes_used += (top - chunk_data(c)) + (chunk_end(c) - cleanup);
    st->owned += (chunk_end(c) - cleanup) / sizeof(arena_cleanup_t);
  }
  for (const arena_chunk_t *c = s->spare; c != NULL; c = c->next) {
    st->bytes_held += c->size;
    st->chunks++;
  }
}

void pantry_arena_stats(const pantry_arena_t *arena, pantry_arena_stats_t *stats) {
  pantry_arena_t *a = (pantry_arena_t *)arena; /* the atomics take non-const pointers */
  pantry_arena_stats_t st = {0};
  arena_stats_serial(&a->first, &st);
  st.serial_arenas = pn_atomic_load_relaxed(&a->first.xowner) != 0;
  for (arena_serial_t *s = (arena_serial_t *)pn_atomic_load_acquire(&a->xserials); s != NULL;
       s = s->next) {
    arena_stats_serial(s, &st);
    st.serial_arenas++;
  }
  for (int i = 0; i < ARENA_SPARES; i++) {
    arena_chunk_t *c = (arena_chunk_t *)pn_atomic_load_acquire(&a->xspare[i]);
    if (c != NULL) {
      st.bytes_held += c->size;
      st.chunks++;
    }
  }
  for (arena_link_t *l = (arena_link_t *)pn_atomic_load_acquire(&a->xchildren); l != NULL;
       l = l->next)
    st.children += pn_atomic_load_acquire(&l->xchild) != 0;
  *stats = st;
}

const char *pantry_arena_name(const pantry_arena_t *arena) { return arena->name; }
