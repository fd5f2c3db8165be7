/* pantry.h - the whole public API of pantry, a lock-free concurrent allocator,
 * object pool and arena library for multi-threaded Linux servers.
 *
 * C11 and C++ compatible: no _Atomic types, everything inside extern "C".
 *
 * Threads: unless a function says otherwise, every function here may be
 * called from any thread at any time, concurrently with any other. No
 * allocation or free path takes a mutex or a spin lock; a thread stopped
 * anywhere inside pantry never stops another thread's progress.
 *
 * Errors: functions that return a pointer return NULL and set errno (ENOMEM
 * when memory or an address range runs out, EINVAL for an argument that can
 * never be satisfied, such as an alignment that is not a power of two).
 * Misuse that C cannot report through a return value (a double free, a free
 * of a pointer pantry never handed out, a free with the wrong layout) is
 * diagnosed: pantry prints one line naming the function, the pointer and the
 * mistake to stderr, then calls abort(). It never corrupts memory silently.
 */
#ifndef PANTRY_H
#define PANTRY_H

#include <stddef.h>
#include <stdio.h> /* FILE, for pantry_stats_print */
#ifndef __cplusplus
#include <stdbool.h> /* bool, for pantry_collect */
#endif

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && !defined(PANTRY_STATIC_DEFINE)
#define PANTRY_API __attribute__((visibility("default")))
#else
#define PANTRY_API
#endif

#if defined(__GNUC__)
#define PANTRY_MALLOC_ATTR __attribute__((malloc, warn_unused_result))
#else
#define PANTRY_MALLOC_ATTR
#endif

/** The version of this header: major * 10000 + minor * 100 + patch. */
#define PANTRY_VERSION 100

/* ------------------------------------------------------------------------ */
/* The malloc-compatible API                                                */
/* ------------------------------------------------------------------------ */

/** Allocate `size` bytes, aligned to 16 bytes (alignof(max_align_t)).
 *
 * Sizes up to 512 KiB come from the calling thread's heap: the fast path pops
 * the free list of a page of the right size class, with no lock and no atomic
 * read-modify-write (mimalloc's free-list sharding). Larger blocks are mapped
 * on their own. Size classes waste at most 12.5% for sizes above 64 bytes.
 *
 * `size == 0` returns a unique pointer that may be passed to pantry_free.
 * Returns NULL with errno ENOMEM when no memory is left (or `size` exceeds
 * PTRDIFF_MAX). The memory is not initialised.
 * Thread-safe; lock-free. */
PANTRY_API PANTRY_MALLOC_ATTR void *pantry_malloc(size_t size);

/** Allocate an array of `count` elements of `size` bytes each, zeroed.
 *
 * Returns NULL with errno ENOMEM when `count * size` overflows size_t or no
 * memory is left. `count * size == 0` returns a unique freeable pointer.
 * Thread-safe; lock-free. */
PANTRY_API PANTRY_MALLOC_ATTR void *pantry_calloc(size_t count, size_t size);

/** Resize the block `p` to `size` bytes, keeping its contents up to the
 * smaller of the old and new sizes.
 *
 * `p == NULL` behaves as pantry_malloc(size). `size == 0` frees `p` and returns
 * a unique pointer of size 0 (like pantry_malloc(0)), so the result is never
 * NULL on success. The block stays in place when `size` fits its size class
 * and would not waste more than half of it; otherwise it moves.
 * On failure returns NULL with errno ENOMEM and leaves `p` untouched.
 * Diagnoses (and aborts on) a `p` pantry never handed out or already freed.
 * Thread-safe: `p` may have been allocated by any thread. */
PANTRY_API void *pantry_realloc(void *p, size_t size);

/** Allocate `size` bytes aligned to `align` bytes.
 *
 * `align` must be a power of two; any value up to 2 MiB is honoured
 * (up to 16 costs nothing extra). Unlike C11's aligned_alloc, `size` need not
 * be a multiple of `align`. Returns NULL with errno EINVAL when `align` is not
 * a power of two, ENOMEM when `align` exceeds 2 MiB or memory runs out.
 * The block is freed with pantry_free. Thread-safe; lock-free. */
PANTRY_API PANTRY_MALLOC_ATTR void *pantry_aligned_alloc(size_t align, size_t size);

/** Free a block from pantry_malloc, _calloc, _realloc, _aligned_alloc or
 * pantry_alloc. `p == NULL` does nothing.
 *
 * A free by the thread that allocated the block pushes it on its page's local
 * free list (no atomics). A free by any other thread is one compare-and-swap
 * onto the page's thread-free list, which the owner collects with one
 * exchange; a block whose owner thread has exited goes back through the
 * depot, which hands the segment to another thread.
 *
 * Diagnoses and aborts on: a pointer inside no pantry segment (stack, static,
 * another allocator's), a pointer into a page that holds no blocks (freed
 * twice, or never allocated), and, for blocks that were not allocated with
 * an alignment above 16, a pointer into the middle of a block. Full
 * double-free detection is done in debug builds (PANTRY_DEBUG).
 * Thread-safe; lock-free. */
PANTRY_API void pantry_free(void *p);

/** Free `p`, stating its size: `size` must be the size passed when `p` was
 * allocated (or any size that maps to the same size class).
 *
 * Diagnoses and aborts when `size` does not belong to the block's size class,
 * which catches a free with the wrong size (C++ sized delete and Rust's
 * dealloc call this undefined behaviour). Otherwise as pantry_free. */
PANTRY_API void pantry_free_sized(void *p, size_t size);

/** The number of bytes usable in the block `p` (at least what was asked for).
 * Returns 0 for NULL. Diagnoses a pointer pantry never handed out. */
PANTRY_API size_t pantry_usable_size(const void *p);

/* ------------------------------------------------------------------------ */
/* The layout API (Rust's std::alloc::Layout)                               */
/* ------------------------------------------------------------------------ */

