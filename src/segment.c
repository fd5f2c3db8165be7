/* segment.c - segments and pages: carving a segment into pages, taking and
 * releasing pages, huge segments.
 *
 * Layer: below heap.c and page.c, above depot.c and os.c.
 * Shared state: segment->xowner and segment->xfull_freed are atomics that
 * other threads read or set (see internal.h), and so is the purge state,
 * which purge.c owns; everything else here is written
 * by the segment's owner, or by nobody while the segment sits in the depot.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "internal.h"

uintptr_t pn_cookie_key;

_Static_assert(PN_SEGMENT_HEADER_SIZE < ((size_t)1 << PN_SMALL_PAGE_SHIFT) / 2,
               "the segment header must leave most of page 0 for blocks");
_Static_assert(PN_PAGES_MAX << PN_SMALL_PAGE_SHIFT == PN_SEGMENT_SIZE, "64 small pages");

static const uint32_t segment_page_shift[PN_PAGE_KINDS] = {
    [PN_PAGE_SMALL] = PN_SMALL_PAGE_SHIFT,
    [PN_PAGE_MEDIUM] = PN_MEDIUM_PAGE_SHIFT,
    [PN_PAGE_LARGE] = PN_SEGMENT_SHIFT,
    [PN_PAGE_HUGE] = 63,
};

/* Lay out an empty segment for pages of `kind`. The caller owns the segment
 * exclusively (fresh from the OS, or popped from the depot's cache). */
void pn_segment_format(pn_segment_t *segment, pn_page_kind_t kind) {
  segment->cookie = (uintptr_t)segment ^ pn_cookie_key;
  segment->kind = kind;
  segment->page_shift = segment_page_shift[kind];
  segment->page_count = (uint32_t)(PN_SEGMENT_SIZE >> segment->page_shift);
  segment->used_pages = 0;
  /* The purge state (xpurge_pending, xpurging, xcommitted) is kept: it is in
   * 64 KiB units, valid for any layout (purge.c). */
  segment->next = segment->prev = NULL;
  pn_atomic_store_relaxed(&segment->xfull_freed, 0);
  memset(segment->pages, 0, sizeof segment->pages);
  for (uint32_t i = 0; i < PN_PAGES_MAX; i++)
    segment->pages[i].index = (uint8_t)i;
}

/* A segment of PN_SEGMENT_SIZE for `kind`: from the depot's cache of free
 * segments, else from the OS. Returns NULL (errno ENOMEM) when both fail. */
pn_segment_t *pn_segment_alloc(pn_page_kind_t kind) {
  pn_segment_t *segment = pn_depot_take_cached();
  if (segment == NULL) {
    segment = pn_os_alloc_aligned(PN_SEGMENT_SIZE, PN_SEGMENT_SIZE);
    if (segment == NULL)
      return NULL;
    segment->mapping_size = PN_SEGMENT_SIZE;
    if (pn_secure) { /* the guards stay for the segment's life, cached or not */
      pn_os_protect((uint8_t *)segment + PN_SEGMENT_HEADER_SIZE, PN_SEGMENT_GUARD_SIZE);
      pn_os_protect((uint8_t *)segment + PN_SEGMENT_SIZE - PN_SEGMENT_GUARD_SIZE,
                    PN_SEGMENT_GUARD_SIZE);
    }
    pn_segment_map_set(segment, true);
    pn_stat_add(PN_STAT_SEGMENTS_MAPPED, 1);
    pn_stat_add(PN_STAT_BYTES_MAPPED, PN_SEGMENT_SIZE);
    pn_stat_add(PN_STAT_BYTES_COMMITTED, PN_SEGMENT_HEADER_SIZE); /* stats: the header */
  }
  pn_segment_format(segment, kind);
  return segment;
}

/* A huge segment holding one block of `size` bytes aligned to `align`
 * (<= PN_ALIGN_MAX, so the block's pointer stays in the first
 * PN_SEGMENT_SIZE and finds its header by masking). *block receives it. */
