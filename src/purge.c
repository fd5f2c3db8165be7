/* purge.c - memory back to the OS: the purge state of segments (in 64 KiB
 * purge units), the purge map that finds segments with units waiting, the
 * background purge thread, and pantry_collect.
 *
 * Layer: beside segment.c and depot.c, which call the unit functions when a
 * page is taken or released and when a segment goes to the depot; calls
 * os.c (madvise) and liburcu-bp (read-side sections). pantry_collect, the one
 * public function here, also calls heap.c and depot.c, as the top layer does.
 *
 * Units. A page that empties is released to its segment by the owner; its
 * units become *pending*: unused, still holding memory, due for a purge at
 * now + PANTRY_PURGE_DELAY_MS. A unit that is neither pending nor in a page
 * was purged or never touched. Units are 64 KiB whatever the page size, so
 * a unit keeps its meaning when the owner reformats the segment for another
 * page size.
 *
 * Who may act on a pending unit, and how exactly one of them wins:
 *   - the owner, taking a page again (pn_purge_page_take), clears its units'
 *     pending bits with one fetch_and and keeps what it cleared;
 *   - a purger (the owner's heap_purge_maybe, the purge thread, or any
 *     thread in pantry_collect) claims due units with the same fetch_and and
 *     madvises only what it cleared.
 * A purger first marks the units it will claim in xpurging and clears the
 * mark after its madvise returns. A mark belongs to the purger whose
 * fetch_or set it: a purger that finds a unit marked already leaves it to
 * that one, and clears only marks it set itself (purge_claim_units). Before
 * that rule a purger that lost a unit cleared the mark of the purger that
 * won it, so the owner could take the unit back, and the depot's release
 * callback unmap the segment, while the winner's madvise was still to come
 * (seen under TSan: the purge thread's purge_finish faulted on a segment
 * unmapped after its scan claimed 11 units). An owner that cleared only
 * some of a page's units (a purger got the others) and sees a mark on the
 * others gives back what it cleared and takes another page: it never waits.
 *   Order: purger fetch_or(xpurging) -> fetch_and(xpurge_pending); owner
 *   fetch_and(xpurge_pending) -> load_acquire(xpurging). Both fetch_ands are
 *   acq_rel: when the purger's comes first, the owner's acquires it and sees
 *   the mark made before it. The purger's fetch_and_release on xpurging after
 *   madvise pairs with the owner's load_acquire: an owner that sees no mark
 *   touches the unit only after the madvise returned.
 *   A unit's due time (xpurge_at_ns, relaxed) is stored before the release
 *   fetch_or that makes it pending and read after an acquire load of
 *   xpurge_pending. A stale time (the unit was taken and released again
 *   between the two) only makes a purge early, never wrong.
 *
 * The purge map: one bit per 4 MiB of address space (like os.c's segment
 * map), set by the owner when a segment gets its first pending unit, with
 * two summary levels (a bit per word below) so a scan reads ~260 words when
 * nothing waits. Level-0 bits are cleared only by pn_purge_segment_forget,
 * when the segment goes to the depot; summary bits are cleared by scanners
 * that find the word below empty, which then look again and set the bit
 * back if a bit appeared meanwhile (a setter sets the bit below, fences,
 * then looks at the summary: store-buffering, one of the two sees the other).
 *
 * Lifetime: a scanner reads a segment only inside an urcu-bp read-side
 * section, and only after it saw the segment's level-0 bit set inside that
 * section; there it claims units and marks them in xpurging. It madvises
 * after the section (a long madvise must not hold up grace periods), then
 * clears its marks. pn_depot_release clears the bit before its call_rcu,
 * and the segment is unmapped (or purged whole and cached) only in that
 * callback, after a grace period: every section that saw the bit has
 * ended, so every mark it will ever get is set; the callback waits another
 * grace period while any mark is left (pn_purge_segment_busy), then resets
 * the purge state.
 *
 * The purge thread: started lazily once pantry maps its second 4 MiB
 * segment (small programs never get one), it sleeps on a futex until the
 * earliest pending unit is due, purges what is due in every segment of the
 * map, and sleeps without a time bound when nothing is pending, until an
 * owner that makes a unit pending wakes it. So a burst followed by quiet
 * gives its memory back one purge delay later, with no further call.
 * It is paused around fork (pthread_atfork) and stopped at unload.
 *
 * Shared state and who writes it:
 *   segment->xpurge_pending, xpurging, xcommitted, xpurge_at_ns   see above
 *   purge_map0..2     atomic: setters (owners), scanners (summaries), depot
 *   purge_xlife       LIFE_*: the thread that starts (CAS) or stops it, fork child
 *   purge_xwake       futex word, WAKE_*: the thread says how it sleeps; a
 *                     kicker CASes it back to RUNNING and wakes it
 *   purge_xcommand    futex word, COMMAND_*: fork and unload; a pause carries the
 *                     fork's sequence number (COMMAND_PAUSE | seq << 2), and
 *                     the thread answers a pause by storing that word in
 *                     purge_xack, so an answer to an earlier fork never
 *                     passes for this one
 *   pn_purge_xdelay_ns  atomic relaxed: options.c
 */
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "pantry.h"

