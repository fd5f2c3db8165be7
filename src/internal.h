/* internal.h - the types and invariants shared by the layers below the
 * public API, and the functions each file offers to the others.
 *
 * Layers, top to bottom (DESIGN.md): alloc.c (public malloc API) -> heap.c
 * (thread heaps, slow paths) -> page.c (free lists) -> segment.c (segments
 * and pages) -> depot.c (the global fallback) -> os.c (mmap). A layer calls
 * only the layers below it.
 *
 * Words: a *segment* is a 4 MiB-aligned mapping cut into *pages*; a page
 * holds *blocks* of one *size class* (bin); a *thread heap* owns segments and
 * keeps, per size class, a queue of pages that may have free blocks.
 */
#ifndef PN_INTERNAL_H
#define PN_INTERNAL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* liburcu: urcu-bp.h first, in a block of its own (clang-format keeps its
 * order): its map names the bp flavor's call_rcu that call-rcu.h declares. */
#include <urcu/urcu-bp.h>

#include <urcu/call-rcu.h>
#include <urcu/lfstack.h>

#include "atomic.h"
#include "track.h"

/* liburcu is linked, never inlined (no _LGPL_SOURCE): its LGPL code stays in its library. */

/* ------------------------------------------------------------------------ */
/* Build configuration: `if (pn_debug)` keeps every configuration type-checked */
/* ------------------------------------------------------------------------ */

#ifndef PANTRY_DEBUG_BUILD
#define PANTRY_DEBUG_BUILD 0
#endif
#ifndef PANTRY_SECURE_BUILD
#define PANTRY_SECURE_BUILD 0
#endif
static const bool pn_debug = PANTRY_DEBUG_BUILD;
static const bool pn_secure = PANTRY_SECURE_BUILD;

/* The checks on the free fast path. Release builds keep every one; each can
 * be built out (-D...=0) only to measure what it costs (bench/check_costs,
 * whose figures README.md gives). A build without them is not pantry: it
 * corrupts memory where pantry stops with a message. */
#ifndef PANTRY_CHECK_FOREIGN
#define PANTRY_CHECK_FOREIGN 1 /* the segment map: a pointer pantry never handed out */
#endif
#ifndef PANTRY_CHECK_INTERIOR
#define PANTRY_CHECK_INTERIOR 1 /* the pointer is the start of a block (a multiply) */
#endif
#ifndef PANTRY_CHECK_DOUBLE_FREE
#define PANTRY_CHECK_DOUBLE_FREE 1 /* the block's first word is not a free block's link */
#endif
#ifndef PANTRY_ENCODE_LINKS
#define PANTRY_ENCODE_LINKS 1 /* free-list links XORed with the page's key */
#endif
#if !PANTRY_ENCODE_LINKS && PANTRY_CHECK_DOUBLE_FREE
#error                                                                                             \
    "the double-free check reads encoded links: PANTRY_ENCODE_LINKS=0 needs PANTRY_CHECK_DOUBLE_FREE=0"
#endif

#define PN_LIKELY(x) __builtin_expect(!!(x), 1)
#define PN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define PN_NOINLINE __attribute__((noinline))
#define PN_COLD __attribute__((cold))
#define PN_HIDDEN __attribute__((visibility("hidden")))

/* ------------------------------------------------------------------------ */
/* error.c: diagnostics                                                     */
/* ------------------------------------------------------------------------ */

_Noreturn void pn_fatal(const char *fmt, ...) PN_HIDDEN PN_COLD
    __attribute__((format(printf, 1, 2)));
void pn_warning(const char *fmt, ...) PN_HIDDEN PN_COLD __attribute__((format(printf, 1, 2)));
/* An informational line, only with PANTRY_VERBOSE=1 or more. */
void pn_verbose(const char *fmt, ...) PN_HIDDEN PN_COLD __attribute__((format(printf, 1, 2)));

/* ------------------------------------------------------------------------ */
/* Sizes                                                                    */
/* ------------------------------------------------------------------------ */

#define PN_OS_PAGE_SIZE ((size_t)4096)
#define PN_SEGMENT_SHIFT 22
#define PN_SEGMENT_SIZE ((size_t)1 << PN_SEGMENT_SHIFT) /* 4 MiB */
#define PN_SEGMENT_MASK (PN_SEGMENT_SIZE - 1)
#define PN_SMALL_PAGE_SHIFT 16  /* 64 KiB pages, 64 per segment */
#define PN_MEDIUM_PAGE_SHIFT 19 /* 512 KiB pages, 8 per segment */
#define PN_PAGES_MAX 64

#define PN_SMALL_SIZE_MAX ((size_t)8 * 1024)   /* >= 7 blocks in a small page */
#define PN_MEDIUM_SIZE_MAX ((size_t)64 * 1024) /* >= 7 blocks in a medium page */
#define PN_LARGE_SIZE_MAX ((size_t)512 * 1024) /* >= 7 blocks in a large page */
#define PN_DIRECT_SIZE_MAX ((size_t)1024)      /* served by heap->pages_direct */
#define PN_DIRECT_WSIZE_MAX (PN_DIRECT_SIZE_MAX / 16)
#define PN_ALIGN_MAX (PN_SEGMENT_SIZE / 2) /* a huge block's pointer stays in its first 4 MiB */