/** A size in bytes and an alignment (a power of two) describing a block. */
typedef struct pantry_layout {
  size_t size;
  size_t align;
} pantry_layout_t;

#ifdef __cplusplus
#define PANTRY_LAYOUT_OF(T) (pantry_layout_t{sizeof(T), alignof(T)})
#else
/** The layout of a type: PANTRY_LAYOUT_OF(struct conn). */
#define PANTRY_LAYOUT_OF(T) ((pantry_layout_t){sizeof(T), _Alignof(T)})
#endif

/** Allocate a block for `layout`.
 *
 * `layout.align` must be a power of two (EINVAL otherwise); alignments up to
 * 2 MiB are honoured (ENOMEM above). `layout.size == 0` returns a unique
 * pointer. Free it with pantry_dealloc and the same layout (or pantry_free).
 * Returns NULL with errno ENOMEM when memory runs out. Thread-safe. */
PANTRY_API PANTRY_MALLOC_ATTR void *pantry_alloc(pantry_layout_t layout);

/** Free a block allocated with pantry_alloc(layout).
 *
 * Diagnoses and aborts when `layout` cannot be the layout the block was
 * allocated with: a size of another size class, or an alignment the block's
 * address does not have. Otherwise as pantry_free. */
PANTRY_API void pantry_dealloc(void *p, pantry_layout_t layout);

/* ------------------------------------------------------------------------ */
/* Pools                                                                    */
/* ------------------------------------------------------------------------ */

/* A pool makes and discards many objects of one layout (connections,
 * requests, tree nodes), like the kernel's kmem_cache: it knows how to set an
 * object up (`init`) and how to release what it owns (`drop`, C's
 * Drop::drop). Its objects live in pages that belong to the pool only, so
 * pantry_pool_destroy finds every live object, drops it, and returns every
 * page at once, with no per-object work when there is no drop.
 *
 * Each thread allocates from its own part of the pool, found through a
 * thread-local table keyed by the pool's id (never reused, so a new pool at
 * the address of a destroyed one never sees its state): a magazine of free
 * objects in front of the thread's own pages. pantry_pool_alloc pops it,
 * pantry_pool_free pushes on the freeing thread's magazine: no lock and no
 * atomic read-modify-write on either fast path, whichever thread allocated
 * the object. Magazines are refilled from and emptied into pages in
 * batches; objects of another thread's page go back with one
 * compare-and-swap per run. A thread that exits hands its pages and its
 * magazine to the pool, and another thread adopts them. Each thread's
 * magazine holds up to 64 objects (fewer for objects above 256 bytes: about
 * 16 KiB of them, at least 2).
 *
 * Which calls may run at the same time on one pool P:
 *
 *   | call on P                    | concurrent with, on P                          |
 *   |------------------------------|------------------------------------------------|
 *   | alloc, free                  | each other, from any threads                   |
 *   | stats, name                  | all but destroy (stats: a racy snapshot)       |
 *   | visit                        | stats and name only                            |
 *   | destroy                      | nothing on P (threads that used P may exit)    |
 *
 * Destroy racing with alloc, free or visit on the same pool is a bug in the
 * caller; debug builds (PANTRY_DEBUG) diagnose it (one line naming the
 * function and the pool, then abort). `init` and `drop` must not call
 * pantry_pool_destroy on their own pool, and `drop` run by destroy must not
 * allocate from or free to that pool. */

/** A pool (opaque). */
typedef struct pantry_pool pantry_pool_t;

/** An init: sets up the fresh object `obj` (its memory is not initialised).
 * Returns 0, or nonzero to make the pantry_pool_alloc that called it fail. */
typedef int (*pantry_init_fn)(void *obj, void *ctx);

/** A drop: releases what `obj` owns. `ctx` is the pointer given with it.
 * The same type as the arenas' drop (repeating an identical typedef is valid
 * C11 and C++). */
typedef void (*pantry_drop_fn)(void *obj, void *ctx);

/** How to make a pool. */
typedef struct pantry_pool_config {
  const char *name;       /* for stats and diagnostics; copied (47 bytes kept); NULL = "" */
  pantry_layout_t layout; /* size > 0 (at most 512 KiB); align a power of two up to 4096 */
  pantry_init_fn init;    /* optional: runs on every pantry_pool_alloc */
  pantry_drop_fn drop;    /* optional: runs exactly once per object freed or left live at destroy */
  void *ctx;              /* passed to init and drop */
} pantry_pool_config_t;

/** Per-pool statistics (pantry_pool_stats). */
typedef struct pantry_pool_stats {
  const char *name;      /* the pool's name; valid until the pool is destroyed */
  size_t object_size;    /* bytes per object: layout.size rounded up to 16 and to layout.align */
  size_t live;           /* objects allocated and not yet freed */
  size_t peak;           /* the most objects live at once (see pantry_pool_stats) */
  size_t allocs;         /* successful pantry_pool_alloc calls */
  size_t frees;          /* pantry_pool_free calls */
  size_t pages;          /* pages the pool holds (kept until destroy, reused meanwhile) */
  size_t bytes_reserved; /* bytes of those pages: memory set aside for the pool's objects */
  size_t bytes_mapped;   /* address space of the pool's segments (4 MiB each) */
  size_t threads;        /* per-thread caches of the pool (threads that used it) */
} pantry_pool_stats_t;

/** Create a pool of objects of `config->layout`.
 *
 * Objects are `layout.size` rounded up to a multiple of 16 and of
 * `layout.align`, and aligned to `layout.align`. Creating a pool maps no
 * memory: a thread's first pantry_pool_alloc does. The name is copied.
 * Returns NULL with errno EINVAL when `config` is NULL, `layout.size` is 0
 * or above 512 KiB, or `layout.align` is not a power of two up to 4096;
 * ENOMEM when memory runs out. Thread-safe.
 *
 *   pantry_pool_config_t cfg = {.name = "conn", .layout = PANTRY_LAYOUT_OF(struct conn),
 *                               .init = conn_init, .drop = conn_drop};
 *   pantry_pool_t *conns = pantry_pool_create(&cfg);                         */
