/* stats.c - process-wide counters of the segment layer and the depot.
 *
 * These are touched only on slow paths (a segment mapped, unmapped,
 * abandoned, adopted, cached, purged), never per block, so plain shared
 * atomic counters cost nothing measurable. Per-block counters, when added,
 * belong in the thread heap and are merged on read.
 *
 * Layer: beside os.c and depot.c, which update it; read by the public
 * statistics functions and the exit report (PANTRY_SHOW_STATS=1).
 */
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

pn_stats_counters_t pn_stats;

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
    [PN_STAT_PAGES_PURGED] = "pages purged",
};

void pn_stats_print_counters(FILE *out) {
  for (int i = 0; i < PN_STAT_COUNT; i++)
    fprintf(out, "pantry: %-28s %lu\n", stats_names[i],
            (unsigned long)pn_atomic_load_relaxed(&pn_stats.x[i]));
}

__attribute__((destructor)) static void stats_exit_report(void) {
  const char *show = getenv("PANTRY_SHOW_STATS");
  if (show != NULL && show[0] == '1') pn_stats_print_counters(stderr);
}