/* Bins: 1..8 are 16..128 bytes in 16-byte steps; above that, 8 bins per
 * doubling, so a block wastes less than 1/9 (11.2%) of its size. */
#define PN_BIN_LARGE_MAX 104 /* the bin of PN_LARGE_SIZE_MAX */
#define PN_BIN_HUGE (PN_BIN_LARGE_MAX + 1)
#define PN_BIN_FULL (PN_BIN_LARGE_MAX + 2) /* the heap's queue of full pages */
#define PN_BIN_COUNT (PN_BIN_LARGE_MAX + 3)

typedef enum pn_page_kind {
  PN_PAGE_SMALL,
  PN_PAGE_MEDIUM,
  PN_PAGE_LARGE,
  PN_PAGE_HUGE,
  PN_PAGE_KINDS
} pn_page_kind_t;

/* The number of 16-byte words of a request (0 for size 0). */
static inline size_t pn_wsize(size_t size) { return (size + 15) >> 4; }

/* The size class of a request of at most PN_LARGE_SIZE_MAX bytes. */
static inline unsigned pn_bin(size_t size) {
  size_t wsize = pn_wsize(size);
  if (wsize <= 8)
    return wsize == 0 ? 1 : (unsigned)wsize;
  size_t w = wsize - 1;
  unsigned b = 63u - (unsigned)__builtin_clzl(w); /* b >= 3 */
  return 9u + ((b - 3u) << 3) + (unsigned)((w >> (b - 3u)) & 7u);
}

/* The block size of a bin, in bytes: the largest request it serves. */
static inline size_t pn_bin_size(unsigned bin) {
  if (bin <= 8)
    return (size_t)bin * 16;
  unsigned k = (bin - 9u) >> 3, i = (bin - 9u) & 7u;
  return (size_t)16 * ((size_t)(9u + i) << k);
}

static inline pn_page_kind_t pn_bin_kind(unsigned bin) {
  size_t size = pn_bin_size(bin);
  if (size <= PN_SMALL_SIZE_MAX)
    return PN_PAGE_SMALL;
  if (size <= PN_MEDIUM_SIZE_MAX)
    return PN_PAGE_MEDIUM;
  return PN_PAGE_LARGE;
}

/* ------------------------------------------------------------------------ */
/* Blocks, pages, segments                                                  */
/* ------------------------------------------------------------------------ */

typedef struct pn_block {
  struct pn_block *next;
} pn_block_t;

typedef struct pn_heap pn_heap_t;
typedef struct pn_segment pn_segment_t;
typedef struct pn_heap_stats pn_heap_stats_t;

/* page->xthread_free packs three things into one word, so one CAS pushes a
 * remote free and one exchange collects them all without walking the list:
 *   bits 0      PN_THREAD_FREE_FULL: the owner parked the page in its full
 *               queue. The first remote free that clears it reports the page
 *               in segment->xfull_freed, so the owner takes the page back
 *               (no page is lost on the full queue).
 *   bits 4..47  the head block (blocks are 16-byte aligned; user-space
 *               addresses stay below 2^47 unless mmap is given a hint).
 *   bits 48..63 the number of blocks on the list (a page holds at most
 *               65536 / 16 = 4096 blocks of a small page). */
#define PN_THREAD_FREE_FULL ((uintptr_t)1)
#define PN_THREAD_FREE_COUNT_SHIFT 48
#define PN_THREAD_FREE_PTR_MASK                                                                    \
  ((((uintptr_t)1 << PN_THREAD_FREE_COUNT_SHIFT) - 1) & ~(uintptr_t)15)

/* A page: one size class's blocks.
 *
 * Invariant (owner's view, with |L| the length of list L):
 *   used + |free| + |local_free| == capacity
 *   |thread_free| <= used      (remote frees not yet collected count as used)
 *   capacity <= reserved, and block_size == 0 <=> the page holds no blocks.
 * Who writes what: the owner is the thread whose heap owns the segment
 * (segment->xowner); while a segment is abandoned, nobody owns its pages and
 * only remote frees touch them.
 */
typedef struct pn_page {
  /* Cache line 0: what the fast paths touch. The owner writes free,
   * local_free and used on every allocation and free; the rest is set at
   * format and read by any thread that frees a block of the page. */
  pn_block_t *free;         /* owner: blocks ready to hand out */
  pn_block_t *local_free;   /* owner: blocks freed by the owner */
  uintptr_t key;            /* set at format: free-list links are stored as next ^ key */
  uint8_t *page_start;      /* set at format: the first block */
  size_t block_size;        /* set at format, before any block is handed out; 0 = page unused */
  uint32_t used;            /* owner: blocks handed out, remote frees included */
  uint32_t area;            /* owner: reserved * block_size, in bytes, set at format; pn_page_shrink
                               lowers it to the carved blocks' end and pn_page_extend raises it
                               again, with relaxed atomic stores: other threads read it (relaxed)
                               to check a free; a block handed out lies below every value they
                               can see, so no order is needed */
  uint32_t block_odd_inv;   /* block_odd^-1 mod 2^32: x % block_size == 0 test */
  uint32_t block_div_limit; /* UINT32_MAX / block_size */
  union {
    uint16_t all; /* both at once (pn_page_format clears them) */
    struct {
      uint8_t in_full;     /* owner: parked in the heap's full queue */
      uint8_t has_aligned; /* owner writes, any thread reads: relaxed atomic
                              (pn_page_has_aligned); set before an interior
                              pointer is handed out, so whoever frees that
                              pointer sees it through the handoff */
    } x;
  } flags;
  uint8_t bin;         /* owner (set at format) */
  uint8_t index;       /* immutable: the page's index in its segment */
  uint8_t block_shift; /* block_size == block_odd << block_shift */
  /* Cache line 1: the line other threads write (xthread_free, one CAS per
   * remote free), kept off line 0 so a remote free does not take the
   * owner's fast-path line away; and what only slow paths touch. */
  _Alignas(64)
      pn_atomic_uintptr_t xthread_free; /* atomic: remote frees (CAS push), | PN_THREAD_FREE_FULL */
  uint32_t capacity;                    /* owner: blocks carved so far */
  uint32_t reserved;                    /* owner (set at format): blocks that fit */
  uint32_t stat_used; /* owner: `used` when the heap's statistics last counted the page (stats.c) */
  void *pool;         /* set at format: the pool whose objects the page holds, or NULL */
  struct pn_page *next; /* owner: the heap's queue for this bin (or the full queue) */
  struct pn_page *prev; /* owner */
} pn_page_t;

