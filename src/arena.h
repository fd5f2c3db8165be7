/* arena.h - the types and invariants shared by arena.c (allocation, serial
 * arenas, chunks, creation, child links, the thread caches) and
 * arena_reset.c (reset, destroy, statistics). Nothing outside these two
 * files includes it.
 *
 * Layer: the top layer, beside alloc.c; below it only the thread heap
 * (alloc.h). The inline fast paths of include/pantry.h read the heads of
 * these structs (struct pantry_arena_head_, _bump_, _cleanup_, _cache_).
 */
#ifndef PN_ARENA_H
#define PN_ARENA_H

#include "alloc.h"
#define PANTRY_ARENA_NO_INLINE 1 /* these files define the functions the macros wrap */
#include "pantry.h"

#define PN_ARENA_ALIGN_MAX ((size_t)4096)
#define PN_ARENA_BLOCK_DEFAULT ((size_t)1024)     /* create's one allocation, by default */
#define PN_ARENA_CHUNK_FIRST ((size_t)16 * 1024)  /* default chunks start here ... */
#define PN_ARENA_CHUNK_MAX ((size_t)64 * 1024)    /* ... and double up to here */
#define PN_ARENA_CHUNK_MIN ((size_t)256)          /* a smaller chunk_size is raised to this */
#define PN_ARENA_CHUNK_SIZE_MAX ((size_t)1 << 30) /* a larger chunk_size is EINVAL */
#define PN_ARENA_KEEP ((size_t)256 * 1024) /* reset keeps this much besides the initial chunk */
#define PN_ARENA_SPARES 8                  /* xspare slots */
#define PN_ARENA_COMPACT_AT 32             /* dead child links before unlinking them */
#define PN_ARENA_ROUNDS_MAX 100000         /* reset rounds before drops are called a loop */
#define PN_ARENA_ID_BATCH 1024             /* ids a thread takes from the counter at once */
#define PN_ARENA_NAME_MAX 32
#define PN_ARENA_SIZE_MAX ((size_t)PTRDIFF_MAX - 2 * PN_ARENA_ALIGN_MAX)

/* A chunk: a block from the thread heap (or the initial chunk in the arena's
 * own allocation). Its bytes are [data, chunk + size): allocations grow up
 * from data, cleanups down from the end. While it is the current chunk of a
 * serial arena, the serial arena's ptr and end say where they are; `top`
 * and `cleanup` are written when it stops being current. */
typedef struct pn_arena_chunk {
  struct pn_arena_chunk *next; /* owner: the next older chunk (or the next spare) */
  size_t size;                 /* immutable: bytes, this header included, a multiple of 16 */
  uintptr_t top;               /* owner: the bump pointer when it stopped being current */
  uintptr_t cleanup;           /* owner: its lowest cleanup then (its end when none) */
} pn_arena_chunk_t;

/* A cleanup: {drop, obj, ctx}, laid out as include/pantry.h's inline fast
 * paths write it. */
typedef struct pantry_arena_cleanup_ pn_arena_cleanup_t;

/* A serial arena: one thread's part of an arena.
 * Invariant (ptr, end: bump.ptr_, bump.end_): chunks == NULL <=> ptr == end == 0;
 * otherwise data(chunks) <= ptr <= end <= end(chunks) and
 * (end(chunks) - end) % sizeof(cleanup) == 0.
 * Written by its owner thread, or by reset/destroy while nothing else runs. */
typedef struct pn_arena_serial {
  /* owner: bump.ptr_ is the next free byte of the current chunk, bump.end_
   * the end of the free space (the lowest cleanup). First, where the inline
   * fast paths of include/pantry.h find them through the cache. */
  struct pantry_arena_bump_ bump;
  pn_arena_chunk_t *chunks;     /* owner: the current chunk, then older ones */
  pn_arena_chunk_t *spare;      /* owner: chunks kept by reset (first serial arena only) */
  pn_arena_chunk_t *detached;   /* reset/destroy: chunks taken out in this round */
  size_t next_size;             /* owner: bytes of the next chunk (grows) */
  pn_atomic_uintptr_t xowner;   /* atomic: the owner's thread token; 0 = unclaimed (first only) */
  struct pn_arena_serial *next; /* immutable once pushed on xserials */
} pn_arena_serial_t;

/* A child arena's entry in its parent's list. */
typedef struct pn_arena_link {
  pn_atomic_uintptr_t xchild; /* atomic rel/acq: the child, 0 once the child is destroyed */
  struct pn_arena_link *next; /* the pusher before its CAS; then the xcompact holder or the
                               * parent's reset/destroy */
} pn_arena_link_t;

