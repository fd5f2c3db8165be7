/* leak.c - the leak report: with PANTRY_LEAK_REPORT=1, at exit, the blocks
 * still live by size class, the pool objects still live by pool, and the
 * arenas never destroyed.
 *
 * Layer: beside stats.c, reading the segment layer. It walks the segment
 * map (every mapped segment has its bit) and reads page headers without
 * synchronisation: at exit other threads may still run, so the figures are
 * a snapshot (racy: counts only, no pointer is followed but the page's own
 * fields). Live blocks of a page = used - the remote frees not yet collected
 * (the count packed in xthread_free); blocks on the owner's local lists are
 * not counted as live, since used already excludes them.
 * Arenas: counted only when the report is on (pn_leak_tracking, set by
 * options.c from PANTRY_LEAK_REPORT when the library starts), so create and
 * destroy pay nothing otherwise.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "pantry.h"

bool pn_leak_tracking;
static pn_atomic_uintptr_t leak_xarenas_live; /* atomic relaxed: created - destroyed */

void pn_leak_arena_created(void) { pn_atomic_fetch_add_relaxed(&leak_xarenas_live, 1); }
void pn_leak_arena_destroyed(void) { pn_atomic_fetch_sub_relaxed(&leak_xarenas_live, 1); }

#define LEAK_POOLS_MAX 64

typedef struct leak_pool_row {
  const void *pool;
  size_t objects;
  size_t bytes;
} leak_pool_row_t;

static uint32_t leak_page_live(pn_page_t *page) {
  uintptr_t word = pn_atomic_load_relaxed(&page->xthread_free);
  uint32_t pending = (uint32_t)(word >> PN_THREAD_FREE_COUNT_SHIFT);
  return page->used > pending ? page->used - pending : 0;
}

static void leak_report(void) {
  size_t bin_blocks[PN_BIN_COUNT] = {0};
  size_t huge_blocks = 0, huge_bytes = 0, total_blocks = 0, total_bytes = 0;
  leak_pool_row_t pools[LEAK_POOLS_MAX];
  size_t pool_rows = 0;
  for (size_t word = 0; word < PN_SEGMENT_MAP_BITS / 64; word++) {
    uintptr_t bits = pn_atomic_load_relaxed(&pn_segment_map[word]);
    while (bits) {
      size_t index = word * 64 + (size_t)__builtin_ctzl(bits);
      bits &= bits - 1;
      pn_segment_t *segment = (pn_segment_t *)(index << PN_SEGMENT_SHIFT);
      if (!pn_segment_is_valid(segment))
        continue;
      if (segment->kind == PN_PAGE_HUGE) {
        huge_blocks++;
        huge_bytes += segment->pages[0].block_size;
        continue;
      }
      for (uint32_t i = 0; i < segment->page_count; i++) {
        pn_page_t *page = &segment->pages[i];
        if (page->block_size == 0)
          continue;
        uint32_t live = leak_page_live(page);
        if (live == 0)
          continue;
        if (page->pool != NULL) {
          size_t r = 0;
          while (r < pool_rows && pools[r].pool != page->pool)
            r++;
          if (r == pool_rows && pool_rows < LEAK_POOLS_MAX)
            pools[pool_rows++] = (leak_pool_row_t){page->pool, 0, 0};
          if (r < pool_rows) {
            pools[r].objects += live;
            pools[r].bytes += (size_t)live * page->block_size;
          }
          continue;
        }
        bin_blocks[page->bin] += live;
        total_blocks += live;
        total_bytes += (size_t)live * page->block_size;
      }
    }
  }
  fprintf(stderr, "pantry: leak report: %zu blocks (%zu bytes) live at exit\n",
          total_blocks + huge_blocks, total_bytes + huge_bytes);
  for (unsigned bin = 1; bin <= PN_BIN_LARGE_MAX; bin++)
    if (bin_blocks[bin] != 0)
      fprintf(stderr, "pantry:   size class %7zu bytes: %zu blocks\n", pn_bin_size(bin),
              bin_blocks[bin]);
  if (huge_blocks != 0)
    fprintf(stderr, "pantry:   huge blocks: %zu (%zu bytes)\n", huge_blocks, huge_bytes);
  for (size_t r = 0; r < pool_rows; r++) {
    /* The pool's own count: page->used also counts free objects parked in
     * the threads' magazines (pool.c). */
    pantry_pool_stats_t st;
    pantry_pool_stats((pantry_pool_t *)pools[r].pool, &st);
    if (st.live == 0)
      continue;
    fprintf(stderr,
            "pantry:   pool \"%s\": %zu objects live (%zu bytes), never freed or destroyed\n",
            pantry_pool_name((const pantry_pool_t *)pools[r].pool), (size_t)st.live,
            (size_t)st.live * (size_t)st.object_size);
  }
  uintptr_t arenas = pn_atomic_load_relaxed(&leak_xarenas_live);
  if (arenas != 0)
    fprintf(stderr, "pantry:   arenas never destroyed: %zu\n", (size_t)arenas);
}

__attribute__((destructor)) static void leak_exit(void) {
  if (pn_leak_tracking)
    leak_report();
}