pn_segment_t *pn_segment_alloc_huge(size_t size, size_t align, void **block) {
  if (align < 16)
    align = 16;
  size_t header = PN_SEGMENT_FIRST_OFFSET;
  size_t offset = (header + align - 1) & ~(align - 1);
  if (size > SIZE_MAX / 2 - offset - PN_SEGMENT_SIZE) {
    errno = ENOMEM;
    return NULL;
  }
  /* Secure builds end the mapping with a guard page too, as every segment
   * does: an overflow off the end of a huge block faults instead of
   * reaching whatever is mapped next (another segment's header, say). */
  size_t mapping =
      ((offset + size + PN_OS_PAGE_SIZE - 1) & ~(PN_OS_PAGE_SIZE - 1)) + PN_SEGMENT_GUARD_SIZE;
  pn_segment_t *segment = pn_os_alloc_aligned(mapping, PN_SEGMENT_SIZE);
  if (segment == NULL)
    return NULL;
  segment->mapping_size = mapping;
  pn_segment_format(segment, PN_PAGE_HUGE);
  segment->page_count = 1;
  segment->used_pages = 1;
  pn_page_t *page = &segment->pages[0];
  page->page_start = (uint8_t *)segment + offset;
  page->block_size = mapping - PN_SEGMENT_GUARD_SIZE - offset;
  page->reserved = page->capacity = page->used = 1;
  page->bin = PN_BIN_HUGE;
  page->area = 1; /* only the block's first byte is a valid free pointer */
  page->block_odd_inv = 1;
  page->block_shift = 0;
  page->block_div_limit = UINT32_MAX;
  if (pn_secure) {
    pn_os_protect((uint8_t *)segment + PN_SEGMENT_HEADER_SIZE, PN_SEGMENT_GUARD_SIZE);
    pn_os_protect((uint8_t *)segment + mapping - PN_SEGMENT_GUARD_SIZE, PN_SEGMENT_GUARD_SIZE);
  }
  pn_segment_map_set(segment, true);
  pn_stat_add(PN_STAT_HUGE_MAPPED, 1);
  pn_stat_add(PN_STAT_BYTES_MAPPED, mapping);
  pn_stat_add(PN_STAT_BYTES_COMMITTED, mapping); /* stats */
  pn_stat_add(PN_STAT_HUGE_BYTES, page->block_size);
  *block = page->page_start;
  return segment;
}

void pn_segment_free_huge(pn_segment_t *segment) {
  pn_segment_map_set(segment, false);
  segment->cookie = 0;
  pn_stat_add(PN_STAT_HUGE_UNMAPPED, 1);
  pn_stat_sub(PN_STAT_BYTES_MAPPED, segment->mapping_size);
  pn_stat_sub(PN_STAT_BYTES_COMMITTED, segment->mapping_size); /* stats */
  pn_stat_sub(PN_STAT_HUGE_BYTES, segment->pages[0].block_size);
  pn_os_free(segment, segment->mapping_size);
}

/* Take an unused page of `segment` (the caller checked used_pages <
 * page_count). Returns NULL in the rare case that a purger is giving every
 * unused page's memory back at this moment (pn_purge_page_take; never for a
 * segment whose pages were never released, such as a pool's). Owner only. */
pn_page_t *pn_segment_page_take(pn_segment_t *segment) {
  bool unused = false;
  for (uint32_t i = 0; i < segment->page_count; i++) {
    pn_page_t *page = &segment->pages[i];
    if (page->block_size == 0) {
      unused = true;
      if (!pn_purge_page_take(segment, page))
        continue; /* being purged: another one */
      segment->used_pages++;
      return page;
    }
  }
  if (unused)
    return NULL;
  pn_fatal("segment %p: no unused page though used_pages is %u of %u", (void *)segment,
           segment->used_pages, segment->page_count);
}

/* Return an empty page (used == 0, no remote frees pending) to its segment.
 * Owner only. */
void pn_segment_page_release(pn_segment_t *segment, pn_page_t *page) {
  if (pn_debug && (page->used != 0 || pn_atomic_load_relaxed(&page->xthread_free) != 0))
    pn_fatal("page %p released with %u blocks in use", (void *)page, page->used);
  uint8_t index = page->index;
  memset(page, 0, sizeof *page);
  page->index = index;
  segment->used_pages--;
  pn_purge_page_release(segment, index); /* its units wait for the purge delay */
}

uint64_t pn_clock_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