struct pantry_arena {
  /* head.id_: read by every fast path (include/pantry.h's too), written only
   * by create and reset. */
  struct pantry_arena_head_ head;
  pantry_arena_t *parent;       /* immutable */
  pn_arena_link_t *link;        /* immutable: our entry in the parent's list */
  pn_arena_chunk_t *initial;    /* immutable: the chunk in this allocation, or NULL */
  size_t chunk_size;            /* immutable: 0 = grow */
  size_t block_size;            /* immutable: bytes of this allocation (header + initial chunk) */
  size_t limit;                 /* immutable: 0 = none */
  char name[PN_ARENA_NAME_MAX]; /* immutable */
  /* At offset >= 64 (not on id's cache line): written by slow paths. */
  pn_atomic_uintptr_t xserials;  /* atomic: serial arenas other than first, newest first */
  pn_atomic_uintptr_t xbusy;     /* atomic relaxed: token of the thread in reset/destroy */
  pn_atomic_uintptr_t xheld;     /* atomic relaxed: chunk bytes held (limit != 0 only) */
  pn_atomic_uintptr_t xchildren; /* atomic: child links, newest first */
  pn_atomic_uintptr_t xdead;     /* atomic relaxed: links whose child is destroyed */
  pn_atomic_uintptr_t xcompact;  /* atomic acq/rel: 1 while a thread unlinks dead links */
  pn_atomic_uintptr_t xspare[PN_ARENA_SPARES]; /* atomic: spare chunks kept by reset, or 0 */
  unsigned shared_spares; /* reset/destroy: xspare slots the last reset filled */
  pn_arena_serial_t first;
};

_Static_assert(sizeof(size_t) == sizeof(uintptr_t), "the header keeps addresses in size_t");
_Static_assert(offsetof(pn_arena_serial_t, bump) == 0, "the cache points at the serial arena");
_Static_assert(sizeof(pn_arena_chunk_t) % 16 == 0, "chunk data must stay 16-aligned");
/* The initial chunk follows the header, 16-aligned. */
#define PN_ARENA_HEADER_SIZE ((sizeof(pantry_arena_t) + 15) & ~(size_t)15)
_Static_assert(offsetof(pantry_arena_t, xserials) >= 64, "id shares a line with writers");
_Static_assert(offsetof(pantry_arena_t, first) >= 64, "id shares a line with the first ptr");
_Static_assert(PN_ARENA_HEADER_SIZE < PN_ARENA_BLOCK_DEFAULT / 2, "the header outgrew its block");

#define PN_ARENA_KEY_DEBUG ((size_t)1 << (sizeof(size_t) * 8 - 1))

static inline size_t pn_arena_key(const pantry_arena_t *arena) {
  return arena->head.id_ | (pn_debug ? PN_ARENA_KEY_DEBUG : 0);
}

static inline bool pn_arena_align_ok(size_t align) {
  return align - 1 < PN_ARENA_ALIGN_MAX && (align & (align - 1)) == 0;
}

static inline uintptr_t pn_arena_align_up(uintptr_t p, size_t align) {
  return (p + align - 1) & ~(uintptr_t)(align - 1);
}

static inline uintptr_t pn_arena_chunk_data(const pn_arena_chunk_t *c) {
  return (uintptr_t)c + sizeof(pn_arena_chunk_t);
}

static inline uintptr_t pn_arena_chunk_end(const pn_arena_chunk_t *c) {
  return (uintptr_t)c + c->size;
}

/* ------------------------------------------------------------------------ */
/* arena.c: shared with arena_reset.c                                       */
/* ------------------------------------------------------------------------ */

uintptr_t pn_arena_token(void) PN_HIDDEN;
uintptr_t pn_arena_id_take(void) PN_HIDDEN;
void pn_arena_block_free(void *p, const char *fn) PN_HIDDEN PN_NOINLINE;
void pn_arena_uncharge(pantry_arena_t *arena, size_t size) PN_HIDDEN;
void pn_arena_unlink(pantry_arena_t *arena) PN_HIDDEN;
void pn_arena_thread_keep(pantry_arena_t *arena, pn_arena_chunk_t *dead) PN_HIDDEN;

static inline void pn_arena_chunk_free(pantry_arena_t *arena, pn_arena_chunk_t *c) {
  if (c != arena->initial)
    pn_arena_block_free(c, "pantry_arena_destroy");
}

#endif /* PN_ARENA_H */
