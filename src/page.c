/* page.c - free lists: formatting a page for a size class, carving blocks,
 * collecting local and remote frees, the full state.
 *
 * Layer: below heap.c, above segment.c.
 * Shared state: page->xthread_free is the only field other threads write
 * (a CAS push per remote free); the owner takes the whole list with one
 * exchange. Every other field is the owner's.
 */
#include <string.h>

#include "internal.h"

/* Blocks carved per extension: about one OS page, at least one block, so a
 * fresh page touches memory only as it is used. */
#define PAGE_EXTEND_BYTES 4096

void pn_page_format(pn_page_t *page, size_t block_size, unsigned bin, void *pool) {
  pn_segment_t *segment = pn_page_segment(page);
  uint8_t *start = (uint8_t *)segment + ((size_t)page->index << segment->page_shift);
  size_t page_size = (size_t)1 << segment->page_shift;
  if (page->index == 0) {
    start += PN_SEGMENT_FIRST_OFFSET;
    page_size -= PN_SEGMENT_FIRST_OFFSET;
  }
  if (page->index == segment->page_count - 1)
    page_size -= PN_SEGMENT_GUARD_SIZE;
  pn_track_unpoison(start, page_size); /* a page of another size class may have poisoned it */
  page->page_start = start;
  page->block_size = block_size;
  page->bin = (uint8_t)bin;
  page->pool = pool;
  page->reserved = (uint32_t)(page_size / block_size);
  /* A heap page's area covers the blocks carved so far (pn_page_extend
   * raises it), so a free of a block never handed out, past them, is caught
   * (alloc.c); a pool carves its own way and takes frees anywhere in it. */
  page->area = pool != NULL ? (uint32_t)(page->reserved * block_size) : 0;
  page->capacity = 0;
  page->used = 0;
  page->free = page->local_free = NULL;
  page->flags.all = 0;
  page->next = page->prev = NULL;
  /* A key per format: the process key mixed with the page's address and a
   * generation-like odd multiplier; never 0, so NULL is never stored. */
  page->key = ((pn_cookie_key ^ (uintptr_t)page ^ (uintptr_t)block_size) * 0x9E3779B97F4A7C15u) | 1;
  pn_atomic_store_relaxed(&page->xthread_free, 0);
  /* block_size = odd << shift; the inverse of odd mod 2^32 by Newton's
   * iteration (each step doubles the correct low bits: 3, 6, 12, 24, 48). */
  uint32_t shift = (uint32_t)__builtin_ctzl(block_size);
  uint32_t odd = (uint32_t)(block_size >> shift);
  uint32_t inv = odd;
  for (int i = 0; i < 4; i++)
    inv *= 2u - odd * inv;
  page->block_shift = (uint8_t)shift;
  page->block_odd_inv = inv;
  page->block_div_limit = (uint32_t)(UINT32_MAX / block_size);
}

/* Carve more blocks onto the free list. Owner only; page->free is NULL. */
void pn_page_extend(pn_page_t *page) {
  uint32_t room = page->reserved - page->capacity;
  if (room == 0)
    return;
  uint32_t count = (uint32_t)(PAGE_EXTEND_BYTES / page->block_size);
  if (count < 1)
    count = 1;
  if (count > room)
    count = room;
  uint8_t *first = page->page_start + (size_t)page->capacity * page->block_size;
  uint8_t *p = first;
  for (uint32_t i = 0; i + 1 < count; i++) {
    pn_block_set_next(page, (pn_block_t *)p, (pn_block_t *)(p + page->block_size));
    p += page->block_size;
  }
  pn_block_set_next(page, (pn_block_t *)p, page->free);
  page->free = (pn_block_t *)first;
  page->capacity += count;
  /* A heap page takes frees only below its carved end (pn_page_format,
   * pn_page_shrink): carving moves the end. Relaxed: a block is carved
   * before it is handed out, so whoever frees it sees the store through
   * the handoff. */
  if (PN_UNLIKELY((size_t)page->capacity * page->block_size > page->area))
    pn_atomic_store_relaxed32u(&page->area, (uint32_t)((size_t)page->capacity * page->block_size));
}

/* Take the whole remote-free list onto page->free (clearing
 * PN_THREAD_FREE_FULL). Owner only. */
static void page_collect_thread_free(pn_page_t *page) {
  /* Acquire: matches the release CAS in pn_page_free_remote, so every
   * block->next written by a remote freer is visible. Clearing
   * PN_THREAD_FREE_FULL here loses nothing: the owner collects a parked page
   * only as it takes the page out of the full state (unfull, adopt, abandon,
   * tidy), after which nobody needs the report; on a page that is not parked
   * the flag is a leftover (see heap_page_unfull). */
  uintptr_t word = pn_atomic_exchange_acquire(&page->xthread_free, 0);
  pn_block_t *head = (pn_block_t *)(word & PN_THREAD_FREE_PTR_MASK);
  uint32_t count = (uint32_t)(word >> PN_THREAD_FREE_COUNT_SHIFT);
  if (head == NULL)
    return;
  if (PN_UNLIKELY(count > page->used))
    pn_fatal("page %p (block size %zu): %u remote frees but only %u blocks in use: a block was "
             "freed twice from another thread",
             (void *)page, page->block_size, count, page->used);
  if (page->free != NULL) { /* rare (abandon, adopt): splice at the tail */
    pn_block_t *tail = head;
    while (pn_block_next(page, tail) != NULL)
      tail = pn_block_next(page, tail);
    pn_block_set_next(page, tail, page->free);
  }
  page->free = head;
  page->used -= count;
}

