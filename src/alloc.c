/* alloc.c - the top layer: pantry_malloc and friends, and the layout API.
 *
 * Thin: each function is the inline fast path of alloc.h or a call into
 * heap.c. The checks that diagnose misuse (foreign pointers, interior
 * pointers, wrong sizes and alignments, double frees) live in pn_free_slow,
 * which every free that is not a plain local free reaches.
 * Shared state: none of its own.
 */
#include <errno.h>
#include <string.h>

#include "alloc.h"
#include "pantry.h"

/* ------------------------------------------------------------------------ */
/* Free                                                                     */
/* ------------------------------------------------------------------------ */

PN_COLD static void free_invalid(void *p, const char *fn) {
  pn_fatal("%s(%p): pointer was not allocated by pantry (not in any pantry segment: a stack, "
           "static or other allocator's address, or a block already returned to the OS)",
           fn, p);
}

/* The block that holds `p`, after checking that `p` is a pointer pantry
 * handed out and that its page holds blocks. */
static pn_block_t *free_find_block(pn_segment_t *segment, pn_page_t *page, void *p,
                                   const char *fn) {
  if (PN_UNLIKELY(!pn_segment_is_valid(segment)))
    free_invalid(p, fn);
  /* racy: block_size is written by the owner before any block of the page
   * is handed out and cleared only after all came back; a legitimate free
   * always sees it set. */
  /* racy: area is 0 while the owner keeps the page trimmed (heap.c), when
   * no block of it is handed out; a legitimate free never sees that. */
  if (PN_UNLIKELY(page->block_size == 0 || pn_atomic_load_relaxed32u(&page->area) == 0))
    pn_fatal("%s(%p): double free or invalid pointer (its page holds no blocks)", fn, p);
  if (pn_page_is_block_start(page, p))
    return p;
  if (pn_page_has_aligned(page) && (uint8_t *)p >= page->page_start &&
      (uint8_t *)p < page->page_start + pn_atomic_load_relaxed32u(&page->area)) {
    /* An aligned allocation hands out its block's start rounded up to its
     * alignment A (pn_heap_malloc_aligned): a pointer p whose lowest set
     * bit is at least A and that lies less than A past the start. So p is
     * such a pointer exactly when p - start < lowbit(p) (the one multiple
     * of lowbit(p) in [start, start + lowbit(p))). Any other interior
     * pointer is the program's mistake: diagnosed below, not freed as the
     * block it points into. */
    pn_block_t *block = pn_page_block_start(page, p);
    uintptr_t lowbit = (uintptr_t)p & (~(uintptr_t)p + 1);
    if ((uintptr_t)p - (uintptr_t)block < lowbit)
      return block;
  }
  /* Past the carved end of a shrunk page (page.c's pn_page_shrink), where no
   * block is handed out: a block freed before, and given back since. */
  size_t off = (size_t)((uint8_t *)p - page->page_start);
  if ((uint8_t *)p >= page->page_start && off < (size_t)page->reserved * page->block_size &&
      off % page->block_size == 0)
    pn_fatal("%s(%p): double free or invalid pointer (past its page's carved blocks; block size "
             "%zu)",
             fn, p, page->block_size);
  pn_fatal("%s(%p): pointer into the middle of a block (block size %zu, page %p)", fn, p,
           page->block_size, (void *)page);
}