#define PURGE_UNIT_SIZE ((size_t)1 << PN_PURGE_UNIT_SHIFT)
/* Emptied memory kept for reuse during the purge delay, at most: a burst
 * that frees more gives the excess back at once (the thread is woken every
 * PURGE_KICK_UNITS units an owner releases). */
#define PURGE_RESERVE ((size_t)PN_PURGE_RESERVE_UNITS << PN_PURGE_UNIT_SHIFT)
#define PURGE_KICK_UNITS 64 /* 4 MiB */
_Static_assert(PN_PAGES_MAX << PN_PURGE_UNIT_SHIFT == PN_SEGMENT_SIZE, "64 units per segment");

pn_atomic_uintptr_t pn_purge_xdelay_ns = 10 * 1000 * 1000;

/* ------------------------------------------------------------------------ */
/* Units                                                                    */
/* ------------------------------------------------------------------------ */

/* The units of page `index` of `segment` (its page_shift is the owner's,
 * read by the owner). */
static uintptr_t purge_page_units(const pn_segment_t *segment, unsigned index) {
  unsigned per_page = 1u << (segment->page_shift - PN_PURGE_UNIT_SHIFT); /* 1, 8 or 64 */
  if (per_page >= 64)
    return ~(uintptr_t)0;
  return (((uintptr_t)1 << per_page) - 1) << (index * per_page);
}

/* Bytes of memory that the units `units` span (unit 0 starts after the
 * header and guard; the last ends before the end guard). */
static size_t purge_units_bytes(uintptr_t units) {
  size_t bytes = (size_t)__builtin_popcountll(units) * PURGE_UNIT_SIZE;
  if (units & 1)
    bytes -= PN_SEGMENT_FIRST_OFFSET;
  if (units >> (PN_PAGES_MAX - 1))
    bytes -= PN_SEGMENT_GUARD_SIZE;
  return bytes;
}

/* madvise the units `units` away, one call per run of adjacent units. The
 * caller claimed them. */
static void purge_units(pn_segment_t *segment, uintptr_t units) {
  pn_stat_add(PN_STAT_PAGES_PURGED, (uintptr_t)__builtin_popcountll(units));
  pn_stat_add(PN_STAT_BYTES_PURGED, purge_units_bytes(units));
  while (units != 0) {
    unsigned first = (unsigned)__builtin_ctzll(units);
    unsigned last = first;
    while (last + 1 < PN_PAGES_MAX && (units >> (last + 1)) & 1)
      last++;
    /* bits first..last; (2 << 63) wraps to 0, so last == 63 works too */
    units &= ~((((uintptr_t)2 << last) - 1) ^ (((uintptr_t)1 << first) - 1));
    uint8_t *start = (uint8_t *)segment + ((size_t)first << PN_PURGE_UNIT_SHIFT);
    uint8_t *end = (uint8_t *)segment + ((size_t)(last + 1) << PN_PURGE_UNIT_SHIFT);
    if (first == 0)
      start += PN_SEGMENT_FIRST_OFFSET;
    if (last == PN_PAGES_MAX - 1)
      end -= PN_SEGMENT_GUARD_SIZE;
    pn_os_purge(start, (size_t)(end - start));
    pn_stat_add(PN_STAT_PURGES, 1);
  }
}

static void purge_map_add(pn_segment_t *segment);
static void purge_thread_kick(bool any);
static void purge_finish(pn_segment_t *segment, uintptr_t claimed);
static _Thread_local uint32_t purge_released_units; /* owner: units released since the last kick */
/* Owner: units this thread made pending and has not taken back or purged
 * itself (purges by other threads are not seen: an overestimate that
 * heap_purge_maybe corrects with pn_purge_local_reset). */