PANTRY_API pantry_pool_t *pantry_pool_create(const pantry_pool_config_t *config);

/** Allocate an object from `pool` and run the pool's `init` on it.
 *
 * Returns NULL with errno ENOMEM when memory runs out or `init` returns
 * nonzero; then no drop will run for that object. `pool` must be a live pool.
 * Thread-safe (any number of threads on one pool); lock-free; the fast path
 * is a thread-local table look-up and a pop from the thread's magazine of
 * free objects (refilled from the thread's pages half a magazine at a
 * time). (Not declared with the `malloc` attribute: `init` may store
 * pointers in the object.) */
PANTRY_API void *pantry_pool_alloc(pantry_pool_t *pool);

/** Run the pool's `drop` on `obj`, then give it back to `pool`.
 *
 * `obj` NULL does nothing. Any thread may free an object of any thread: the
 * object goes on the freeing thread's magazine (a small per-thread stack of
 * free objects, as a kmem_cache's per-CPU array) with no atomic; a full
 * magazine gives half of its objects back to their pages in one batch (one
 * compare-and-swap per run of objects of another thread's page).
 * Diagnoses and aborts (naming the pool and the pointer) on: a pointer
 * pantry never handed out, an object of another pool, a pointer into the
 * middle of an object, and a double free: always when a thread frees the
 * same object twice in a row, when a page gets back more objects than are
 * in use, and at pantry_pool_visit and pantry_pool_destroy (with a drop)
 * when an object is free twice; on every free in debug builds
 * (PANTRY_DEBUG). pantry_free (or free, realloc, pantry_dealloc) of a pool
 * object is diagnosed too: it would skip the drop. Thread-safe; lock-free. */
PANTRY_API void pantry_pool_free(pantry_pool_t *pool, void *obj);

/** Destroy `pool`: run `drop` on every object still live, whichever thread
 * allocated it (threads that exited included), then return every page of
 * the pool at once.
 *
 * Without a drop, destroy does no per-object work: its cost grows with the
 * pool's segments (4 MiB each), not its objects; the pages go back to the
 * OS (or pantry's cache of free segments) after an RCU grace period, on
 * liburcu's call_rcu thread. Per-thread state of the pool is never used
 * again, even by a new pool at the same address. `pool` NULL does nothing.
 * Must not run at the same time as any other call on `pool` (see the table
 * above); debug builds diagnose an alloc, free or visit in progress.
 * Objects of the pool are invalid afterwards. */
PANTRY_API void pantry_pool_destroy(pantry_pool_t *pool);

/** Called by pantry_pool_visit for each live object; nonzero stops the walk. */
typedef int (*pantry_pool_visit_fn)(void *obj, void *arg);

/** Call `fn(obj, arg)` on every live object of `pool`, in address order
 * within each page and no particular order across pages. Returns the number
 * of objects visited. `fn` may read and write the objects but must not
 * allocate from or free to `pool`. Not thread-safe against alloc and free
 * on `pool` (see the table above): use it when the pool is quiescent. */
PANTRY_API size_t pantry_pool_visit(pantry_pool_t *pool, pantry_pool_visit_fn fn, void *arg);

/** Fill `*stats` with the figures of `pool`.
 *
 * Each thread counts its own allocations and frees without atomics; stats
 * adds the counts up (O(threads + segments)), so `live`, `allocs` and
 * `frees` are exact when no alloc or free runs, and a racy snapshot while
 * they do. `peak` is the highest live count seen when the pool took a new
 * page (where growth happens) or when stats ran: exact for a pool that grows
 * by taking pages; a peak reached again inside pages the pool already holds
 * is seen only by stats. Thread-safe against alloc and free; not against
 * destroy. */
PANTRY_API void pantry_pool_stats(pantry_pool_t *pool, pantry_pool_stats_t *stats);

/** The pool's name as given to pantry_pool_create ("" when none).
 * Thread-safe; valid until the pool is destroyed. */
PANTRY_API const char *pantry_pool_name(const pantry_pool_t *pool);

/* ------------------------------------------------------------------------ */
/* Arenas                                                                   */
/* ------------------------------------------------------------------------ */

/* An arena is a scope (a request, a transaction, a parse, a frame): what is
 * allocated in it dies together, at pantry_arena_reset or
 * pantry_arena_destroy. Objects that own something (a descriptor, a socket,
 * a malloc'd buffer) register a drop with pantry_arena_own or
 * pantry_arena_new; reset and destroy run every drop exactly once.
 *
 * Each thread that allocates in an arena works in its own serial arena: a
 * chunk with a bump pointer and its own cleanup list, found through a
 * thread-local cache. The fast path of pantry_arena_alloc is a compare and
 * an add, with no lock and no atomic; a new chunk comes from the thread's
 * heap, without a lock.
 *
 * Which calls may run at the same time on one arena A:
 *
 *   | call on A                                   | concurrent with, on A             |
 *   |---------------------------------------------|-----------------------------------|
 *   | alloc, own, new, strdup, strndup, memdup,   | each other, from any threads      |
 *   |   asprintf                                  |                                   |
 *   | create with parent A, destroy of a child    | the above and each other          |
 *   | name                                        | anything                          |
 *   | reset, destroy, stats                       | nothing else on A or its children |
 *
 * Reset or destroy racing with an allocation on the same arena is a bug in
 * the caller. pantry diagnoses it (one line naming the function and the
 * arena, then abort) whenever the allocating thread reaches the slow path,
 * which every thread does once reset or destroy has started; debug builds
 * (PANTRY_DEBUG) check on the fast path too. A thread that allocated in an
 * arena may exit at any time: what it left is freed by reset or destroy. */

/** An arena (opaque). */
typedef struct pantry_arena pantry_arena_t;

