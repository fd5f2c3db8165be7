/* alloc.h - the allocation and free fast paths, inline, for alloc.c and
 * override.c (the top layer). Everything they do not handle falls into one
 * out-of-line slow path per direction.
 */
#ifndef PN_ALLOC_H
#define PN_ALLOC_H

#include "internal.h"

/* Allocate: the thread's heap -> the page for the size class -> pop its free
 * list. No lock, no atomic, no call. */
static inline void *pn_malloc_inline(size_t size) {
  pn_heap_t *heap = pn_heap_tls;
  if (PN_LIKELY(size <= PN_DIRECT_SIZE_MAX)) {
    pn_page_t *page = heap->pages_direct[pn_wsize(size)];
    if (PN_LIKELY(page->free != NULL))
      return pn_page_pop(page);
  }
  return pn_heap_malloc_slow(heap, size);
}

void pn_free_slow(void *p, const char *fn) PN_HIDDEN PN_NOINLINE;
size_t pn_usable_size_checked(const void *p, const char *fn) PN_HIDDEN;

/* Free: a block of a page this thread owns goes on the page's local free
 * list with no atomics. Two checks ride along at almost no cost: that `p` is
 * the start of a block (a multiply and a rotate), and that its first word does not look
 * like a free block's link (a double free suspect, confirmed in the slow
 * path). A page parked full or emptied by this free goes to
 * pn_heap_page_freed. Everything else (NULL, foreign pointers, remote
 * frees, interior pointers of aligned blocks, huge blocks, pool objects,
 * a suspect) goes to pn_free_slow. */
static inline void pn_free_inline(void *p, const char *fn) {
  if (PN_LIKELY(PANTRY_CHECK_FOREIGN ? pn_segment_map_contains(p) : p != NULL)) {
    pn_segment_t *segment = pn_segment_of(p);
    pn_page_t *page = pn_segment_page_of(segment, p);
    pn_heap_t *heap = pn_heap_tls;
    /* The owner test reads xowner relaxed: only this thread can have stored
     * its own heap there, so equality is never stale. Pool and huge
     * segments have no owner heap: they never pass it. */
    pn_block_t *block = p;
    if (PN_LIKELY((pn_heap_t *)pn_atomic_load_relaxed(&segment->xowner) == heap &&
                  (!PANTRY_CHECK_INTERIOR || pn_page_is_block_start(page, p)) &&
                  !pn_block_maybe_free(page, block) && !pn_debug)) {
      pn_block_release(page, block, fn);
      pn_block_set_next(page, block, page->local_free);
      page->local_free = block;
      if (PN_UNLIKELY((--page->used == 0) | page->flags.x.in_full))
        pn_heap_page_freed(heap, page);
      return;
    }
  }
  pn_free_slow(p, fn);
}

#endif /* PN_ALLOC_H */
