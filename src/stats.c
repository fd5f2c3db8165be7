/* stats.c - statistics: the process-wide counters of the segment layer and
 * the depot, the per-thread counters of the thread heaps, pantry_stats_get,
 * pantry_stats_print and the exit report (PANTRY_SHOW_STATS=1).
 *
 * Process-wide counters (pn_stats) are touched only on slow paths (a
 * segment mapped, unmapped, abandoned, adopted, cached, a unit purged),
 * never per block, so plain shared atomic counters cost nothing measurable.
 *
 * Per-block counts live in the thread heaps: each heap claims a
 * pn_heap_stats_t from a registry (a lock-free list of blocks that are never
 * freed) and counts its pages' blocks when a page reaches a slow path
 * (heap.c, pn_heap_stat_page); no counter is touched on the fast paths, and
 * the owner writes its counters with a relaxed load and store, never a
 * read-modify-write. A heap that is abandoned (its thread exits) folds its
 * counts into stats_total and gives its block back for the next thread.
 * pantry_stats_get adds up stats_total and every claimed block.
 *
 * Layer: beside everything; heap.c and alloc.c call the counting hooks,
 * segment.c, depot.c and purge.c add to pn_stats. Reads the calling
 * thread's own heap (its pages) to settle its counts.
 * Shared state: pn_stats (atomic relaxed), stats_xregistry (head of the
 * registry: CAS release by a thread that maps a new chunk of blocks, load
 * acquire by walkers; blocks are never removed, so no ABA and no reclamation;
 * within a chunk a walker steps to the adjacent block, see stats_next),
 * the blocks (see struct pn_heap_stats in internal.h) and stats_total
 * (fetch_add/fetch_sub by folding and adopting threads, relaxed).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "pantry.h"

pn_stats_counters_t pn_stats;

_Static_assert(PANTRY_STATS_SIZE_CLASSES == PN_BIN_LARGE_MAX, "one entry per size class");

static const char *const stats_names[PN_STAT_COUNT] = {
    [PN_STAT_SEGMENTS_MAPPED] = "segments mapped",
    [PN_STAT_SEGMENTS_UNMAPPED] = "segments unmapped",
    [PN_STAT_SEGMENTS_ABANDONED] = "segments abandoned",
    [PN_STAT_SEGMENTS_ADOPTED] = "segments adopted",
    [PN_STAT_SEGMENTS_CACHED] = "segments cached",
    [PN_STAT_SEGMENTS_REUSED] = "segments reused from cache",
    [PN_STAT_HUGE_MAPPED] = "huge blocks mapped",
    [PN_STAT_HUGE_UNMAPPED] = "huge blocks unmapped",
    [PN_STAT_BYTES_MAPPED] = "bytes mapped now",
    [PN_STAT_HEAPS_CREATED] = "thread heaps created",
    [PN_STAT_HEAPS_ABANDONED] = "thread heaps abandoned",
    [PN_STAT_FALLBACK_ALLOCS] = "fallback allocations",
    [PN_STAT_PAGES_PURGED] = "64 KiB units purged",
    [PN_STAT_PURGES] = "purge calls (madvise)",
    [PN_STAT_BYTES_PURGED] = "bytes purged",
    [PN_STAT_HUGE_BYTES] = "huge block bytes now",
    [PN_STAT_BYTES_COMMITTED] = "bytes committed now",
    [PN_STAT_SEGMENTS_FLUSHED] = "cached segments flushed",
};

void pn_stats_print_counters(FILE *out) {
  for (int i = 0; i < PN_STAT_COUNT; i++)
    fprintf(out, "pantry: %-28s %lu\n", stats_names[i],
            (unsigned long)pn_atomic_load_relaxed(&pn_stats.x[i]));
}

static uintptr_t stats_get(pn_stat_t stat) { return pn_atomic_load_relaxed(&pn_stats.x[stat]); }

/* ------------------------------------------------------------------------ */
/* The registry of per-thread counters                                      */
/* ------------------------------------------------------------------------ */