static _Thread_local uint32_t purge_local_pending;

/* Make `units` pending (their due times are stored). */
static void purge_mark_pending(pn_segment_t *segment, uintptr_t units) {
  /* Release: publishes the due times to a purger's acquire load. */
  if (pn_atomic_fetch_or_acq_rel(&segment->xpurge_pending, units) == 0)
    purge_map_add(segment);
}

/* Segment layer, owner only: take the units of `page` back for use. False
 * when a purger is giving some of them back right now (take another page). */
bool pn_purge_page_take(pn_segment_t *segment, const pn_page_t *page) {
  uintptr_t units = purge_page_units(segment, page->index);
  /* Acq_rel: matches the purger's fetch_and (see the top comment). */
  uintptr_t won = pn_atomic_fetch_and_acq_rel(&segment->xpurge_pending, ~units) & units;
  if (won != units && (pn_atomic_load_acquire(&segment->xpurging) & units & ~won) != 0) {
    if (won != 0)
      purge_mark_pending(segment, won); /* their due times are still stored */
    return false;
  }
  uintptr_t fresh = units & ~pn_atomic_fetch_or_acq_rel(&segment->xcommitted, units);
  if (fresh != 0)
    pn_stat_add(PN_STAT_BYTES_COMMITTED, purge_units_bytes(fresh));
  uint32_t n = (uint32_t)__builtin_popcountll(won);
  purge_local_pending = purge_local_pending > n ? purge_local_pending - n : 0;
  return true;
}

/* Segment layer, owner only: page `index` was released; its units are due
 * one purge delay from now. */
void pn_purge_page_release(pn_segment_t *segment, unsigned page_index) {
  uintptr_t units = purge_page_units(segment, page_index);
  uint64_t at = pn_clock_now_ns() + pn_atomic_load_relaxed(&pn_purge_xdelay_ns);
  for (uintptr_t bits = units; bits != 0; bits &= bits - 1)
    pn_atomic_store_relaxed(&segment->xpurge_at_ns[__builtin_ctzll(bits)], at);
  purge_mark_pending(segment, units);
  purge_local_pending += (uint32_t)__builtin_popcountll(units);
  /* A burst of frees: every 4 MiB released, let the thread look at once. */
  purge_released_units += (uint32_t)__builtin_popcountll(units);
  if (PN_UNLIKELY(purge_released_units >= PURGE_KICK_UNITS)) {
    purge_released_units = 0;
    purge_thread_kick(true);
  }
}

/* Claim `units` of `segment` for a madvise: mark them, then clear their
 * pending bits; returns the units won, marked until purge_finish. A unit
 * marked already belongs to the purger that marked it (it may be winning it
 * right now): it is left alone. Of the marks this call set, those whose
 * unit it did not win (the owner took it, or it was not pending) are
 * cleared at once; it never clears a mark it did not set.
 *   Order: fetch_or(xpurging) -> fetch_and(xpurge_pending), both acq_rel:
 *   see the top comment for the owner's side (pn_purge_page_take). */
static uintptr_t purge_claim_units(pn_segment_t *segment, uintptr_t units) {
  uintptr_t mine = units & ~pn_atomic_fetch_or_acq_rel(&segment->xpurging, units);
  uintptr_t won = pn_atomic_fetch_and_acq_rel(&segment->xpurge_pending, ~mine) & mine;
  if (mine & ~won)
    pn_atomic_fetch_and_release(&segment->xpurging, ~(mine & ~won));
  return won;
}

/* Heap layer, owner only, right after page `index` was released: if this
 * thread holds more emptied memory than PN_PURGE_RESERVE_UNITS, give the
 * page's memory back now, so a burst of frees returns its memory as it
 * goes. Returns the units purged. */
uint32_t pn_purge_page_now(pn_segment_t *segment, unsigned page_index) {
  if (PN_LIKELY(purge_local_pending <= PN_PURGE_RESERVE_UNITS))
    return 0;
  uintptr_t won = purge_claim_units(segment, purge_page_units(segment, page_index));
  purge_finish(segment, won);
  uint32_t n = (uint32_t)__builtin_popcountll(won);
  purge_local_pending = purge_local_pending > n ? purge_local_pending - n : 0;
  return n;
}