_Static_assert(sizeof(pn_page_t) == 128, "a page's metadata is two cache lines");

/* A segment: a PN_SEGMENT_SIZE-aligned mapping. The header (this struct)
 * sits at the start; page 0's blocks start after it. A block finds its
 * segment as `p & ~PN_SEGMENT_MASK` and its page as
 * `segment->pages[(p - segment) >> page_shift]`: no search, no lock.
 *
 * A huge segment holds one block of more than PN_LARGE_SIZE_MAX bytes (or a
 * fallback block, see heap.c), may be larger than PN_SEGMENT_SIZE, has no
 * owner, and goes back to the OS when its block is freed.
 */
struct pn_segment {
  /* Cache line 0: read by every free (xowner, page_shift); written only when
   * the segment changes hands or is formatted, and by the owner's page
   * take and release (used_pages, slow paths). */
  uintptr_t cookie; /* immutable: segment address ^ pn_cookie_key */
  pn_atomic_uintptr_t
      xowner;              /* atomic: the owning pn_heap_t *, 0 while abandoned or in the depot */
  pn_page_kind_t kind;     /* set when the segment is formatted */
  uint32_t page_shift;     /* set when formatted: log2 of the page size (63 for huge) */
  uint32_t page_count;     /* set when formatted */
  uint32_t used_pages;     /* owner: pages with block_size != 0 */
  size_t mapping_size;     /* immutable: bytes mapped */
  struct pn_segment *next; /* owner: the heap's list of segments of this kind */
  struct pn_segment *prev; /* owner */
  /* Cache line 1: written by other threads (a remote free that takes a page
   * out of the full state; the purgers), so it stays off line 0. */
  _Alignas(64) pn_atomic_uintptr_t
      xfull_freed;                /* atomic: bit i = page i left the full state (remote free) */
  pn_atomic_uintptr_t xreporting; /* atomic acq/rel: remote frees between their push and
                                   * their xfull_freed report (pn_page_report_begin); the
                                   * depot keeps the segment mapped while it is not 0.
                                   * Never reset: a reformat leaves it alone */
  /* Purging (purge.c), in 64 KiB purge units whatever the page size, so a
   * unit's state survives a reformat. Any thread may claim a pending unit:
   * the owner to reuse it, a purger to give it back; the fetch_and on
   * xpurge_pending that clears its bit decides (see purge.c). */
  pn_atomic_uintptr_t
      xpurge_pending;             /* atomic acq/rel: bit u = unit u is unused and holds memory */
  pn_atomic_uintptr_t xpurging;   /* atomic acq/rel: bit u = a purger is giving unit u back */
  pn_atomic_uintptr_t xcommitted; /* atomic: bit u = unit u was taken and not purged since */
  pn_atomic_uintptr_t xpurge_at_ns[PN_PAGES_MAX]; /* atomic relaxed: when unit u is due */
  /* Pools (pool.c); heaps leave these alone. A pool segment has xowner 0. */
  pn_atomic_uintptr_t
      xpool_owner;              /* atomic relaxed: token of the thread whose pool cache owns it */
  void *pool_cache;             /* owner (that thread): the pool cache that owns it */
  struct pn_segment *pool_next; /* immutable once pushed: the pool's registry of its segments */
  pn_atomic_uintptr_t xdepot_handoffs; /* atomic acq/rel: the C11 edge of every depot handoff */
  struct cds_lfs_node depot_node;      /* depot: link in an lfstack */
  struct rcu_head rcu_head;            /* depot: deferred push or unmap */
  pn_page_t pages[PN_PAGES_MAX];       /* 64-byte aligned (pn_page_t's first line) */
};

#define PN_SEGMENT_HEADER_SIZE                                                                     \
  ((sizeof(pn_segment_t) + PN_OS_PAGE_SIZE - 1) & ~(PN_OS_PAGE_SIZE - 1))
/* Secure builds put a PROT_NONE guard page after the header (around the
 * metadata) and one at the end of every segment, huge ones included
 * (between segments): set with mprotect when the segment is mapped, kept
 * while it is cached, so they cost nothing on the alloc and free paths. */