#define STATS_CHUNK_SIZE ((size_t)64 * 1024) /* blocks are mapped this many bytes at a time */
#define STATS_CHUNK_BLOCKS (STATS_CHUNK_SIZE / sizeof(pn_heap_stats_t))
_Static_assert(STATS_CHUNK_BLOCKS >= 2, "a chunk holds blocks that link implicitly");

static pn_atomic_uintptr_t stats_xregistry; /* pn_heap_stats_t *: the newest chunk's first block */
static pn_heap_stats_t stats_total;         /* counts of abandoned heaps (fetch_add, relaxed) */
/* For a heap that could map no block: shared by such heaps, so their
 * load-and-store adds may lose counts (only after mmap failed). Always
 * counted as claimed. */
static pn_heap_stats_t stats_overflow;

/* The registry's next block after `b`. A chunk is aligned to its size and
 * its blocks follow each other, so only a chunk's last block stores a link
 * (to the next chunk): a fresh chunk is published with two words written,
 * and its pages stay untouched (out of the resident set) until heaps claim
 * their blocks; walkers' reads of them map the zero page. */
static pn_heap_stats_t *stats_next(pn_heap_stats_t *b) {
  size_t index = ((uintptr_t)b & (STATS_CHUNK_SIZE - 1)) / sizeof *b;
  return index + 1 < STATS_CHUNK_BLOCKS ? b + 1
                                        : (pn_heap_stats_t *)pn_atomic_load_relaxed(&b->xnext);
}

/* Heap layer, at heap creation: a block of counters, all zero. Lock-free:
 * a CAS per block tried; maps a chunk of blocks when none is free. */
pn_heap_stats_t *pn_stats_heap_claim(void) {
  /* Acquire: matches the release CAS that published the chunk. */
  for (pn_heap_stats_t *b = (pn_heap_stats_t *)pn_atomic_load_acquire(&stats_xregistry); b != NULL;
       b = stats_next(b)) {
    uintptr_t expected = 0;
    if (pn_atomic_load_relaxed(&b->xclaimed) == 0 &&
        pn_atomic_cas_strong_acq_rel(&b->xclaimed, &expected, 1))
      return b; /* acq_rel: sees the zeroed counters of the heap that released it */
  }
  size_t n = STATS_CHUNK_BLOCKS;
  pn_heap_stats_t *chunk = pn_os_alloc_aligned(STATS_CHUNK_SIZE, STATS_CHUNK_SIZE);
  if (chunk == NULL)
    return &stats_overflow;
  pn_atomic_store_relaxed(&chunk[0].xclaimed, 1);
  uintptr_t head = pn_atomic_load_relaxed(&stats_xregistry);
  do {
    pn_atomic_store_relaxed(&chunk[n - 1].xnext, head);
  } while (!pn_atomic_cas_weak_release(&stats_xregistry, &head, (uintptr_t)chunk));
  return chunk;
}

static void stats_fold(pn_atomic_uintptr_t *from, pn_atomic_uintptr_t *to) {
  uintptr_t v = pn_atomic_load_relaxed(from);
  if (v == 0)
    return;
  pn_atomic_fetch_add_relaxed(to, v);
  pn_atomic_store_relaxed(from, 0);
}

/* Heap layer, at abandon: fold the counts into the total and give the
 * block back. (A reader in between may count them twice: a snapshot.) */
void pn_stats_heap_release(pn_heap_stats_t *stats) {
  if (stats == NULL || stats == &stats_overflow)
    return;
  for (int b = 0; b < PN_BIN_COUNT; b++) {
    stats_fold(&stats->xlive[b], &stats_total.xlive[b]);
    stats_fold(&stats->xpages[b], &stats_total.xpages[b]);
  }
  stats_fold(&stats->xremote_frees, &stats_total.xremote_frees);
  /* Release: the zeroed counters before the next claimer's acq_rel CAS. */
  pn_atomic_store_release(&stats->xclaimed, 0);
}

