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
 *   PANTRY_SECURE             freed memory filled with PN_FREE_FILL; word 1
 *                             of a block is cleared when it is handed out,
 *                             so a free that finds the fill there is a double
 *                             free, whichever thread frees (a user who wrote
 *                             exactly the fill pattern at bytes 8..15 before
 *                             freeing would be misdiagnosed; secure mode
 *                             accepts that).
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

/* A block of `size` bytes is handed out (its link word already read). */
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

/* Secure mode: whether the block's word 1 holds the fill, that is, whether
 * the block is free already. */
static inline bool pn_track_is_filled(const void *block) {
  return ((const uint64_t *)block)[1] == PN_FREE_FILL64;
}

/* A block of `size` bytes is given back: fill it (secure mode), then hide
 * everything but the link word, which the caller writes next. */
static inline void pn_track_free(void *block, size_t size, bool secure) {
  if (secure)
    memset((uint8_t *)block + sizeof(void *), PN_FREE_FILL, size - sizeof(void *));
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