/* Heap layer, owner only: the heap counted its pending units exactly. */
void pn_purge_local_reset(uint32_t pending_units) { purge_local_pending = pending_units; }

/* Purge the pending units of `segment` that are due at `now` (all of them
 * when `all`). Any thread: the owner, or a scanner inside a read-side
 * section. Returns when the next unit still pending is due (UINT64_MAX:
 * none). */
/* Claim the pending units of `segment` that are due at `now` (all when
 * `all`), and up to *excess more. Returns when the next unit left pending
 * is due (UINT64_MAX: none); *claimed gets the units claimed, still marked
 * in xpurging: the caller gives them back with purge_finish. */
static uint64_t purge_claim(pn_segment_t *segment, uint64_t now, bool all, size_t *excess,
                            uintptr_t *claimed) {
  *claimed = 0;
  /* Acquire: matches the release fetch_or that made the units pending. */
  uintptr_t pending = pn_atomic_load_acquire(&segment->xpurge_pending);
  uintptr_t due = 0;
  uint64_t next = UINT64_MAX;
  for (uintptr_t bits = pending; bits != 0; bits &= bits - 1) {
    unsigned u = (unsigned)__builtin_ctzll(bits);
    uint64_t at = pn_atomic_load_relaxed(&segment->xpurge_at_ns[u]);
    if (all || at <= now) {
      due |= (uintptr_t)1 << u;
    } else if (excess != NULL && *excess > 0) { /* over the reserve: not worth waiting for */
      due |= (uintptr_t)1 << u;
      --*excess;
    } else if (at < next) {
      next = at;
    }
  }
  if (due != 0)
    *claimed = purge_claim_units(segment, due);
  return next;
}

/* Give the claimed units back to the OS and clear their xpurging marks. */
static void purge_finish(pn_segment_t *segment, uintptr_t claimed) {
  if (claimed == 0)
    return;
  purge_units(segment, claimed);
  uintptr_t was = pn_atomic_fetch_and_acq_rel(&segment->xcommitted, ~claimed) & claimed;
  pn_stat_sub(PN_STAT_BYTES_COMMITTED, purge_units_bytes(was));
  /* Release: the madvise is done before an owner (or the depot's release
   * callback) that sees the marks clear goes on. */
  pn_atomic_fetch_and_release(&segment->xpurging, ~claimed);
}

uint64_t pn_purge_segment(pn_segment_t *segment, uint64_t now, bool all) {
  uintptr_t claimed;
  uint64_t next = purge_claim(segment, now, all, NULL, &claimed);
  purge_finish(segment, claimed);
  return next;
}

/* Depot layer, in the release callback: whether a scanner still gives
 * units of `segment` back (it claimed them inside a read-side section that
 * ended, and madvises outside it); the callback then waits another grace
 * period. Acquire: matches purge_finish's release. */
bool pn_purge_segment_busy(pn_segment_t *segment) {
  return pn_atomic_load_acquire(&segment->xpurging) != 0;
}

/* ------------------------------------------------------------------------ */
/* The purge map                                                            */
/* ------------------------------------------------------------------------ */

#define PURGE_MAP0_WORDS                                                                           \
  (PN_SEGMENT_MAP_BITS / 64) /* 2^20 words: 8 MiB of .bss, touched lazily                          \
                              */
#define PURGE_MAP1_WORDS (PURGE_MAP0_WORDS / 64)
#define PURGE_MAP2_WORDS (PURGE_MAP1_WORDS / 64) /* 256 */

static pn_atomic_uintptr_t purge_map0[PURGE_MAP0_WORDS];
static pn_atomic_uintptr_t purge_map1[PURGE_MAP1_WORDS];
static pn_atomic_uintptr_t purge_map2[PURGE_MAP2_WORDS];

static void purge_thread_kick(bool any);

/* Set `bit` of `word` unless it is set; the fence before the look orders
 * the caller's write below before it (see the top comment). */
static void purge_map_set(pn_atomic_uintptr_t *word, size_t bit) {
  pn_atomic_fence_seq_cst();
  uintptr_t mask = (uintptr_t)1 << bit;
  if ((pn_atomic_load_relaxed(word) & mask) == 0)
    pn_atomic_fetch_or_acq_rel(word, mask);
}