/* Move what others freed onto page->free: first the owner's local_free,
 * then, if that is empty, the remote frees. Owner only. */
void pn_page_collect(pn_page_t *page) {
  if (page->free != NULL)
    return;
  if (page->local_free != NULL) {
    page->free = page->local_free;
    page->local_free = NULL;
    return;
  }
  /* racy: a relaxed peek saves the exchange when no remote free came. */
  if ((pn_atomic_load_relaxed(&page->xthread_free) & PN_THREAD_FREE_PTR_MASK) == 0)
    return;
  page_collect_thread_free(page);
}

/* Take every remote free onto page->free and clear PN_THREAD_FREE_FULL,
 * so page->used is exact. Owner only (or the thread abandoning or adopting
 * the segment, which owns it at that moment). */
void pn_page_collect_all(pn_page_t *page) { page_collect_thread_free(page); }

/* The page has no free block and cannot grow: try to park it in the full
 * state. Fails (returns false) when a remote free arrived meanwhile; the
 * caller collects it instead. Owner only.
 * The CAS from 0 (empty list, flag clear) to the flag makes sure the flag is
 * set only on an empty list, so the remote free that clears it is the first
 * one after parking: exactly one thread reports the page. */
bool pn_page_try_mark_full(pn_page_t *page) {
  uintptr_t expected = 0;
  /* An empty list that still carries the flag (heap_page_unfull leaves it)
   * is parked as it is: no remote free came since the flag was set, so the
   * next one clears it and reports the page, as after the CAS. */
  if (!pn_atomic_cas_strong_relaxed(&page->xthread_free, &expected, PN_THREAD_FREE_FULL) &&
      expected != PN_THREAD_FREE_FULL)
    return false;
  page->flags.x.in_full = 1;
  return true;
}

/* Blocks freed by a thread that does not own the page, head..tail (`count`
 * of them, already linked; pools push a run of one page's objects at once)
 * or one block (pn_page_free_remote): one CAS push, the count packed in the
 * word.
 * ABA cannot hurt a push: we never read through the old head, we only link
 * to it, so whatever happened to it between the load and the CAS, the list
 * we publish is the one we saw with our block in front.
 * Release: publishes block->next to the owner's acquire exchange in
 * pn_page_collect. If the push clears PN_THREAD_FREE_FULL, this thread is the
 * one (see pn_page_try_mark_full) that reports the page to its owner through
 * segment->xfull_freed (release, matching the owner's acquire exchange in
 * pn_segment_take_full_freed). */
void pn_page_push_remote(pn_segment_t *segment, pn_page_t *page, pn_block_t *head, pn_block_t *tail,
                         uint32_t count) {
  uintptr_t old = pn_atomic_load_relaxed(&page->xthread_free);
  uintptr_t word;
  bool reporting = false;
  do {
    if (PN_UNLIKELY((old & PN_THREAD_FREE_FULL) != 0 && !reporting)) {
      pn_page_report_begin(segment); /* before the CAS that may publish (internal.h) */
      reporting = true;
    }
    pn_block_set_next(page, tail, (pn_block_t *)(old & PN_THREAD_FREE_PTR_MASK));
    uintptr_t total = (old >> PN_THREAD_FREE_COUNT_SHIFT) + count;
    word = (uintptr_t)head | (total << PN_THREAD_FREE_COUNT_SHIFT);
  } while (!pn_atomic_cas_weak_release(&page->xthread_free, &old, word));
  if (old & PN_THREAD_FREE_FULL)
    pn_atomic_fetch_or_release(&segment->xfull_freed, (uintptr_t)1 << page->index);
  if (reporting)
    pn_page_report_end(segment);
}

void pn_page_free_remote(pn_segment_t *segment, pn_page_t *page, pn_block_t *block,
                         const char *fn) {
  pn_block_release_remote(page, block, fn);
  pn_page_push_remote(segment, page, block, block, 1);
}

/* The start of the block that contains `p` (for pages that hand out
 * interior pointers of aligned blocks). */
void *pn_page_block_start(const pn_page_t *page, const void *p) {
  size_t off = (size_t)((const uint8_t *)p - page->page_start);
  return page->page_start + off - off % page->block_size;
}

/* Debug: whether `block` is already on the page's free or local free list.
 * Owner only; O(blocks). */
bool pn_page_contains_free(const pn_page_t *page, const void *block) {
  for (const pn_block_t *b = page->free; b != NULL; b = pn_block_next(page, b))
    if (b == block)
      return true;
  for (const pn_block_t *b = page->local_free; b != NULL; b = pn_block_next(page, b))
    if (b == block)
      return true;
  return false;
}