/* Drops are pantry_drop_fn (see Pools): drop(obj, ctx) releases what `obj`
 * owns; `ctx` is the pointer registered with it. */

/** How to make an arena; zero (or NULL) means the defaults. */
typedef struct pantry_arena_config {
  pantry_arena_t *parent; /* optional: destroyed (and reset) together with its parent */
  size_t chunk_size;      /* bytes per chunk; 0 = a sensible default that grows */
  size_t limit;           /* most bytes the arena may hold; 0 = no limit */
  const char *name;       /* for stats and diagnostics; copied (31 bytes kept) */
} pantry_arena_config_t;

/** Per-arena statistics (pantry_arena_stats). */
typedef struct pantry_arena_stats {
  size_t bytes_used;    /* bytes handed out (with alignment padding), cleanups included */
  size_t bytes_held;    /* bytes of all chunks held, kept ones included (the limit counts these) */
  size_t chunks;        /* chunks held, kept ones included */
  size_t owned;         /* owned objects: cleanups registered and not yet run */
  size_t serial_arenas; /* threads with a part: the creator, and those that allocated */
  size_t children;      /* live child arenas */
} pantry_arena_stats_t;

/** Create an arena. `config` may be NULL for the defaults.
 *
 * One allocation holds the arena and its first chunk (1 KiB in all by
 * default; later chunks start at 16 KiB and double up to 64 KiB; with
 * `chunk_size` every chunk has that size, at least 256 bytes). An allocation
 * larger than a quarter of a chunk gets a chunk of its own. Each thread keeps
 * the block and one chunk (at most 64 KiB) of the last arena it destroyed
 * for its next create, so an arena per request costs no trip to the heap;
 * they are freed when the thread exits. The creating thread owns the arena's
 * first part; another thread that allocates in it gets its own.
 * With `parent`, the arena is reset when the parent is reset and destroyed
 * when the parent is destroyed (before the parent's own drops run); it may
 * still be destroyed on its own first. `limit` bounds the bytes of chunks
 * held (not the arena's ~270-byte header).
 *
 * Returns NULL with errno ENOMEM when memory runs out, EINVAL when
 * `chunk_size` is above 1 GiB. Thread-safe; see the table above for
 * creating children of one parent from many threads.
 *
 *   pantry_arena_config_t cfg = {.name = "request", .limit = 1 << 20};
 *   pantry_arena_t *req = pantry_arena_create(&cfg);                      */
PANTRY_API pantry_arena_t *pantry_arena_create(const pantry_arena_config_t *config);

/** Allocate `size` bytes aligned to `align` in `arena`.
 *
 * `align` is a power of two from 1 to 4096. `size` 0 returns a unique
 * pointer. The memory is not initialised and is never freed on its own: it
 * lives until the arena is reset or destroyed. Returns NULL with errno
 * EINVAL for a bad `align`, ENOMEM when `size` is above PTRDIFF_MAX, when
 * the arena's limit would be passed, or when memory runs out; the arena
 * stays usable. Thread-safe (any number of threads on one arena); no lock;
 * no atomic unless a new chunk is needed. */
PANTRY_API PANTRY_MALLOC_ATTR void *pantry_arena_alloc(pantry_arena_t *arena, size_t size,
                                                       size_t align);

/** Register `drop(obj, ctx)` to run when `arena` is reset or destroyed.
 *
 * `obj` may be any pointer (in the arena or not). Drops registered by one
 * thread run newest first; there is no order between drops registered by
 * different threads. Returns 0, or -1 with errno EINVAL (`drop` is NULL) or
 * ENOMEM (limit or memory; then the drop is not registered and will not
 * run). Thread-safe, like pantry_arena_alloc.
 *
 *   int *fd = pantry_arena_alloc(req, sizeof *fd, _Alignof(int));
 *   *fd = open(path, O_RDONLY);
 *   if (pantry_arena_own(req, fd, close_fd, NULL) != 0) close(*fd);      */
PANTRY_API int pantry_arena_own(pantry_arena_t *arena, void *obj, pantry_drop_fn drop, void *ctx);

/** Allocate an object of `layout` in `arena` and register `drop(obj, ctx)`
 * for it (no drop when `drop` is NULL): pantry_arena_alloc and
 * pantry_arena_own in one call. On failure (as for those two) returns NULL
 * and no drop is registered. Thread-safe.
 * (Not marked `malloc`: the arena keeps the pointer for the drop, so a
 * compiler must not treat the object's stores as dead.) */
PANTRY_API void *pantry_arena_new(pantry_arena_t *arena, pantry_layout_t layout,
                                  pantry_drop_fn drop, void *ctx);

/** Copy the string `s` (with its terminating NUL) into `arena`. Returns
 * NULL with errno ENOMEM as pantry_arena_alloc does. Thread-safe. */
PANTRY_API PANTRY_MALLOC_ATTR char *pantry_arena_strdup(pantry_arena_t *arena, const char *s);

/** Copy at most `n` bytes of `s`, stopping at a NUL, and terminate the copy.
 * Returns NULL with errno ENOMEM as pantry_arena_alloc does. Thread-safe. */
PANTRY_API PANTRY_MALLOC_ATTR char *pantry_arena_strndup(pantry_arena_t *arena, const char *s,
                                                         size_t n);

/** Copy `size` bytes from `p` into `arena`, aligned to 16 bytes. Returns
 * NULL with errno ENOMEM as pantry_arena_alloc does. Thread-safe. */
PANTRY_API PANTRY_MALLOC_ATTR void *pantry_arena_memdup(pantry_arena_t *arena, const void *p,
                                                        size_t size);

/** Format like printf into a string allocated in `arena`. Returns NULL with
 * errno ENOMEM (memory) or the error of vsnprintf (EOVERFLOW, EILSEQ).
 * Thread-safe. */