void pn_free_slow(void *p, const char *fn) {
  if (p == NULL)
    return;
  if (PN_UNLIKELY(!pn_segment_map_contains(p)))
    free_invalid(p, fn);
  pn_segment_t *segment = pn_segment_of(p);
  pn_page_t *page = pn_segment_page_of(segment, p);
  if (segment->kind == PN_PAGE_HUGE) {
    if (!pn_segment_is_valid(segment) || p != page->page_start)
      pn_fatal("%s(%p): not the start of a huge block (double free, or an interior pointer)", fn,
               p);
    pn_segment_free_huge(segment);
    return;
  }
  pn_block_t *block = free_find_block(segment, page, p, fn);
  /* A pool object (its segment has no heap owner, so it always lands here). */
  if (PN_UNLIKELY(page->pool != NULL))
    pn_pool_misfree(page->pool, p, fn);
  pn_heap_t *heap = pn_heap_tls;
  if ((pn_heap_t *)pn_atomic_load_relaxed(&segment->xowner) == heap)
    pn_heap_free_local_slow(heap, page, block, fn);
  else {
    /* A remote freer cannot scan the owner's lists, but it needs not: an
     * allocated block's link word was cleared when it was handed out (so it
     * holds user data, or 0, which decodes to the page key), and a free
     * block's decodes to NULL or into its page. Only user data equal to the
     * secret key XOR an address of the page would be misread. */
    if (PN_UNLIKELY(pn_block_maybe_free(page, block)))
      pn_fatal("%s(%p): double free (the block is already free: its link word points into its "
               "page; freed from a thread that does not own it; block size %zu)",
               fn, p, page->block_size);
    pn_page_free_remote(segment, page, block, fn);
    /* stats.c: into this thread's counters. A thread that only frees gets
     * its heap here, once, so its counters are its own (no shared atomic). */
    if (PN_UNLIKELY(heap->is_sentinel))
      heap = pn_heap_get_or_init();
    if (heap != NULL)
      pn_stats_remote_free(heap);
  }
}

/* ------------------------------------------------------------------------ */
/* The malloc-compatible API                                                */
/* ------------------------------------------------------------------------ */

void *pantry_malloc(size_t size) { return pn_malloc_inline(size); }

void pantry_free(void *p) { pn_free_inline(p, "pantry_free"); }

void *pantry_calloc(size_t count, size_t size) {
  size_t total;
  if (PN_UNLIKELY(__builtin_mul_overflow(count, size, &total))) {
    errno = ENOMEM;
    return NULL;
  }
  void *p = pn_malloc_inline(total);
  if (p != NULL)
    memset(p, 0, total);
  return p;
}

/* The bytes usable from `p` to the end of its block, after the checks every
 * free makes (a pointer pantry handed out, into a page that holds blocks, at
 * a block's start); diagnoses and aborts otherwise, naming `fn`. */
size_t pn_usable_size_checked(const void *p, const char *fn) {
  if (!pn_segment_map_contains(p))
    free_invalid((void *)p, fn);
  pn_segment_t *segment = pn_segment_of(p);
  pn_page_t *page = pn_segment_page_of(segment, p);
  if (segment->kind == PN_PAGE_HUGE) {
    if (!pn_segment_is_valid(segment) || p != page->page_start)
      pn_fatal("%s(%p): not the start of a huge block", fn, p);
    return page->block_size;
  }
  pn_block_t *block = free_find_block(segment, page, (void *)p, fn);
  return page->block_size - (size_t)((const uint8_t *)p - (const uint8_t *)block);
}

size_t pantry_usable_size(const void *p) {
  if (p == NULL)
    return 0;
  return pn_usable_size_checked(p, "pantry_usable_size");
}

void *pantry_realloc(void *p, size_t size) {
  if (p == NULL)
    return pn_malloc_inline(size);
  size_t usable = pn_usable_size_checked(p, "pantry_realloc");
  /* Before the copy reads it: a block that is free already (the same test
   * as free's; the owner confirms by a scan, another thread trusts the
   * decoded link, see pn_free_slow). */
  pn_segment_t *seg = pn_segment_of(p);
  pn_page_t *pg = pn_segment_page_of(seg, p);
  if (seg->kind != PN_PAGE_HUGE && pg->pool == NULL) {
    pn_block_t *block = pn_page_has_aligned(pg) ? pn_page_block_start(pg, p) : (pn_block_t *)p;
    if (PN_UNLIKELY(pn_block_maybe_free(pg, block))) {
      bool owner = (pn_heap_t *)pn_atomic_load_relaxed(&seg->xowner) == pn_heap_tls;
      if (!owner || pn_page_contains_free(pg, block))
        pn_fatal("pantry_realloc(%p): the block is already free (a double free or a use after "
                 "free; block size %zu)",
                 p, pg->block_size);
    }
  }
  /* In place only when the new size has the block's own size class (or, for
   * a huge block, wastes at most half of it), so that a free_sized or dealloc
   * with the new size still finds the class it expects. */
  pn_page_t *page = pn_segment_page_of(pn_segment_of(p), p);
  if (size > 0 && size <= usable &&
      (page->bin == PN_BIN_HUGE ? size >= usable / 2 && size > PN_LARGE_SIZE_MAX
                                : !pn_page_has_aligned(page) && pn_bin(size) == page->bin))
    return p;
  void *q = pn_malloc_inline(size);
  if (q == NULL)
    return NULL;
  memcpy(q, p, size < usable ? size : usable);
  pn_free_inline(p, "pantry_realloc");
  return q;
}