#define PN_SEGMENT_GUARD_SIZE (pn_secure ? PN_OS_PAGE_SIZE : 0)
#define PN_SEGMENT_FIRST_OFFSET (PN_SEGMENT_HEADER_SIZE + PN_SEGMENT_GUARD_SIZE)

/* A queue of pages: a doubly linked list. */
typedef struct pn_page_queue {
  pn_page_t *first;
  pn_page_t *last;
} pn_page_queue_t;

/* A thread heap. Owned by one thread; no field is shared: other threads reach
 * the heap's pages only through page->xthread_free and segment->xfull_freed.
 * Nothing outside the heap points at it except segment->xowner, which is
 * only compared, never dereferenced, so a heap is unmapped at thread exit.
 *
 * Invariant: pages_direct[w] is the first page of queues[pn_bin(16 * w)] or
 * &pn_page_empty when that queue is empty.
 */
struct pn_heap {
  pn_page_t *pages_direct[PN_DIRECT_WSIZE_MAX + 1];
  pn_page_queue_t queues[PN_BIN_COUNT];
  pn_segment_t *segments[PN_PAGE_KINDS]; /* segments with free pages first */
  pn_segment_t *empty_segment;           /* one empty segment kept for reuse */
  bool is_sentinel;                      /* pn_heap_empty or pn_heap_done */
  uint32_t purge_pages;                  /* pages released and not yet purged */
  uint32_t slow_count;                   /* slow-path entries, to look at the clock rarely */
  uint32_t shrink_releases;              /* pages purged at once, to shrink pages now and then */
  uint32_t shrink_bin;                   /* the size class where the last shrink scan ended */
  uint64_t adopted;                      /* statistics: segments adopted from the depot */
  pn_heap_stats_t *stats; /* owner: this thread's counters (stats.c); NULL in sentinels */
};

/* ------------------------------------------------------------------------ */
/* os.c: mmap, munmap, madvise, the segment map                             */
/* ------------------------------------------------------------------------ */

void *pn_os_alloc_aligned(size_t size, size_t align) PN_HIDDEN;
void pn_os_free(void *p, size_t size) PN_HIDDEN;
void pn_os_purge(void *p, size_t size) PN_HIDDEN;
void pn_os_protect(void *p, size_t size) PN_HIDDEN;
void pn_os_block_signals(sigset_t *old) PN_HIDDEN;
void pn_os_unblock_fault_signals(void) PN_HIDDEN;

/* The segment map: one bit per PN_SEGMENT_SIZE of the 48-bit address space,
 * set while a segment is mapped there (8 MiB of .bss, touched lazily). */
extern pn_atomic_uintptr_t pn_segment_map[] PN_HIDDEN;
#define PN_SEGMENT_MAP_BITS ((size_t)1 << (48 - PN_SEGMENT_SHIFT))
void pn_segment_map_set(const pn_segment_t *segment, bool present) PN_HIDDEN;

/* Whether `p` lies in the first PN_SEGMENT_SIZE of a live pantry segment.
 * racy: a relaxed load; a pointer that pantry handed out keeps its bit set
 * until it is freed, which happens after the caller's free by definition. */
static inline bool pn_segment_map_contains(const void *p) {
  uintptr_t index = (uintptr_t)p >> PN_SEGMENT_SHIFT;
  if (PN_UNLIKELY(index >= PN_SEGMENT_MAP_BITS))
    return false;
  return (pn_atomic_load_relaxed(&pn_segment_map[index / 64]) >> (index % 64)) & 1;
}

/* ------------------------------------------------------------------------ */
/* segment.c: segments and pages                                            */
/* ------------------------------------------------------------------------ */

extern uintptr_t pn_cookie_key PN_HIDDEN;

static inline pn_segment_t *pn_segment_of(const void *p) {
  return (pn_segment_t *)((uintptr_t)p & ~(uintptr_t)PN_SEGMENT_MASK);
}

static inline pn_page_t *pn_segment_page_of(pn_segment_t *segment, const void *p) {
  return &segment->pages[((uintptr_t)p - (uintptr_t)segment) >> segment->page_shift];
}

static inline pn_segment_t *pn_page_segment(const pn_page_t *page) { return pn_segment_of(page); }

/* The pages of `segment` that a remote free took out of the full state
 * since its owner last looked (bit i = page i), cleared as they are read.
 * The owner only (a heap or a pool cache). Acquire: matches the release
 * fetch_or in pn_page_free_remote; a racy relaxed peek saves the exchange
 * when no bit is set. */
static inline uintptr_t pn_segment_take_full_freed(pn_segment_t *segment) {
  if (pn_atomic_load_relaxed(&segment->xfull_freed) == 0)
    return 0;
  return pn_atomic_exchange_acquire(&segment->xfull_freed, 0);
}

/* Whether `segment` is a live pantry segment (its cookie, written when it
 * was formatted, matches its address under the process key). */
static inline bool pn_segment_is_valid(const pn_segment_t *segment) {
  return segment->cookie == ((uintptr_t)segment ^ pn_cookie_key);
}

pn_segment_t *pn_segment_alloc(pn_page_kind_t kind) PN_HIDDEN;
void pn_segment_format(pn_segment_t *segment, pn_page_kind_t kind) PN_HIDDEN;
pn_segment_t *pn_segment_alloc_huge(size_t size, size_t align, void **block) PN_HIDDEN;
void pn_segment_free_huge(pn_segment_t *segment) PN_HIDDEN;
pn_page_t *pn_segment_page_take(pn_segment_t *segment) PN_HIDDEN;
void pn_segment_page_release(pn_segment_t *segment, pn_page_t *page) PN_HIDDEN;