static void purge_map_add(pn_segment_t *segment) {
  size_t index = (uintptr_t)segment >> PN_SEGMENT_SHIFT;
  if (index >= PN_SEGMENT_MAP_BITS)
    return;
  purge_map_set(&purge_map0[index / 64], index % 64);
  purge_map_set(&purge_map1[index / 4096], (index / 64) % 64);
  purge_map_set(&purge_map2[index / 262144], (index / 4096) % 64);
  purge_thread_kick(false);
}

/* Depot layer: the segment leaves its owners (pn_depot_release), before
 * the grace period that ends every scan that might still read it. */
void pn_purge_segment_forget(pn_segment_t *segment) {
  size_t index = (uintptr_t)segment >> PN_SEGMENT_SHIFT;
  if (index >= PN_SEGMENT_MAP_BITS)
    return;
  pn_atomic_fetch_and_acq_rel(&purge_map0[index / 64], ~((uintptr_t)1 << (index % 64)));
}

/* Depot layer, in the release callback (nothing else can reach the
 * segment): all its memory goes back now, its purge state starts over. */
void pn_purge_segment_reset(pn_segment_t *segment) {
  uintptr_t committed = pn_atomic_exchange_acq_rel(&segment->xcommitted, 0);
  pn_stat_sub(PN_STAT_BYTES_COMMITTED, purge_units_bytes(committed));
  pn_atomic_store_relaxed(&segment->xpurge_pending, 0);
  pn_atomic_store_relaxed(&segment->xpurging, 0);
}

/* Clear `bit` of the summary `word` when the word below looks empty, then
 * look again (a setter may have set a bit below meanwhile). */
static void purge_map_clear_summary(pn_atomic_uintptr_t *word, size_t bit,
                                    pn_atomic_uintptr_t *below) {
  uintptr_t mask = (uintptr_t)1 << bit;
  pn_atomic_fetch_and_acq_rel(word, ~mask);
  pn_atomic_fence_seq_cst();
  if (pn_atomic_load_relaxed(below) != 0)
    pn_atomic_fetch_or_acq_rel(word, mask);
}

/* One segment of a scan. `excess` NULL: only count its pending units into
 * *pending; otherwise purge what is due, and up to *excess more. */
static uint64_t purge_scan_segment(size_t index, uint64_t now, bool all, size_t *excess,
                                   size_t *pending) {
  uint64_t next = UINT64_MAX;
  uintptr_t claimed = 0;
  pn_segment_t *segment = (pn_segment_t *)(index << PN_SEGMENT_SHIFT);
  urcu_bp_read_lock();
  /* The bit again, inside the section: only now is the segment sure to
   * stay mapped until we unlock (see Lifetime above). */
  if ((pn_atomic_load_acquire(&purge_map0[index / 64]) >> (index % 64)) & 1) {
    uintptr_t units = pn_atomic_load_relaxed(&segment->xpurge_pending);
    if (excess == NULL)
      *pending += (size_t)__builtin_popcountll(units);
    else if (units != 0)
      next = purge_claim(segment, now, all, excess, &claimed);
  }
  urcu_bp_read_unlock();
  /* madvise outside the section, so grace periods (the depot's releases)
   * never wait for it: our xpurging marks keep the segment mapped, since
   * the depot's release callback waits until they are clear. */
  purge_finish(segment, claimed);
  return next;
}

/* Purge what is due at `now` (everything when `all`) in every segment of
 * the map, and `excess` units more that are not due yet (in address order).
 * With `excess` NULL, purge nothing: count the pending units into *pending.
 * Returns when the next pending unit is due (UINT64_MAX: none). */
static uint64_t purge_scan(uint64_t now, bool all, size_t *excess, size_t *pending) {
  uint64_t next = UINT64_MAX;
  for (size_t w2 = 0; w2 < PURGE_MAP2_WORDS; w2++) {
    for (uintptr_t b2 = pn_atomic_load_relaxed(&purge_map2[w2]); b2 != 0; b2 &= b2 - 1) {
      size_t w1 = w2 * 64 + (size_t)__builtin_ctzll(b2);
      uintptr_t b1 = pn_atomic_load_relaxed(&purge_map1[w1]);
      if (b1 == 0)
        purge_map_clear_summary(&purge_map2[w2], w1 % 64, &purge_map1[w1]);
      for (; b1 != 0; b1 &= b1 - 1) {
        size_t w0 = w1 * 64 + (size_t)__builtin_ctzll(b1);
        uintptr_t b0 = pn_atomic_load_relaxed(&purge_map0[w0]);
        if (b0 == 0)
          purge_map_clear_summary(&purge_map1[w1], w0 % 64, &purge_map0[w0]);
        for (; b0 != 0; b0 &= b0 - 1) {
          uint64_t at =
              purge_scan_segment(w0 * 64 + (size_t)__builtin_ctzll(b0), now, all, excess, pending);
          if (at < next)
            next = at;
        }
      }
    }
  }
  return next;
}

