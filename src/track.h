/* track.h - what the tools programmers already use see of pantry's blocks,
 * and secure mode's fill: hooks at the two points where a block changes
 * hands, pn_page_pop (handed out) and the free paths (given back).
 *
 *   PANTRY_SANITIZE=address   AddressSanitizer manual poisoning: a freed
 *                             block is poisoned past its link word, so a
 *                             use after free (or an overflow into a free
 *                             neighbour) in user code is reported.
 *   PANTRY_VALGRIND           memcheck client requests: blocks are
 *                             malloc-like to memcheck; pantry's own reads
 *                             and writes of a free block's link word are
 *                             bracketed so memcheck does not flag them.
 *   PANTRY_SECURE             freed memory overwritten: the first
 *                             PN_FREE_FILL_BYTES (64) of a freed block, all
 *                             of a smaller one, from the free until the
 *                             block is handed out again: bytes 0..7 hold the
 *                             encoded free-list link, 8..15 the free mark
 *                             (internal.h), 16..63 PN_FREE_FILL. Bytes
 *                             beyond keep what the program left until the
 *                             block is reused or its page's memory purged.
 *                             Filling whole blocks cost the server
 *                             simulation 41% (every line of every freed
 *                             block pulled into the cache); the head is the
 *                             line the free touches anyway.
 * In a build with none of them, every hook here compiles to nothing.
 *
 * Layer: below page.c and alloc.h; includes only tool headers.
 */
#ifndef PN_TRACK_H
#define PN_TRACK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define PN_TRACK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PN_TRACK_ASAN 1
#endif
#endif

#ifdef PN_TRACK_ASAN
#include <sanitizer/asan_interface.h>
#endif

#if defined(PANTRY_VALGRIND) && PANTRY_VALGRIND
#include <valgrind/memcheck.h>
#define PN_TRACK_VALGRIND 1
#endif

#define PN_TRACK_LIKELY(x) __builtin_expect(!!(x), 1)

#define PN_FREE_FILL 0xDF
#define PN_FREE_FILL64 0xDFDFDFDFDFDFDFDFull

/* Before pantry reads or writes the link word (word 0) of a free block. */
static inline void pn_track_link_open(void *block) {
#ifdef PN_TRACK_VALGRIND
  VALGRIND_MAKE_MEM_DEFINED(block, sizeof(void *));
#endif
  (void)block;
}

/* After it. */
static inline void pn_track_link_close(void *block) {
#ifdef PN_TRACK_VALGRIND
  VALGRIND_MAKE_MEM_NOACCESS(block, sizeof(void *));
#endif
  (void)block;
}

/* A block of `size` bytes is handed out (its link word already read);
 * secure mode clears its free mark (word 1) too. */
static inline void pn_track_alloc(void *block, size_t size, bool secure) {
#ifdef PN_TRACK_ASAN
  ASAN_UNPOISON_MEMORY_REGION(block, size);
#endif
#ifdef PN_TRACK_VALGRIND
  VALGRIND_MALLOCLIKE_BLOCK(block, size, 0, 0);
#endif
  ((uintptr_t *)block)[0] = 0;
  if (secure)
    ((uintptr_t *)block)[1] = 0;
}

/* Secure mode overwrites the first PN_FREE_FILL_BYTES of a freed block (all
 * of a smaller block). */
#define PN_FREE_FILL_BYTES ((size_t)64)

typedef uint64_t pn_track_fill16_t __attribute__((vector_size(16), aligned(16), may_alias));

/* Fill bytes [16, min(size, 64)) of `block` (size a multiple of 16, at
 * least 16; blocks are 16-byte aligned) with PN_FREE_FILL: 16-byte stores,
 * inline and with no loop, so the free path neither calls memset nor saves
 * registers for it; a block of 64 bytes or more (the common case) costs one
 * compare and three stores. Bytes 0..15 are the caller's: the free-list
 * link and the free mark (internal.h). */
static inline void pn_track_fill_head(void *block, size_t size) {
  _Static_assert(PN_FREE_FILL_BYTES == 64, "three 16-byte stores");
  const pn_track_fill16_t fill = {PN_FREE_FILL64, PN_FREE_FILL64};
  pn_track_fill16_t *p = block;
  if (PN_TRACK_LIKELY(size >= 64)) {
    p[1] = fill;
    p[2] = fill;
    p[3] = fill;
  } else if (size > 16) {
    p[1] = fill;
    if (size > 32)
      p[2] = fill;
  }
}

/* A block of `size` bytes is given back: fill it (secure mode), then hide
 * everything but the link word, which the caller writes next. */
static inline void pn_track_free(void *block, size_t size, bool secure) {
  if (secure)
    pn_track_fill_head(block, size);
#ifdef PN_TRACK_VALGRIND
  VALGRIND_FREELIKE_BLOCK(block, 0);
  VALGRIND_MAKE_MEM_UNDEFINED(block, sizeof(void *));
#endif
#ifdef PN_TRACK_ASAN
  ASAN_POISON_MEMORY_REGION((uint8_t *)block + sizeof(void *), size - sizeof(void *));
#endif
  (void)block;
  (void)size;
}

/* Memory that is about to be reused for other blocks, or unmapped: no
 * poisoning may remain on it. */
static inline void pn_track_unpoison(void *p, size_t size) {
#ifdef PN_TRACK_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, size);
#endif
  (void)p;
  (void)size;
}

#endif /* PN_TRACK_H */
