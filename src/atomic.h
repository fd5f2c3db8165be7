/* atomic.h - thin, named wrappers over <stdatomic.h>.
 *
 * Every shared access in pantry goes through one of these functions, so
 * `grep -n pn_atomic_` lists every place threads meet. The memory order is
 * part of the name; the caller's comment names the partner of each acquire
 * and release. Fields that these functions touch start with `x`.
 *
 * Layer: below everything; includes nothing of pantry's.
 */
#ifndef PN_ATOMIC_H
#define PN_ATOMIC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef _Atomic(uintptr_t) pn_atomic_uintptr_t;
typedef _Atomic(uint32_t) pn_atomic_uint32_t;

/* uintptr_t: list heads, owners, bitmaps, counters. */

static inline uintptr_t pn_atomic_load_relaxed(pn_atomic_uintptr_t *p) {
  return atomic_load_explicit(p, memory_order_relaxed);
}

static inline uintptr_t pn_atomic_load_acquire(pn_atomic_uintptr_t *p) {
  return atomic_load_explicit(p, memory_order_acquire);
}

static inline void pn_atomic_store_relaxed(pn_atomic_uintptr_t *p, uintptr_t v) {
  atomic_store_explicit(p, v, memory_order_relaxed);
}

static inline void pn_atomic_store_release(pn_atomic_uintptr_t *p, uintptr_t v) {
  atomic_store_explicit(p, v, memory_order_release);
}

static inline uintptr_t pn_atomic_exchange_acquire(pn_atomic_uintptr_t *p, uintptr_t v) {
  return atomic_exchange_explicit(p, v, memory_order_acquire);
}

static inline uintptr_t pn_atomic_exchange_acq_rel(pn_atomic_uintptr_t *p, uintptr_t v) {
  return atomic_exchange_explicit(p, v, memory_order_acq_rel);
}

/* On failure `*expected` receives the current value, as in C11. */
static inline bool pn_atomic_cas_weak_release(pn_atomic_uintptr_t *p, uintptr_t *expected,
                                              uintptr_t desired) {
  return atomic_compare_exchange_weak_explicit(p, expected, desired, memory_order_release,
                                               memory_order_relaxed);
}

static inline bool pn_atomic_cas_strong_relaxed(pn_atomic_uintptr_t *p, uintptr_t *expected,
                                                uintptr_t desired) {
  return atomic_compare_exchange_strong_explicit(p, expected, desired, memory_order_relaxed,
                                                 memory_order_relaxed);
}

static inline bool pn_atomic_cas_strong_acq_rel(pn_atomic_uintptr_t *p, uintptr_t *expected,
                                                uintptr_t desired) {
  return atomic_compare_exchange_strong_explicit(p, expected, desired, memory_order_acq_rel,
                                                 memory_order_acquire);
}

static inline uintptr_t pn_atomic_fetch_or_release(pn_atomic_uintptr_t *p, uintptr_t v) {
  return atomic_fetch_or_explicit(p, v, memory_order_release);
}

static inline uintptr_t pn_atomic_fetch_or_acq_rel(pn_atomic_uintptr_t *p, uintptr_t v) {
  return atomic_fetch_or_explicit(p, v, memory_order_acq_rel);
}

static inline uintptr_t pn_atomic_fetch_and_acq_rel(pn_atomic_uintptr_t *p, uintptr_t v) {
  return atomic_fetch_and_explicit(p, v, memory_order_acq_rel);
}

static inline uintptr_t pn_atomic_fetch_and_release(pn_atomic_uintptr_t *p, uintptr_t v) {
  return atomic_fetch_and_explicit(p, v, memory_order_release);
}

static inline uintptr_t pn_atomic_fetch_and_relaxed(pn_atomic_uintptr_t *p, uintptr_t v) {
  return atomic_fetch_and_explicit(p, v, memory_order_relaxed);
}

static inline uintptr_t pn_atomic_fetch_add_relaxed(pn_atomic_uintptr_t *p, uintptr_t v) {
  return atomic_fetch_add_explicit(p, v, memory_order_relaxed);
}

static inline uintptr_t pn_atomic_fetch_sub_relaxed(pn_atomic_uintptr_t *p, uintptr_t v) {
  return atomic_fetch_sub_explicit(p, v, memory_order_relaxed);
}

static inline uintptr_t pn_atomic_fetch_add_acq_rel(pn_atomic_uintptr_t *p, uintptr_t v) {
  return atomic_fetch_add_explicit(p, v, memory_order_acq_rel);
}

static inline uintptr_t pn_atomic_fetch_sub_acq_rel(pn_atomic_uintptr_t *p, uintptr_t v) {
  return atomic_fetch_sub_explicit(p, v, memory_order_acq_rel);
}

/* A full fence: orders a store before it against a load after it (Dekker:
 * each side stores its flag, fences, then reads the other's). */
static inline void pn_atomic_fence_seq_cst(void) { atomic_thread_fence(memory_order_seq_cst); }

/* uint32_t: small counters and states. */

static inline uint32_t pn_atomic_load_acquire32(pn_atomic_uint32_t *p) {
  return atomic_load_explicit(p, memory_order_acquire);
}

static inline void pn_atomic_store_release32(pn_atomic_uint32_t *p, uint32_t v) {
  atomic_store_explicit(p, v, memory_order_release);
}

static inline bool pn_atomic_cas_strong_acq_rel32(pn_atomic_uint32_t *p, uint32_t *expected,
                                                  uint32_t desired) {
  return atomic_compare_exchange_strong_explicit(p, expected, desired, memory_order_acq_rel,
                                                 memory_order_acquire);
}

/* A plain byte that one thread sets and others read while it may change:
 * relaxed atomic access without an _Atomic type (the byte shares a union
 * with one the owner reads non-atomically; page->flags in internal.h). */

static inline uint8_t pn_atomic_load_relaxed8(const uint8_t *p) {
  return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void pn_atomic_store_relaxed8(uint8_t *p, uint8_t v) {
  __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

/* A plain word of a block that threads may race on only when a program
 * frees the block twice at once (secure mode's claim of a freed block,
 * internal.h): relaxed atomic exchange without an _Atomic type. */
static inline uint64_t pn_atomic_exchange_relaxed_word(uint64_t *p, uint64_t v) {
  return __atomic_exchange_n(p, v, __ATOMIC_RELAXED);
}

/* The same for a plain 32-bit field (page->area in internal.h): the owner
 * writes it while other threads may read it to check a free. */

static inline uint32_t pn_atomic_load_relaxed32u(const uint32_t *p) {
  return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void pn_atomic_store_relaxed32u(uint32_t *p, uint32_t v) {
  __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

#endif /* PN_ATOMIC_H */