/* ------------------------------------------------------------------------ */
/* The purge thread                                                         */
/* ------------------------------------------------------------------------ */

enum { LIFE_NONE, LIFE_STARTING, LIFE_STARTED, LIFE_FAILED, LIFE_STOPPED };
enum { WAKE_RUNNING, WAKE_NAPPING, WAKE_IDLE };
enum { COMMAND_NONE, COMMAND_PAUSE, COMMAND_STOP };

#define PURGE_NAP_MIN_NS ((uint64_t)1000 * 1000) /* never wake more than once a millisecond */

static pn_atomic_uint32_t purge_xlife;
static pn_atomic_uint32_t purge_xwake;
static pn_atomic_uint32_t purge_xcommand;
static pn_atomic_uint32_t purge_xack;
static pn_atomic_uint32_t purge_xforking; /* 1 from the prepare handler to the parent's or
                                           * child's; written by the forking thread */
static uint32_t
    purge_pause_seq; /* the forking thread's (glibc runs fork handlers one fork at a time) */
static pthread_t purge_thread; /* written by the thread that starts it, read by the stopper */

static void purge_futex_wait(pn_atomic_uint32_t *word, uint32_t value, uint64_t ns) {
  struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, value, ns == UINT64_MAX ? NULL : &ts,
          NULL, 0);
}