/* Heap layer, adoption: an abandoned page's counts (folded into the total
 * when its heap was abandoned) move to the adopting heap. */
void pn_stats_page_adopted(pn_heap_t *heap, pn_page_t *page) {
  pn_atomic_fetch_sub_relaxed(&stats_total.xlive[page->bin], page->stat_used);
  pn_atomic_fetch_sub_relaxed(&stats_total.xpages[page->bin], 1);
  pn_heap_stat_add(&heap->stats->xlive[page->bin], page->stat_used);
  pn_heap_stat_add(&heap->stats->xpages[page->bin], 1);
}

/* heap.c's tidy of abandoned segments: a page no heap owns was collected
 * (and released, if `released`): its counts in the total follow. */
void pn_stats_orphan_page(pn_page_t *page, uint32_t used, bool released) {
  pn_atomic_fetch_sub_relaxed(&stats_total.xlive[page->bin], page->stat_used - used);
  page->stat_used = used;
  if (released)
    pn_atomic_fetch_sub_relaxed(&stats_total.xpages[page->bin], 1);
}

/* alloc.c: a free of another thread's block, counted for the freeing
 * thread (alloc.c gives a thread that only frees its heap on its first
 * remote free; a shared atomic counter here cost 12% of the
 * producer-consumer benchmark, whose consumer only frees). */
/* Count every page of the calling thread's heap now (owner only), so the
 * figures are exact for this thread. */
void pn_stats_heap_settle(pn_heap_t *heap) {
  for (int kind = 0; kind < PN_PAGE_HUGE; kind++)
    for (pn_segment_t *s = heap->segments[kind]; s != NULL; s = s->next)
      for (uint32_t i = 0; i < s->page_count; i++)
        if (s->pages[i].block_size != 0)
          pn_heap_stat_page(heap, &s->pages[i]);
}

/* ------------------------------------------------------------------------ */
/* pantry_stats_get, pantry_stats_print                                     */
/* ------------------------------------------------------------------------ */

static void stats_add_block(pn_heap_stats_t *b, uintptr_t *live, uintptr_t *pages,
                            uintptr_t *remote) {
  for (int i = 0; i < PN_BIN_COUNT; i++) {
    live[i] += pn_atomic_load_relaxed(&b->xlive[i]);
    pages[i] += pn_atomic_load_relaxed(&b->xpages[i]);
  }
  *remote += pn_atomic_load_relaxed(&b->xremote_frees);
}

/* A sum taken from counters that other threads change: negative (wrapped)
 * for a moment when a count moved between two of them. */
static size_t stats_clamp(uintptr_t v) { return (intptr_t)v < 0 ? 0 : (size_t)v; }

/* The resident set of the process: the second field of /proc/self/statm, in
 * pages. open/read/close: no stdio, no allocation. */
static size_t stats_resident_bytes(void) {
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return 0;
  char buf[128];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return 0;
  buf[n] = '\0';
  const char *p = buf;
  while (*p != '\0' && *p != ' ')
    p++; /* skip the size */
  size_t pages = 0;
  for (p++; *p >= '0' && *p <= '9'; p++)
    pages = pages * 10 + (size_t)(*p - '0');
  long page_size = sysconf(_SC_PAGESIZE);
  return pages * (size_t)(page_size > 0 ? page_size : 4096);
}

