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

/* ------------------------------------------------------------------------ */
/* Arenas                                                                   */
/* ------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------ */
/* Deferred frees (RCU)                                                     */
/* ------------------------------------------------------------------------ */

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PANTRY_H */