uint64_t pn_clock_now_ns(void) PN_HIDDEN;

/* ------------------------------------------------------------------------ */
/* page.c: free lists                                                       */
/* ------------------------------------------------------------------------ */

void pn_page_format(pn_page_t *page, size_t block_size, unsigned bin, void *pool) PN_HIDDEN;
void pn_page_extend(pn_page_t *page) PN_HIDDEN;
void pn_page_collect(pn_page_t *page) PN_HIDDEN;
void pn_page_collect_all(pn_page_t *page) PN_HIDDEN;
bool pn_page_try_mark_full(pn_page_t *page) PN_HIDDEN;
void *pn_page_block_start(const pn_page_t *page, const void *p) PN_HIDDEN;
bool pn_page_contains_free(const pn_page_t *page, const void *block) PN_HIDDEN;
/* Give back the free tail of a page carved far past its last live block
 * (after a burst). Owner only. */
bool pn_page_shrink_worth(const pn_page_t *page) PN_HIDDEN;
size_t pn_page_shrink(pn_page_t *page) PN_HIDDEN;
/* A remote push that may take a page out of the full state reports it in
 * segment->xfull_freed after the push has published its blocks; from that
 * instant the owner may collect them, empty the page and release the
 * segment (at thread exit, say), which the depot would unmap a grace period
 * later. So such a push counts itself in segment->xreporting from before
 * the CAS that publishes to after the report, and the depot's release
 * waits (another grace period, and another) while the count is not 0.
 * Without it a thread stopped between the two (the lock-freedom test stops
 * threads anywhere) would write into an unmapped segment. Acq_rel: the
 * increment comes before the publishing CAS (release), which the owner's
 * collect acquires, so every release that follows sees it; the decrement
 * comes after the report. */
static inline void pn_page_report_begin(pn_segment_t *segment) {
  pn_atomic_fetch_add_acq_rel(&segment->xreporting, 1);
}
static inline void pn_page_report_end(pn_segment_t *segment) {
  pn_atomic_fetch_sub_acq_rel(&segment->xreporting, 1);
}
void pn_page_push_remote(pn_segment_t *segment, pn_page_t *page, pn_block_t *head, pn_block_t *tail,
                         uint32_t count) PN_HIDDEN;
void pn_page_free_remote(pn_segment_t *segment, pn_page_t *page, pn_block_t *block,
                         const char *fn) PN_HIDDEN;

/* Whether the page hands out interior pointers of aligned blocks. Any
 * thread may ask while the owner sets it for another block: relaxed. */
static inline bool pn_page_has_aligned(const pn_page_t *page) {
  return pn_atomic_load_relaxed8(&page->flags.x.has_aligned) != 0;
}

/* Free-list links are stored encoded, next ^ page->key (a random value per
 * page), on every list of the page: free, local_free and the thread-free
 * list. A freed block's first word therefore decodes to NULL or to a block
 * of the same page, which user data almost never does: a free that finds
 * that pattern scans the page's lists to confirm a double free (an always-on
 * check that costs a compare on a word the free writes anyway), and a
 * stray write into a free block is unlikely to yield a pointer that escapes
 * the page. */
/* The key links are XORed with (0 only in a measurement build). */
static inline uintptr_t pn_link_key(const pn_page_t *page) {
  return PANTRY_ENCODE_LINKS ? page->key : 0;
}

static inline pn_block_t *pn_block_next(const pn_page_t *page, const pn_block_t *block) {
  pn_track_link_open((void *)block);
  pn_block_t *next = (pn_block_t *)((uintptr_t)block->next ^ pn_link_key(page));
  pn_track_link_close((void *)block);
  return next;
}

static inline void pn_block_set_next(const pn_page_t *page, pn_block_t *block,
                                     const pn_block_t *next) {
  pn_track_link_open(block);
  block->next = (pn_block_t *)((uintptr_t)next ^ pn_link_key(page));
  pn_track_link_close(block);
}

/* Pop the first block of page->free (not empty) and hand it out. Its link
 * word is cleared, so an allocated block never carries a valid link: a later
 * free finds user data there, or 0, which decodes to the page key, never to
 * NULL or into the page. Owner only. (A secure build also checked here that
 * the decoded link was NULL or inside the block's segment, against writes
 * after free: 2.6% more instructions on the server simulation, but 21% and
 * 29% more CPU time than the normal build in two runs of 16 and 12
 * alternating repetitions, against 2% without the check; dropped.) */
static inline pn_block_t *pn_page_pop(pn_page_t *page) {
  pn_block_t *block = page->free;
  pn_block_t *next = pn_block_next(page, block);
  page->free = next;
  /* The next pop reads `next`'s link, and its caller writes it: start the
   * miss now (tcmalloc prefetches its next free object the same way). It
   * pays where blocks come back cold: deferred frees, freed a grace period
   * after they went out (bench_deferred pantry/1: 18.6 vs 15.0 Mops/s,
   * worker CPU 53.5 vs 66.6 ns/op); on hot lists it is one instruction
   * (pantry_bench pairs, batch, server, prodcons: 0.95x..1.02x CPU).
   * Prefetching NULL or a stale link cannot fault. */
  __builtin_prefetch(next, 1);
  pn_track_alloc(block, page->block_size, pn_secure);
  page->used++;
  return block;
}