static void purge_futex_wake(pn_atomic_uint32_t *word) {
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* The precise clock: due times come from the coarse one, which is never
 * ahead of it, so a unit is never purged late for the clock's sake. */
static uint64_t purge_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Wake the thread if it sleeps with no time bound (or, when `any`, in any
 * sleep). The caller published its reason first; the fence orders that
 * before our read of the sleep state, as the thread's fence orders its
 * state store before its look for work (store-buffering). */
static void purge_thread_kick(bool any) {
  pn_atomic_fence_seq_cst();
  uint32_t state = pn_atomic_load_acquire32(&purge_xwake);
  if (state == WAKE_RUNNING || (!any && state != WAKE_IDLE))
    return;
  if (pn_atomic_cas_strong_acq_rel32(&purge_xwake, &state, WAKE_RUNNING))
    purge_futex_wake(&purge_xwake);
}

/* One pass of the thread: purge what is due (a little early: units due
 * within PURGE_LEAD of now, so the memory is back by the time the delay
 * ends), and when more than PURGE_RESERVE waits, the excess at once. */
static uint64_t purge_thread_pass(void) {
  size_t pending = 0;
  uint64_t now = purge_now_ns();
  purge_scan(now, false, NULL, &pending);
  size_t reserve_units = PURGE_RESERVE >> PN_PURGE_UNIT_SHIFT;
  size_t excess = pending > reserve_units ? pending - reserve_units : 0;
  uint64_t lead = pn_atomic_load_relaxed(&pn_purge_xdelay_ns) / 8;
  uint64_t next = purge_scan(now + lead, false, &excess, &pending);
  /* Segments of exited threads: tidy them while any wait (heap.c,
   * pn_heap_tidy_abandoned), first after one purge delay, then at doubling
   * intervals up to a second, so segments that keep live blocks for good
   * cost a scan a second, not a hundred. Owner: this thread. */
  static uint64_t tidy_at, tidy_interval;
  static bool tidy_waiting = true;
  uint64_t delay = pn_atomic_load_relaxed(&pn_purge_xdelay_ns);
  if (now >= tidy_at) {
    tidy_waiting = pn_heap_tidy_abandoned(now);
    tidy_interval = !tidy_waiting || tidy_interval < delay ? delay : tidy_interval * 2;
    if (tidy_interval > 1000000000u)
      tidy_interval = 1000000000u;
    tidy_at = now + tidy_interval;
  }
  if (tidy_waiting && tidy_at < next)
    next = tidy_at;
  return next;
}

static void *purge_thread_main(void *arg) {
  (void)arg;
  pthread_setname_np(pthread_self(), "pantry-purge");
  for (;;) {
    uint32_t command = pn_atomic_load_acquire32(&purge_xcommand);
    if (command == COMMAND_STOP)
      break;
    if ((command & 3u) == COMMAND_PAUSE) { /* fork: no claim is held between scans */
      /* Answer this very pause, then sleep while the word stays the same:
       * the parent's resume, or the next fork's pause (a new sequence
       * number, which may come before this thread even went to sleep),
       * changes it, and the loop answers again. (A pause answered with a
       * constant deadlocked: a fork right after another set PAUSE again
       * before the thread slept, so it slept on, the forker waiting for an
       * answer that never came.) */
      pn_atomic_store_release32(&purge_xack, command);
      purge_futex_wake(&purge_xack);
      purge_futex_wait(&purge_xcommand, command, UINT64_MAX);
      continue;
    }
    /* PANTRY_PURGE_THREAD=0 set at run time: sleep until set again. */
    bool enabled = pn_atomic_load_relaxed(&pn_option_xpurge_thread) != 0;
    uint64_t next = enabled ? purge_thread_pass() : UINT64_MAX;
    if (next == UINT64_MAX) {
      /* Nothing pending: say we sleep, fence, look once more (see kick). */
      pn_atomic_store_release32(&purge_xwake, WAKE_IDLE);
      pn_atomic_fence_seq_cst();
      if (pn_atomic_load_acquire32(&purge_xcommand) == COMMAND_NONE &&
          (!enabled || purge_thread_pass() == UINT64_MAX))
        purge_futex_wait(&purge_xwake, WAKE_IDLE, UINT64_MAX);
    } else {
      uint64_t now = purge_now_ns(), lead = pn_atomic_load_relaxed(&pn_purge_xdelay_ns) / 8;
      uint64_t nap = next > now + lead + PURGE_NAP_MIN_NS ? next - now - lead : PURGE_NAP_MIN_NS;
      pn_atomic_store_release32(&purge_xwake, WAKE_NAPPING);
      pn_atomic_fence_seq_cst();
      if (pn_atomic_load_acquire32(&purge_xcommand) == COMMAND_NONE)
        purge_futex_wait(&purge_xwake, WAKE_NAPPING, nap);
    }
    pn_atomic_store_release32(&purge_xwake, WAKE_RUNNING);
  }
  return NULL;
}

/* Tell the thread `command` and wake it from any sleep. */
static void purge_thread_command(uint32_t command) {
  pn_atomic_store_release32(&purge_xcommand, command);
  purge_futex_wake(&purge_xcommand);
  purge_thread_kick(true);
}

/* Before fork: wait out LIFE_STARTING, then pause a started thread. The
 * starter is between its CAS and its store of the outcome, running
 * pthread_create, which never waits for the forking thread; the new thread
 * may already be scanning. Without the wait it would run on through the
 * fork. A start whose CAS comes after the gate below closed starts nothing
 * (but the fork may still catch it between its CAS and its NONE store: the
 * child handler resets that). The handlers are registered at load
 * (purge_atfork_at_load), never by the first start: a fork racing the
 * first start ran without them, and its child kept LIFE_STARTING for good
 * (no purge thread ever started there, and exit() spun in purge_unload). */
static void purge_fork_prepare(void) {
  /* The gate: no start begins from here to the parent's or child's handler
   * (pn_purge_thread_start_maybe). Partner of the starter's CAS there. */
  pn_atomic_store_release32(&purge_xforking, 1);
  pn_atomic_fence_seq_cst();
  uint32_t life = pn_atomic_load_acquire32(&purge_xlife);
  while (life == LIFE_STARTING) { /* acquire: matches the starter's store of the outcome */
    sched_yield();
    life = pn_atomic_load_acquire32(&purge_xlife);
  }
  if (life != LIFE_STARTED)
    return;
  uint32_t pause = COMMAND_PAUSE | (++purge_pause_seq << 2);
  purge_thread_command(pause);
  for (uint32_t ack; (ack = pn_atomic_load_acquire32(&purge_xack)) != pause;)
    purge_futex_wait(&purge_xack, ack, UINT64_MAX);
}

static void purge_fork_parent(void) {
  if (pn_atomic_load_acquire32(&purge_xlife) == LIFE_STARTED)
    purge_thread_command(COMMAND_NONE);
  pn_atomic_store_release32(&purge_xforking, 0);
}

static void purge_fork_child(void) {
  /* The thread is not in the child, nor is a starter caught between its
   * CAS and its outcome (a start that began after the prepare handler
   * looked); a later segment starts a new one. */
  pn_atomic_store_release32(&purge_xack, COMMAND_NONE);
  pn_atomic_store_release32(&purge_xcommand, COMMAND_NONE);
  pn_atomic_store_release32(&purge_xwake, WAKE_RUNNING);
  uint32_t life = pn_atomic_load_acquire32(&purge_xlife);
  if (life == LIFE_STARTED || life == LIFE_STARTING)
    pn_atomic_store_release32(&purge_xlife, LIFE_NONE);
  pn_atomic_store_release32(&purge_xforking, 0);
}

/* After heap.c's process init (101), so that purge_fork_prepare runs
 * before the depot's prepare handler. */
__attribute__((constructor(102))) static void purge_atfork_at_load(void) {
  pthread_atfork(purge_fork_prepare, purge_fork_parent, purge_fork_child);
}

/* Heap layer, on every allocation slow path (a load when it is started):
 * start the purge thread once pantry holds two segments or more. */
void pn_purge_thread_start_maybe(void) {
  if (PN_LIKELY(pn_atomic_load_acquire32(&purge_xlife) != LIFE_NONE))
    return;
  if (pn_atomic_load_relaxed(&pn_option_xpurge_thread) == 0)
    return;
  if (pn_atomic_load_relaxed(&pn_stats.x[PN_STAT_BYTES_MAPPED]) < 2 * PN_SEGMENT_SIZE)
    return;
  uint32_t expected = LIFE_NONE;
  if (!pn_atomic_cas_strong_acq_rel32(&purge_xlife, &expected, LIFE_STARTING))
    return;
  /* The fork gate (Dekker: we store LIFE_STARTING, fence, then read the
   * gate; purge_fork_prepare stores the gate, fences, then reads the life
   * word): the prepare handler waits for our outcome, or we start nothing
   * while a fork runs (a later slow path starts the thread). */
  pn_atomic_fence_seq_cst();
  if (pn_atomic_load_acquire32(&purge_xforking) != 0) {
    pn_atomic_store_release32(&purge_xlife, LIFE_NONE);
    return;
  }
  /* The thread blocks every signal but the faults, so none meant for the
   * program lands on it. */
  sigset_t old;
  pn_os_block_signals(&old);
  int err = pthread_create(&purge_thread, NULL, purge_thread_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err != 0) {
    pn_verbose("no purge thread (pthread_create: error %d): pages are purged on allocation "
               "slow paths and by pantry_collect only",
               err);
    pn_atomic_store_release32(&purge_xlife, LIFE_FAILED);
    return;
  }
  pn_verbose("purge thread started (purge delay %lu ms)",
             (unsigned long)(pn_atomic_load_relaxed(&pn_purge_xdelay_ns) / 1000000u));
  pn_atomic_store_release32(&purge_xlife, LIFE_STARTED);
}

/* options.c: the delay changed; a napping thread looks again. */
void pn_purge_delay_changed(void) { purge_thread_kick(true); }

/* Unload (dlclose) or exit: no purge thread may run into unmapped code. */
__attribute__((destructor)) static void purge_unload(void) {
  uint32_t life = pn_atomic_load_acquire32(&purge_xlife);
  while (life == LIFE_STARTING) { /* another thread is starting it: rare, brief */
    sched_yield();
    life = pn_atomic_load_acquire32(&purge_xlife);
  }
  if (life != LIFE_STARTED || !pn_atomic_cas_strong_acq_rel32(&purge_xlife, &life, LIFE_STOPPED))
    return;
  purge_thread_command(COMMAND_STOP);
  pthread_join(purge_thread, NULL);
}

/* ------------------------------------------------------------------------ */
/* pantry_collect                                                           */
/* ------------------------------------------------------------------------ */

void pantry_collect(bool force) {
  pn_heap_t *heap = pn_heap_get_or_init(); /* NULL while exiting: nothing of its own to collect */
  if (heap != NULL)
    pn_heap_collect(heap, force);
  size_t none = 0;
  purge_scan(purge_now_ns(), true, &none, &none);
  pn_depot_collect(force);
}