/* Shrinking: after a burst, a page that keeps a few live blocks (allocated
 * before the burst, so near its start) was carved and touched far beyond
 * them; its free blocks past the last live one hold memory that no purge
 * unit can give back, since the page is in use. Shrinking un-carves them:
 * capacity drops to just past the last live block, the free list is rebuilt
 * from the free blocks below it (in address order), and the whole OS pages
 * past it are given back (madvise). pn_page_extend carves them again on
 * demand, as it carves a fresh page. Live blocks anywhere else in the page
 * are left where they are (no holes are made). The page's purge unit stays
 * taken (segment->xcommitted, the stats' committed bytes, are unchanged).
 * Owner only (or the thread that holds an abandoned segment it popped).
 * Remote frees that arrive meanwhile count as used, as ever: a block freed
 * after our exchange is below the cut, since it was live when we looked. */
#define PAGE_SHRINK_BLOCKS_MAX (((size_t)1 << PN_SMALL_PAGE_SHIFT) / 16) /* 4096: 512 B of map */
#define PAGE_SHRINK_MIN_BYTES ((size_t)16 * 1024) /* less is not worth a madvise */

/* Whether pn_page_shrink may pay: PAGE_SHRINK_MIN_BYTES free, and at most a
 * quarter of the carved blocks in use unless they are few (a look costs a
 * step per block; a page of blocks of 1 KiB or more has 64 at most). O(1);
 * the owner's view (remote frees not collected count as used). */
bool pn_page_shrink_worth(const pn_page_t *page) {
  return page->area != 0 && page->pool == NULL && page->capacity <= PAGE_SHRINK_BLOCKS_MAX &&
         (page->used <= page->capacity / 4 || page->capacity <= 64) &&
         (size_t)(page->capacity - page->used) * page->block_size >= PAGE_SHRINK_MIN_BYTES;
}

/* Returns the bytes given back (0 when a live block sits too near the end). */
size_t pn_page_shrink(pn_page_t *page) {
  if (!pn_page_shrink_worth(page))
    return 0;
  pn_page_collect_all(page); /* remote frees: used becomes exact but for late ones */
  uint64_t free_map[PAGE_SHRINK_BLOCKS_MAX / 64] = {0};
  pn_block_t *lists[2] = {page->free, page->local_free};
  for (int l = 0; l < 2; l++) {
    for (pn_block_t *b = lists[l]; b != NULL; b = pn_block_next(page, b)) {
      size_t i = (size_t)((uint8_t *)b - page->page_start) / page->block_size;
      free_map[i / 64] |= (uint64_t)1 << (i % 64);
    }
  }
  /* keep = 1 + the index of the last live block (0 when none is live: an
   * empty page is released or kept whole, never shrunk, so area, which
   * then shrinks to keep's blocks, is never 0, the mark of a trimmed page) */
  uint32_t keep = 0;
  for (size_t w = (page->capacity + 63) / 64; w-- > 0;) {
    uint64_t live = ~free_map[w];
    if (w == page->capacity / 64)
      live &= ((uint64_t)1 << (page->capacity % 64)) - 1; /* blocks below capacity only */
    if (live != 0) {
      keep = (uint32_t)(w * 64 + 64 - (size_t)__builtin_clzll(live));
      break;
    }
  }
  uintptr_t os_mask = PN_OS_PAGE_SIZE - 1;
  uintptr_t cut = (uintptr_t)page->page_start + (uintptr_t)keep * page->block_size;
  uintptr_t end = (uintptr_t)page->page_start + (uintptr_t)page->capacity * page->block_size;
  uintptr_t start = (cut + os_mask) & ~os_mask;
  end = (end + os_mask) & ~os_mask; /* past the carved blocks only uncarved ones: unused */
  if (keep == 0 || end <= start || end - start < PAGE_SHRINK_MIN_BYTES)
    return 0;
  /* The free blocks below the cut, rebuilt as one list in address order. */
  pn_block_t *head = NULL;
  for (uint32_t i = keep; i-- > 0;) {
    if ((free_map[i / 64] >> (i % 64)) & 1) {
      pn_block_t *b = (pn_block_t *)(page->page_start + (size_t)i * page->block_size);
      pn_block_set_next(page, b, head);
      head = b;
    }
  }
  page->free = head;
  page->local_free = NULL;
  page->capacity = keep; /* used + |free| == keep: every block past it was free */
  /* A free of a block past the cut (a double free: none is handed out) now
   * fails pn_page_is_block_start and is diagnosed in the slow path, instead
   * of reading a link word that the madvise below zeroes. */
  pn_atomic_store_relaxed32u(&page->area, (uint32_t)((size_t)keep * page->block_size));
  pn_os_purge((void *)start, (size_t)(end - start));
  /* Uncarved memory, as after pn_page_format (the freed blocks were poisoned). */
  pn_track_unpoison((void *)cut, (size_t)(end - cut));
  pn_stat_add(PN_STAT_PURGES, 1);
  pn_stat_add(PN_STAT_BYTES_PURGED, (size_t)(end - start));
  return (size_t)(end - start);
}