/* Secure builds: the free mark, which word 1 of a block holds while the
 * block is free (pn_page_pop clears it when the block is handed out). It
 * is derived from the page key, so a program cannot store it by chance (a
 * constant pattern could be the program's own: a block memset to 0xDF
 * would read as free). */
static inline uint64_t pn_block_free_mark(const pn_page_t *page, const pn_block_t *block) {
  return ~((uintptr_t)block ^ page->key);
}

/* A block goes back to its page's lists by its owner: mark it free, fill
 * and poison it (track.h). Secure builds catch here a double free: a free
 * block's word 1 holds the free mark, an allocated block's was cleared by
 * pn_page_pop. */
static inline void pn_block_release(const pn_page_t *page, pn_block_t *block, const char *fn) {
  if (pn_secure) {
    uint64_t mark = pn_block_free_mark(page, block);
    if (PN_UNLIKELY(((const uint64_t *)block)[1] == mark))
      pn_fatal("%s(%p): double free (secure mode: the block holds the free mark; block size %zu)",
               fn, (void *)block, page->block_size);
    ((uint64_t *)block)[1] = mark;
  }
  pn_track_free(block, page->block_size, pn_secure);
}

/* The same for a free by a thread that does not own the page. Secure builds
 * claim the block with one atomic exchange of the free mark into word 1,
 * so of two threads that free the same block at the same time exactly one
 * reads the word the allocation left there, and the other reads the mark
 * and aborts. Relaxed is enough: the claim needs only the single
 * modification order of word 1 (its partner is the other freer's
 * exchange); the block's contents reach the owner through the release CAS
 * of the push. A race of the owner's plain free (pn_block_release) with a
 * remote one is not caught at the moment they overlap; either order one
 * after the other is. */
static inline void pn_block_release_remote(const pn_page_t *page, pn_block_t *block,
                                           const char *fn) {
  if (pn_secure) {
    uint64_t mark = pn_block_free_mark(page, block);
    if (PN_UNLIKELY(pn_atomic_exchange_relaxed_word(&((uint64_t *)block)[1], mark) == mark))
      pn_fatal("%s(%p): double free (secure mode: the block holds the free mark; freed from a "
               "thread that does not own it; block size %zu)",
               fn, (void *)block, page->block_size);
  }
  pn_track_free(block, page->block_size, pn_secure);
}

/* Whether `block`'s first word looks like a free block's link: decoded, NULL
 * or an address inside the page. */
static inline bool pn_block_maybe_free(const pn_page_t *page, const pn_block_t *block) {
  if (!PANTRY_CHECK_DOUBLE_FREE) /* a measurement build (see PANTRY_CHECK_DOUBLE_FREE) */
    return false;
  /* A raw read: the block is allocated (or this is a double free, which a
   * memory checker is right to report here). */
  uintptr_t next = (uintptr_t)block->next ^ pn_link_key(page);
  return next == 0 || next - (uintptr_t)page->page_start < pn_atomic_load_relaxed32u(&page->area);
}

/* Whether `p` is the start of a block of `page`: off % block_size == 0 by
 * the divisibility test of Granlund and Montgomery, for a divisor
 * block_size = odd << shift (Hacker's Delight, 10-17): with
 * q = off * odd^-1 mod 2^32, off is a multiple of block_size exactly when q
 * rotated right by shift is at most UINT32_MAX / block_size. (If odd
 * divides off, q = off / odd and the rotation is a plain shift when its low
 * shift bits are 0, else it lands above the limit; if odd does not divide
 * off, q alone exceeds UINT32_MAX / odd.) A multiply and a rotate, no divide.
 * off < area < 2^32 keeps it exact. */
static inline bool pn_page_is_block_start(const pn_page_t *page, const void *p) {
  uintptr_t off = (uintptr_t)p - (uintptr_t)page->page_start;
  if (PN_UNLIKELY(off >= pn_atomic_load_relaxed32u(&page->area)))
    return false;
  uint32_t q = (uint32_t)off * page->block_odd_inv;
  unsigned shift = page->block_shift;
  q = (q >> shift) | (q << ((32 - shift) & 31)); /* rotate right (shift < 32) */
  return q <= page->block_div_limit;
}

/* ------------------------------------------------------------------------ */
/* depot.c: the global fallback                                             */
/* ------------------------------------------------------------------------ */

void pn_depot_abandon(pn_segment_t *segment) PN_HIDDEN;
pn_segment_t *pn_depot_adopt(void) PN_HIDDEN;
pn_segment_t *pn_depot_take_abandoned(void) PN_HIDDEN;
void pn_depot_return_abandoned(pn_segment_t *segment) PN_HIDDEN;
void pn_depot_release(pn_segment_t *segment) PN_HIDDEN;
pn_segment_t *pn_depot_take_cached(void) PN_HIDDEN;
void pn_depot_collect(bool flush) PN_HIDDEN;
void pn_depot_fork_prepare(void) PN_HIDDEN;
void pn_depot_fork_parent(void) PN_HIDDEN;
void pn_depot_fork_child(void) PN_HIDDEN;

/* ------------------------------------------------------------------------ */
/* heap.c: thread heaps and the slow paths                                  */
/* ------------------------------------------------------------------------ */