PANTRY_API char *pantry_arena_asprintf(pantry_arena_t *arena, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/** Run every drop of `arena` and start it again, empty, keeping memory.
 *
 * In order: child arenas are reset (they stay valid); then each serial
 * arena's drops run, newest first; then the memory goes back in one batch.
 * The first chunk and up to 256 KiB of other chunks are kept for reuse (the
 * largest of the resetting arena's own becomes current, so a request like
 * the last one needs no new chunk), the rest returns to the heap. A drop may allocate in, and
 * register drops into, the arena being reset (on the thread running the reset): those drops run
 * too, in rounds, until none is left, and what they allocated is released
 * with the rest. Reset or destroy of the arena from one of its own drops is
 * diagnosed. `arena` NULL does nothing.
 * Not thread-safe against any other call on `arena` (see the table above). */
PANTRY_API void pantry_arena_reset(pantry_arena_t *arena);

/** Run every drop of `arena`, destroy its children, and return its memory.
 *
 * As pantry_arena_reset, but children are destroyed, and afterwards every
 * chunk and the arena itself are freed (but the block and one chunk that the
 * calling thread keeps for its next create). `arena` NULL does nothing.
 * Destroying a child after its parent was destroyed (which destroyed the
 * child) is a double destroy. Not thread-safe against any other call on
 * `arena`; destroying different children of one parent at once is fine. */
PANTRY_API void pantry_arena_destroy(pantry_arena_t *arena);

/** Fill `*stats` with the figures of `arena` (its children not included).
 * Exact; walks the arena's chunks. Not thread-safe against allocation on
 * `arena` (see the table above). */
PANTRY_API void pantry_arena_stats(const pantry_arena_t *arena, pantry_arena_stats_t *stats);

/** The arena's name as given to pantry_arena_create ("" when none).
 * Thread-safe; valid until the arena is destroyed. */
PANTRY_API const char *pantry_arena_name(const pantry_arena_t *arena);

/* The inline fast paths of pantry_arena_alloc, _own and _new (protobuf's
 * arena does the same): a call site compiles to a thread-local compare, an
 * align, a compare and an add, and calls the library only when a new chunk
 * or a first look-up is needed. What follows is not API: the structs are the
 * heads of the library's own (they must come from the same pantry build),
 * and the macros keep the real functions for function pointers and other
 * languages. Define PANTRY_ARENA_NO_INLINE to always call the library.
 * Debug builds of the library never let the inline paths match, so every
 * call reaches the library's checks. */
struct pantry_arena_head_ { /* the first member of every arena */
  size_t id_;               /* never reused; 0 never used */
};
struct pantry_arena_bump_ { /* the first member of every serial arena */
  size_t ptr_;              /* the next free byte */
  size_t end_;              /* the end of the free space: cleanups lie above */
};
struct pantry_arena_cleanup_ { /* a registered drop, stored from end_ upward */
  pantry_drop_fn drop;
  void *obj;
  void *ctx;
};
struct pantry_arena_cache_ { /* this thread's serial arena of the arena with id id_ */
  size_t id_;
  struct pantry_arena_bump_ *serial_;
};

#if defined(__GNUC__) && !defined(PANTRY_ARENA_NO_INLINE)
extern PANTRY_API __thread struct pantry_arena_cache_ pantry_arena_cache_;

static inline struct pantry_arena_bump_ *pantry_arena_bump_of_(pantry_arena_t *arena) {
  struct pantry_arena_cache_ *cache = &pantry_arena_cache_;
  return cache->id_ == ((const struct pantry_arena_head_ *)(const void *)arena)->id_
             ? cache->serial_
             : (struct pantry_arena_bump_ *)0;
}

static inline int pantry_arena_align_ok_(size_t align) {
  return align - 1 < 4096 && (align & (align - 1)) == 0;
}

__attribute__((malloc, warn_unused_result)) static inline void *
pantry_arena_alloc_inline_(pantry_arena_t *arena, size_t size, size_t align) {
  struct pantry_arena_bump_ *b = pantry_arena_bump_of_(arena);
  if (__builtin_expect(b != 0 && pantry_arena_align_ok_(align), 1)) {
    size_t p = (b->ptr_ + align - 1) & ~(align - 1), end = b->end_;
    if (__builtin_expect(p <= end && size - 1 < end - p, 1)) {
      b->ptr_ = p + size;
      return (void *)p;
    }
  }
  return (pantry_arena_alloc)(arena, size, align);
}

static inline int pantry_arena_own_inline_(pantry_arena_t *arena, void *obj, pantry_drop_fn drop,
                                           void *ctx) {
  struct pantry_arena_bump_ *b = pantry_arena_bump_of_(arena);
  if (__builtin_expect(
          b != 0 && drop != 0 && b->end_ - b->ptr_ >= sizeof(struct pantry_arena_cleanup_), 1)) {
    struct pantry_arena_cleanup_ *cl;
    b->end_ -= sizeof(struct pantry_arena_cleanup_);
    cl = (struct pantry_arena_cleanup_ *)b->end_;
    cl->drop = drop;
    cl->obj = obj;
    cl->ctx = ctx;
    return 0;
  }
  return (pantry_arena_own)(arena, obj, drop, ctx);
}

__attribute__((warn_unused_result)) static inline void *
pantry_arena_new_inline_(pantry_arena_t *arena, pantry_layout_t layout, pantry_drop_fn drop,
                         void *ctx) {
  struct pantry_arena_bump_ *b = pantry_arena_bump_of_(arena);
  if (__builtin_expect(b != 0 && drop != 0 && pantry_arena_align_ok_(layout.align), 1)) {
    size_t p = (b->ptr_ + layout.align - 1) & ~(layout.align - 1);
    size_t end = b->end_ - sizeof(struct pantry_arena_cleanup_); /* wraps when closed */
    if (__builtin_expect(p <= end && end <= b->end_ && layout.size - 1 < end - p, 1)) {
      struct pantry_arena_cleanup_ *cl = (struct pantry_arena_cleanup_ *)end;
      b->ptr_ = p + layout.size;
      b->end_ = end;
      cl->drop = drop;
      cl->obj = (void *)p;
      cl->ctx = ctx;
      return (void *)p;
    }
  }
  return (pantry_arena_new)(arena, layout, drop, ctx);
}

#define pantry_arena_alloc(arena, size, align) pantry_arena_alloc_inline_(arena, size, align)
#define pantry_arena_own(arena, obj, drop, ctx) pantry_arena_own_inline_(arena, obj, drop, ctx)
#define pantry_arena_new(arena, layout, drop, ctx)                                                 \
  pantry_arena_new_inline_(arena, layout, drop, ctx)
#endif /* inline fast paths */

/* ------------------------------------------------------------------------ */
/* Deferred frees (RCU)                                                     */
/* ------------------------------------------------------------------------ */

/* For data read without locks (RCU lists, hash tables, routing tables,
 * caches): a block unlinked by a writer is freed only after an RCU grace
 * period, when no reader that may still hold it remains inside its
 * read-side critical section (liburcu's rcu_read_lock / rcu_read_unlock).
 * It replaces an rcu_head in every object, call_rcu, and a callback that
 * frees: the object needs no field, and one call_rcu serves a batch.
 *
 *   reader (rcu_read_lock held)          writer (under its own update lock)
 *   n = rcu_dereference(head->first);    old = head->first;
 *   use(n->key);                         rcu_assign_pointer(head->first, old->next);
 *                                        pantry_free_deferred(old);
 *
 * How: the pointer waits in a batch of the calling thread (memory pantry
 * allocates, never the block: nothing is written into a deferred block
 * before its grace period ends). A batch is handed over when it is full
 * (1018 pointers), after a time bound (about 20 ms after it last changed),
 * when its thread exits, and at pantry_deferred_barrier. A pantry worker
 * thread, registered with the readers' flavor, issues one call_rcu per
 * batch. After the grace period, liburcu's call_rcu thread runs the drops
 * of the batch's pool objects and returns the batch to the thread that
 * made it, which frees the blocks when it next starts a batch (local frees,
 * so its next allocations reuse warm memory); pantry's worker frees them
 * instead when that thread is idle for about 20 ms or has exited.
 *
 * The flavor: a grace period protects only readers of the same RCU flavor.
 * pantry uses urcu-memb unless pantry_deferred_set_flavor names another.
 * Threads that defer need not be registered with liburcu, and pantry never
 * registers any of the program's threads (only its worker), so a thread the
 * program registered is never registered twice.
 *
 * fork: pantry parks its worker and calls the flavor's
 * urcu_<flavor>_call_rcu_before_fork / _after_fork_parent /
 * _after_fork_child itself (pthread_atfork, once a deferred free was made).
 * A program that defers through pantry must not call those three for the
 * same flavor too (liburcu's call_rcu lock would be taken twice). The child
 * may allocate, defer frees and call the barrier; frees deferred before the
 * fork complete in both processes.
 *
 * Exit and unload: pantry's destructor waits for every pending deferred
 * free (and for pantry's internal urcu-bp callbacks), then stops its
 * worker, so no callback runs into unmapped code after dlclose. Exiting
 * with frees pending while another thread stays inside a read-side
 * critical section (or online in QSBR) therefore waits for that thread.
 *
 * Which calls may run at the same time:
 *
 *   | call                         | concurrent with                             |
 *   |------------------------------|---------------------------------------------|
 *   | pantry_free_deferred,        | anything, from any thread, inside or        |
 *   | pantry_pool_free_deferred    | outside read-side sections; never waits     |
 *   | pantry_deferred_barrier      | anything but set_flavor; blocks; not inside |
 *   |                              | a read-side section nor in an RCU callback  |
 *   | pantry_deferred_set_flavor   | nothing that defers or reads under the old  |
 *   |                              | or the new flavor (call it at start-up)     |
 */

/** Free the block `p` after an RCU grace period of the readers' flavor.
 *
 * `p` is any block pantry handed out (pantry_malloc, _calloc, _realloc,
 * _aligned_alloc, pantry_alloc); NULL does nothing. The block stays readable
 * and untouched until every read-side critical section that was running
 * when this call returned has ended; then it is freed as by pantry_free (by
 * the calling thread, in a later call, or by pantry's worker thread). The
 * caller must not use `p` any more (readers that found it before it was
 * unlinked may).
 *
 * Diagnoses and aborts, at this call, on every pointer pantry_free rejects
 * (not pantry's, an interior pointer, a page that holds no blocks); a block
 * deferred twice is diagnosed, where pantry_free would diagnose it, when
 * its second free runs. On the rare failure to allocate a batch it prints a
 * warning and leaks the block (never frees it early).
 * Thread-safe; callable from any thread, registered with liburcu or not,
 * inside a read-side critical section or an RCU callback. Lock-free: an
 * exchange and a store on the thread's own slot; 8 KiB allocated per 1018
 * pointers. Under AddressSanitizer the block is poisoned while it waits.
 * A pool object is diagnosed: defer it with pantry_pool_free_deferred. */
PANTRY_API void pantry_free_deferred(void *p);

/** Drop and free the pool object `obj` after an RCU grace period of the
 * readers' flavor: pantry_pool_free(pool, obj), deferred.
 *
 * `obj` NULL does nothing. Nothing is written into `obj` until the grace
 * period ends; then the pool's `drop` runs on it exactly once, on liburcu's
 * call_rcu thread (so a drop must not call pantry_deferred_barrier), and the
 * object goes back to `pool` like any free from another thread.
 * Diagnoses and aborts, at this call, on everything pantry_pool_free
 * rejects at once: a NULL pool, a pointer pantry never handed out, an
 * object of another pool, an interior pointer. Objects deferred from a pool
 * are still live for pantry_pool_destroy until their drop has run: call
 * pantry_deferred_barrier before destroying the pool.
 * Thread-safe and lock-free, as pantry_free_deferred.
 *
 *   rcu_assign_pointer(bucket->head, conn->next);   (unlink, under the update lock)
 *   pantry_pool_free_deferred(conns, conn);            */
PANTRY_API void pantry_pool_free_deferred(pantry_pool_t *pool, void *obj);

/** Wait until every deferred free issued before this call (by any thread)
 * has been done: its grace period has ended, its drop (pool objects) has
 * run and its block is freed.
 *
 * Hands every thread's partial batch over, waits until pantry's worker has
 * issued their call_rcu, calls the flavor's rcu_barrier (which also waits
 * for the program's own call_rcu callbacks of that flavor), then frees the
 * blocks that wait for their thread. Returns at once when no deferred free
 * is pending.
 *
 * Diagnoses and aborts when called inside a read-side critical section of
 * the readers' flavor, or from an RCU callback (a call_rcu thread of that
 * flavor, a pool drop run by a deferred free): it would wait for itself.
 * A QSBR thread may call it online (it goes offline while it waits).
 * Thread-safe; blocks (never spins), for at least one grace period when
 * anything is pending. */
PANTRY_API void pantry_deferred_barrier(void);

/** Say which RCU flavor the program's readers use, so deferred frees wait
 * for the right grace periods.
 *
 * `rcu_flavor` points to liburcu's `const struct rcu_flavor_struct` of that
 * flavor, e.g. `&urcu_qsbr_flavor` (<urcu/urcu-qsbr.h>), `&urcu_mb_flavor`,
 * `&urcu_signal_flavor`, `&urcu_bp_flavor`; NULL restores the default,
 * `&urcu_memb_flavor`. (A `const void *` keeps liburcu's headers out of
 * this one.) The flavor's library must stay loaded while pantry uses it.
 *
 * Call it at start-up, before the first deferred free. Changing the flavor
 * later first waits, as pantry_deferred_barrier does, for the frees deferred
 * under the old one. Returns 0, or EINVAL when the struct lacks a function
 * pantry needs, or ENOMEM after 7 distinct flavors. Not thread-safe against
 * deferred frees and readers of either flavor (see the table above).
 *
 *   #include <urcu/urcu-qsbr.h>
 *   pantry_deferred_set_flavor(&urcu_qsbr_flavor);                    */
PANTRY_API int pantry_deferred_set_flavor(const void *rcu_flavor);

/* ------------------------------------------------------------------------ */
/* Statistics, options and errors                                           */
/* ------------------------------------------------------------------------ */

/* Statistics. Each thread counts in its own heap, with no atomic
 * read-modify-write and nothing on the allocation and free fast paths: a
 * page's blocks are counted when the page reaches a slow path (it runs out
 * of free blocks, empties, fills up, or its thread calls pantry_stats_get,
 * pantry_collect or exits). pantry_stats_get adds up the counts of every
 * live thread and of the threads that exited. So the figures are exact for
 * the calling thread and for exited threads, and lag for a thread that is
 * running now by the blocks its pages handed out or took back since they
 * last reached a slow path (at most a page's worth per size class it is
 * using, plus frees into pages that did not empty). Pools (pantry_pool_stats)
 * and arenas (pantry_arena_stats) have figures of their own; an arena's
 * chunks count here as blocks. */

/** The number of size classes (entries of pantry_stats_t.size_classes). */
#define PANTRY_STATS_SIZE_CLASSES 104

/** One size class of pantry_stats_t. */
typedef struct pantry_size_class_stats {
  size_t block_size;  /* bytes per block: the largest request the class serves */
  size_t live_blocks; /* blocks allocated and not yet freed */
  size_t pages;       /* pages holding blocks of this class (64 KiB, 512 KiB or 4 MiB each) */
} pantry_size_class_stats_t;

/** Process-wide figures (pantry_stats_get). Cumulative counts are since
 * the process started; the others are now. */
typedef struct pantry_stats {
  size_t bytes_allocated;    /* bytes in live blocks, at their size class (huge: usable size) */
  size_t live_blocks;        /* blocks allocated and not yet freed, huge ones included */
  size_t huge_blocks;        /* live blocks above 512 KiB, each mapped on its own */
  size_t segments;           /* 4 MiB segments mapped: in use, abandoned or cached */
  size_t segments_abandoned; /* of those, left by exited threads and not yet adopted */
  size_t segments_cached;    /* of those, empty, purged and kept for reuse */
  size_t bytes_mapped;       /* address space pantry has mapped (segments and huge blocks) */
  size_t bytes_committed;    /* of that, memory pantry may have touched: segment headers,
                                pages taken and not purged since, huge blocks */
  size_t bytes_resident;     /* resident set of the whole process (/proc/self/statm), 0 if
                                unknown: pantry's memory and everything else */
  size_t remote_frees;       /* cumulative: frees of a block by another thread than its owner */
  size_t depot_adoptions;    /* cumulative: segments of exited threads adopted by others */
  size_t purges;             /* cumulative: madvise calls that gave unused pages back */
  size_t bytes_purged;       /* cumulative: bytes those calls gave back */
  size_t threads;            /* thread heaps alive */
  pantry_size_class_stats_t size_classes[PANTRY_STATS_SIZE_CLASSES]; /* smallest first */
} pantry_stats_t;

/** Fill `*stats` with the process's figures (see above for how exact).
 *
 * Walks a registry of thread heaps (O(threads + size classes)) with no lock,
 * and the calling thread's own pages (O(its pages)); reads
 * /proc/self/statm. Never allocates. `stats` NULL does nothing.
 * Thread-safe; may run at the same time as any allocation or free. */
PANTRY_API void pantry_stats_get(pantry_stats_t *stats);

/** Print pantry_stats_get's figures to `out` (NULL: stderr), one per line,
 * then the size classes that hold blocks, then the segment layer's
 * counters. Thread-safe, as pantry_stats_get; the output goes through stdio.
 *
 *   pantry_stats_print(stderr);        (or run with PANTRY_SHOW_STATS=1) */
PANTRY_API void pantry_stats_print(FILE *out);

/** Give memory back to the OS now.
 *
 * For the calling thread: collects the frees other threads made into its
 * pages, releases every page that holds no block (even the one kept per
 * size class), purges (madvise MADV_DONTNEED) every unused page of its
 * segments, and gives back the free tail of each page that still holds a
 * few live blocks but was carved far past the last one (after a burst).
 * For the whole process: purges every unused page that waits for
 * its purge delay, in every thread's segments, and waits until the empty
 * segments handed to pantry's depot are purged (an RCU grace period). With
 * `force`, the calling thread's spare empty segment goes too, and the
 * segments in the depot's cache are unmapped.
 *
 * Without any call, pantry purges an emptied page one purge delay after it
 * emptied (PANTRY_PURGE_DELAY_MS), from a background thread, and at once
 * when the thread that emptied it holds more than 4 MiB of emptied memory;
 * while it does (a burst of frees), that thread also gives back the free
 * tails of its pages that kept only a few live blocks.
 * Thread-safe; takes no lock; blocks for about one grace period of
 * liburcu's urcu-bp flavor, so it must not be called inside an urcu-bp
 * read-side critical section or from a call_rcu callback. */
PANTRY_API void pantry_collect(bool force);

/* Options. Each option is read from its environment variable once, when
 * pantry initialises (before main under LD_PRELOAD), and may be read or
 * changed later with pantry_option_get and pantry_option_set:
 *
 *   | option                | values        | default | what it does                          |
 *   |-----------------------|---------------|---------|---------------------------------------|
 *   | PANTRY_VERBOSE        | 0, 1, 2       | 0       | 1: print the options in effect at     |
 *   |                       |               |         | start and rare events (2: more)       |
 *   | PANTRY_PURGE_DELAY_MS | 0 .. 3600000  | 10      | how long an emptied page keeps its    |
 *   |                       |               |         | memory before it goes back to the OS; |
 *   |                       |               |         | beyond 4 MiB of emptied memory per    |
 *   |                       |               |         | thread, the excess goes back at once  |
 *   | PANTRY_PURGE_THREAD   | 0, 1          | 1       | purge from a background thread, so    |
 *   |                       |               |         | memory comes back with no further     |
 *   |                       |               |         | call (started once pantry maps 8 MiB) |
 *   | PANTRY_SHOW_STATS     | 0, 1          | 0       | print pantry_stats_print at exit      |
 *   | PANTRY_LEAK_REPORT    | 0, 1          | 0       | report the blocks still live at exit  |
 *   |                       |               |         | (read at start only)                  |
 *   | PANTRY_SECURE         | 0, 1          | build   | read-only: 1 when the library was     |
 *   |                       |               |         | built with -DPANTRY_SECURE=ON         |
 *
 * Booleans also take true/false, yes/no, on/off. A bad value in the
 * environment gets a warning naming the variable, the value, what is
 * allowed and the default used instead; so does a PANTRY_* variable that is
 * no option (with the nearest option's name), except the variables of
 * pantry's own scripts (PANTRY_TEST_*, PANTRY_BENCH_*, PANTRY_BUILD_DIR,
 * ...). */

/** Set option `name` (e.g. "PANTRY_PURGE_DELAY_MS", or "purge_delay_ms")
 * from the decimal or boolean string `value`.
 * Returns 0; EINVAL when `name` is no option or `value` is out of range
 * or not a number; EPERM for PANTRY_SECURE (fixed when built) and
 * PANTRY_LEAK_REPORT (fixed at start). Takes effect at once (a new purge
 * delay applies to pages emptied from then on). Thread-safe. */
PANTRY_API int pantry_option_set(const char *name, const char *value);

/** The value of option `name` (as pantry_option_set names it), or -1 with
 * errno EINVAL when there is no such option. Thread-safe. */
PANTRY_API long pantry_option_get(const char *name);

/* Errors. pantry reports what it diagnoses (a double free, a foreign
 * pointer, a bad option) as one line of text. By default the line goes to
 * stderr with write(2) ("pantry: error: ...", "pantry: warning: ..."); a
 * program may send it elsewhere (a log) with pantry_set_error_handler. A
 * fatal error still aborts (abort()) after the handler returns. */

/** How bad a reported condition is. */
typedef enum pantry_severity {
  PANTRY_SEVERITY_INFO = 0,    /* PANTRY_VERBOSE messages */
  PANTRY_SEVERITY_WARNING = 1, /* pantry goes on (a bad option, a failed munmap) */
  PANTRY_SEVERITY_FATAL = 2    /* misuse or corruption: abort() follows the handler */
} pantry_severity_t;

/** An error handler: `message` is the line without prefix or newline
 * ("pantry_free(0x7f..): double free ..."), valid during the call only;
 * `ctx` is the pointer given with the handler. */
typedef void (*pantry_error_fn)(pantry_severity_t severity, const char *message, void *ctx);

/** Send pantry's messages to `handler(severity, message, ctx)` instead of
 * stderr; `handler` NULL restores the default.
 *
 * The handler runs on the thread that hit the condition, possibly inside
 * pantry_free or malloc (under LD_PRELOAD): it should not allocate with
 * pantry, and after a fatal error pantry's state may be inconsistent. A
 * message reported while the handler runs on the same thread goes to stderr.
 * Set it at start-up: a handler changed while another thread reports may be
 * called with the old or the new `ctx`. Thread-safe otherwise.
 *
 *   static void to_log(pantry_severity_t s, const char *m, void *ctx) { log_line(ctx, m); }
 *   pantry_set_error_handler(to_log, my_log);                              */
PANTRY_API void pantry_set_error_handler(pantry_error_fn handler, void *ctx);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PANTRY_H */