void pantry_stats_get(pantry_stats_t *stats) {
  if (stats == NULL)
    return;
  int saved_errno = errno;
  memset(stats, 0, sizeof *stats);
  pn_heap_t *heap = pn_heap_tls;
  if (!heap->is_sentinel && heap->stats != NULL)
    pn_stats_heap_settle(heap);

  uintptr_t live[PN_BIN_COUNT] = {0}, pages[PN_BIN_COUNT] = {0}, remote = 0;
  stats_add_block(&stats_total, live, pages, &remote);
  stats_add_block(&stats_overflow, live, pages, &remote);
  for (pn_heap_stats_t *b = (pn_heap_stats_t *)pn_atomic_load_acquire(&stats_xregistry); b != NULL;
       b = stats_next(b)) {
    if (pn_atomic_load_acquire(&b->xclaimed) == 0)
      continue;
    stats->threads++;
    stats_add_block(b, live, pages, &remote);
  }
  for (unsigned bin = 1; bin <= PN_BIN_LARGE_MAX; bin++) {
    pantry_size_class_stats_t *c = &stats->size_classes[bin - 1];
    c->block_size = pn_bin_size(bin);
    c->live_blocks = stats_clamp(live[bin]);
    c->pages = stats_clamp(pages[bin]);
    stats->live_blocks += c->live_blocks;
    stats->bytes_allocated += c->live_blocks * c->block_size;
  }
  stats->huge_blocks =
      stats_clamp(stats_get(PN_STAT_HUGE_MAPPED) - stats_get(PN_STAT_HUGE_UNMAPPED));
  stats->live_blocks += stats->huge_blocks;
  stats->bytes_allocated += stats_get(PN_STAT_HUGE_BYTES);
  stats->segments =
      stats_clamp(stats_get(PN_STAT_SEGMENTS_MAPPED) - stats_get(PN_STAT_SEGMENTS_UNMAPPED));
  stats->segments_abandoned =
      stats_clamp(stats_get(PN_STAT_SEGMENTS_ABANDONED) - stats_get(PN_STAT_SEGMENTS_ADOPTED));
  stats->segments_cached =
      stats_clamp(stats_get(PN_STAT_SEGMENTS_CACHED) - stats_get(PN_STAT_SEGMENTS_REUSED) -
                  stats_get(PN_STAT_SEGMENTS_FLUSHED));
  stats->bytes_mapped = stats_get(PN_STAT_BYTES_MAPPED);
  stats->bytes_committed = stats_clamp(stats_get(PN_STAT_BYTES_COMMITTED));
  stats->bytes_resident = stats_resident_bytes();
  stats->remote_frees = remote;
  stats->depot_adoptions = stats_get(PN_STAT_SEGMENTS_ADOPTED);
  stats->purges = stats_get(PN_STAT_PURGES);
  stats->bytes_purged = stats_get(PN_STAT_BYTES_PURGED);
  errno = saved_errno;
}

void pantry_stats_print(FILE *out) {
  if (out == NULL)
    out = stderr;
  pantry_stats_t s;
  pantry_stats_get(&s);
  fprintf(out,
          "pantry: statistics\n"
          "pantry:   bytes allocated      %zu (%zu live blocks, %zu of them huge)\n"
          "pantry:   segments             %zu (%zu abandoned, %zu cached)\n"
          "pantry:   bytes mapped         %zu\n"
          "pantry:   bytes committed      %zu\n"
          "pantry:   bytes resident       %zu (the whole process)\n"
          "pantry:   remote frees         %zu\n"
          "pantry:   depot adoptions      %zu\n"
          "pantry:   purges               %zu (%zu bytes)\n"
          "pantry:   threads              %zu\n",
          s.bytes_allocated, s.live_blocks, s.huge_blocks, s.segments, s.segments_abandoned,
          s.segments_cached, s.bytes_mapped, s.bytes_committed, s.bytes_resident, s.remote_frees,
          s.depot_adoptions, s.purges, s.bytes_purged, s.threads);
  fprintf(out, "pantry:   %10s %12s %8s\n", "class", "live blocks", "pages");
  for (int i = 0; i < PANTRY_STATS_SIZE_CLASSES; i++) {
    const pantry_size_class_stats_t *c = &s.size_classes[i];
    if (c->live_blocks != 0 || c->pages != 0)
      fprintf(out, "pantry:   %10zu %12zu %8zu\n", c->block_size, c->live_blocks, c->pages);
  }
  pn_stats_print_counters(out);
  fflush(out);
}

__attribute__((destructor)) static void stats_exit_report(void) {
  if (pn_atomic_load_relaxed(&pn_option_xshow_stats) != 0)
    pantry_stats_print(stderr);
}