extern _Thread_local pn_heap_t *pn_heap_tls PN_HIDDEN;
extern pn_page_t pn_page_empty PN_HIDDEN;

void *pn_heap_malloc_slow(pn_heap_t *heap, size_t size) PN_HIDDEN PN_NOINLINE;
void *pn_heap_malloc_aligned(pn_heap_t *heap, size_t size, size_t align) PN_HIDDEN;
void pn_heap_page_retire(pn_heap_t *heap, pn_page_t *page) PN_HIDDEN PN_NOINLINE;
void pn_heap_page_freed(pn_heap_t *heap, pn_page_t *page) PN_HIDDEN PN_NOINLINE;
void pn_heap_free_local_slow(pn_heap_t *heap, pn_page_t *page, pn_block_t *block,
                             const char *fn) PN_HIDDEN;
pn_heap_t *pn_heap_get_or_init(void) PN_HIDDEN;
void pn_process_init(void) PN_HIDDEN;
/* pantry_collect: return the heap's empty pages and purge its unused ones. */
/* The purge thread: tidy the segments of exited threads (see heap.c).
 * Returns whether any stay abandoned (holding live blocks). */
bool pn_heap_tidy_abandoned(uint64_t now) PN_HIDDEN;
void pn_heap_collect(pn_heap_t *heap, bool force) PN_HIDDEN;

/* ------------------------------------------------------------------------ */
/* leak.c: the leak report (PANTRY_LEAK_REPORT=1)                           */
/* ------------------------------------------------------------------------ */

extern bool pn_leak_tracking PN_HIDDEN;
void pn_leak_arena_created(void) PN_HIDDEN;
void pn_leak_arena_destroyed(void) PN_HIDDEN;

/* ------------------------------------------------------------------------ */
/* stats.c: process-wide slow-path counters                                 */
/* ------------------------------------------------------------------------ */

typedef enum pn_stat {
  PN_STAT_SEGMENTS_MAPPED,
  PN_STAT_SEGMENTS_UNMAPPED,
  PN_STAT_SEGMENTS_ABANDONED,
  PN_STAT_SEGMENTS_ADOPTED,
  PN_STAT_SEGMENTS_CACHED,
  PN_STAT_SEGMENTS_REUSED,
  PN_STAT_HUGE_MAPPED,
  PN_STAT_HUGE_UNMAPPED,
  PN_STAT_BYTES_MAPPED,
  PN_STAT_HEAPS_CREATED,
  PN_STAT_HEAPS_ABANDONED,
  PN_STAT_FALLBACK_ALLOCS,
  PN_STAT_PAGES_PURGED,     /* 64 KiB purge units given back (purge.c) */
  PN_STAT_PURGES,           /* madvise calls that gave units back */
  PN_STAT_BYTES_PURGED,     /* bytes those calls gave back */
  PN_STAT_HUGE_BYTES,       /* bytes of huge blocks live now */
  PN_STAT_BYTES_COMMITTED,  /* headers, units taken and not purged since, huge mappings */
  PN_STAT_SEGMENTS_FLUSHED, /* cached segments unmapped by pantry_collect(true) */
  PN_STAT_COUNT
} pn_stat_t;

/* atomic relaxed: statistics, no ordering with anything. */
typedef struct pn_stats_counters {
  pn_atomic_uintptr_t x[PN_STAT_COUNT];
} pn_stats_counters_t;

extern pn_stats_counters_t pn_stats PN_HIDDEN;

static inline void pn_stat_add(pn_stat_t stat, uintptr_t n) {
  pn_atomic_fetch_add_relaxed(&pn_stats.x[stat], n);
}

static inline void pn_stat_sub(pn_stat_t stat, uintptr_t n) {
  pn_atomic_fetch_sub_relaxed(&pn_stats.x[stat], n);
}

void pn_stats_print_counters(FILE *out) PN_HIDDEN;

/* Per-thread counters. Each thread heap claims one block from a registry
 * when it is created and gives it back when it is abandoned, after folding
 * its counts into the process total (pn_stats_heap_release). Blocks are never
 * freed, so pantry_stats_get walks the registry at any time with no lock.
 * Who writes what: every counter is written by the owning heap's thread
 * only, with a relaxed load and store (no read-modify-write, no fence: a
 * plain add on x86), and read by any thread (relaxed). Nothing here is
 * touched on the fast paths: heap.c counts a page's blocks when the page
 * reaches a slow path (pn_heap_stat_page). xclaimed: CAS 0 -> 1 by the
 * claiming thread, store_release 0 by the releasing one. xnext: used in the
 * last block of each registry chunk only (stats.c, stats_next), written
 * before the chunk is published (release CAS on the registry head).
 * Invariant (quiescent, per size class b): the sum over blocks and the
 * total of xlive[b] == the sum over pages p of b of p->stat_used. */
struct pn_heap_stats {
  pn_atomic_uintptr_t xlive[PN_BIN_COUNT];  /* blocks in use per size class (modulo 2^64) */
  pn_atomic_uintptr_t xpages[PN_BIN_COUNT]; /* pages per size class */
  pn_atomic_uintptr_t xremote_frees;        /* frees by this thread of other threads' blocks */
  pn_atomic_uintptr_t xclaimed;             /* 1 while a heap uses the block */
  pn_atomic_uintptr_t xnext;                /* immutable once published: the next chunk */
};