void *pantry_aligned_alloc(size_t align, size_t size) {
  if (PN_UNLIKELY(align == 0 || (align & (align - 1)) != 0)) {
    errno = EINVAL;
    return NULL;
  }
  if (align <= 16)
    return pn_malloc_inline(size);
  if (PN_UNLIKELY(align > PN_ALIGN_MAX)) {
    errno = ENOMEM;
    return NULL;
  }
  pn_heap_t *heap = pn_heap_get_or_init();
  if (PN_UNLIKELY(heap == NULL)) { /* the fallback: see heap.c */
    void *block;
    if (pn_segment_alloc_huge(size, align, &block) == NULL)
      return NULL;
    return block;
  }
  return pn_heap_malloc_aligned(heap, size, align);
}

/* ------------------------------------------------------------------------ */
/* Sized frees and the layout API                                           */
/* ------------------------------------------------------------------------ */

/* Whether a block of `page` can have been allocated for `size` bytes with
 * alignment `align`: the size class of `size` (or, for an alignment above
 * 16, of the padded size), or any size that fits where the page's class
 * does not say (huge blocks, pool objects, pages with aligned blocks). */
static bool layout_fits_page(const pn_page_t *page, size_t size, size_t align, size_t usable) {
  if (size > usable)
    return false;
  if (page->bin == PN_BIN_HUGE || page->pool != NULL || pn_page_has_aligned(page))
    return true;
  if (pn_bin(size) == page->bin)
    return true;
  return align > 16 && size + align - 1 <= PN_LARGE_SIZE_MAX &&
         pn_bin(size + align - 1) == page->bin;
}

static void free_sized_checked(void *p, size_t size, size_t align, const char *fn) {
  if (p == NULL)
    return;
  if (PN_UNLIKELY(align == 0 || (align & (align - 1)) != 0))
    pn_fatal("%s(%p, size %zu, align %zu): alignment is not a power of two", fn, p, size, align);
  if (PN_UNLIKELY(((uintptr_t)p & (align - 1)) != 0))
    pn_fatal("%s(%p, size %zu, align %zu): wrong layout: the pointer is not aligned to %zu", fn, p,
             size, align, align);
  size_t usable = pn_usable_size_checked(p, fn);
  pn_page_t *page = pn_segment_page_of(pn_segment_of(p), p);
  if (PN_UNLIKELY(!layout_fits_page(page, size, align, usable)))
    pn_fatal("%s(%p, size %zu, align %zu): wrong size: the block is of size class %zu bytes "
             "(%zu usable), which such a request never gets",
             fn, p, size, align, page->block_size, usable);
  pn_free_inline(p, fn);
}

void pantry_free_sized(void *p, size_t size) {
  free_sized_checked(p, size, 1, "pantry_free_sized");
}

void *pantry_alloc(pantry_layout_t layout) {
  return pantry_aligned_alloc(layout.align, layout.size);
}

void pantry_dealloc(void *p, pantry_layout_t layout) {
  free_sized_checked(p, layout.size, layout.align, "pantry_dealloc");
}