pn_heap_stats_t *pn_stats_heap_claim(void) PN_HIDDEN;
void pn_stats_heap_release(pn_heap_stats_t *stats) PN_HIDDEN;
void pn_stats_heap_settle(pn_heap_t *heap) PN_HIDDEN;
void pn_stats_page_adopted(pn_heap_t *heap, pn_page_t *page) PN_HIDDEN;
void pn_stats_orphan_page(pn_page_t *page, uint32_t used, bool released) PN_HIDDEN;

/* Owner-only add (see struct pn_heap_stats): wraps modulo 2^64 on purpose. */
static inline void pn_heap_stat_add(pn_atomic_uintptr_t *x, uintptr_t n) {
  pn_atomic_store_relaxed(x, pn_atomic_load_relaxed(x) + n);
}

/* Count what `page` handed out or took back since it was last counted.
 * Called by the owner on slow paths only. */
static inline void pn_heap_stat_page(pn_heap_t *heap, pn_page_t *page) {
  if (page->used == page->stat_used)
    return;
  pn_heap_stat_add(&heap->stats->xlive[page->bin], (uintptr_t)page->used - page->stat_used);
  page->stat_used = page->used;
}

/* A free by `heap`'s thread of another thread's block. */
static inline void pn_stats_remote_free(pn_heap_t *heap) {
  if (PN_LIKELY(heap->stats != NULL))
    pn_heap_stat_add(&heap->stats->xremote_frees, 1);
}

/* A page of `heap` formatted (+1) or released (-1); released pages were
 * counted down to zero blocks first. */
static inline void pn_heap_stat_pages(pn_heap_t *heap, pn_page_t *page, int delta) {
  pn_heap_stat_page(heap, page);
  pn_heap_stat_add(&heap->stats->xpages[page->bin], (uintptr_t)(intptr_t)delta);
}

/* ------------------------------------------------------------------------ */
/* purge.c: memory back to the OS                                           */
/* ------------------------------------------------------------------------ */

/* A segment's purge state is kept in 64 KiB units (PN_PAGES_MAX of them), so
 * it means the same for small, medium and large pages. Unit 0 starts after
 * the header (and guard); the last ends before the end guard. */
#define PN_PURGE_UNIT_SHIFT 16

/* How long an emptied page keeps its memory before it goes back to the OS
 * (madvise), so a page freed and reused soon costs no page faults. Set from
 * PANTRY_PURGE_DELAY_MS (options.c); 10 ms by default, as mimalloc's. */
extern pn_atomic_uintptr_t pn_purge_xdelay_ns PN_HIDDEN;

bool pn_purge_page_take(pn_segment_t *segment, const pn_page_t *page) PN_HIDDEN;
void pn_purge_page_release(pn_segment_t *segment, unsigned page_index) PN_HIDDEN;
uint64_t pn_purge_segment(pn_segment_t *segment, uint64_t now, bool all) PN_HIDDEN;
void pn_purge_segment_forget(pn_segment_t *segment) PN_HIDDEN;
void pn_purge_segment_reset(pn_segment_t *segment) PN_HIDDEN;
bool pn_purge_segment_busy(pn_segment_t *segment) PN_HIDDEN;
void pn_purge_thread_start_maybe(void) PN_HIDDEN;
/* Emptied memory a heap (and the purge thread, process-wide) keeps for reuse
 * during the purge delay, at most, in purge units: beyond it, memory goes
 * back at once (4 MiB). */
#define PN_PURGE_RESERVE_UNITS 64u
uint32_t pn_purge_page_now(pn_segment_t *segment, unsigned page_index) PN_HIDDEN;
void pn_purge_local_reset(uint32_t pending_units) PN_HIDDEN;
void pn_purge_delay_changed(void) PN_HIDDEN;

/* The units of `segment` that are unused and wait for their purge. */
static inline uint32_t pn_purge_pending_units(pn_segment_t *segment) {
  return (uint32_t)__builtin_popcountll(pn_atomic_load_relaxed(&segment->xpurge_pending));
}

/* ------------------------------------------------------------------------ */
/* options.c: PANTRY_* options                                              */
/* ------------------------------------------------------------------------ */

/* Read once, at process initialisation (pn_process_init), from the
 * environment; never allocates. */
void pn_options_init(void) PN_HIDDEN;
/* atomic relaxed: PANTRY_VERBOSE, PANTRY_SHOW_STATS, PANTRY_PURGE_THREAD. */
extern pn_atomic_uintptr_t pn_option_xverbose PN_HIDDEN;
extern pn_atomic_uintptr_t pn_option_xshow_stats PN_HIDDEN;
extern pn_atomic_uintptr_t pn_option_xpurge_thread PN_HIDDEN;

/* ------------------------------------------------------------------------ */
/* pool.c: pools                                                            */
/* ------------------------------------------------------------------------ */

/* pantry_free (and friends) of an object of `pool`: diagnosed, aborts. */
_Noreturn void pn_pool_misfree(const void *pool, const void *p, const char *fn) PN_HIDDEN PN_COLD;
struct pantry_pool;
void pn_pool_note_deferred(struct pantry_pool *pool) PN_HIDDEN;
/* The checks of pantry_pool_free (for pantry_pool_free_deferred): diagnosed, aborts. */
void pn_pool_check(void *pool, void *obj, const char *fn) PN_HIDDEN;

#endif /* PN_INTERNAL_H */
