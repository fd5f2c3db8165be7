/* os.c - the bottom layer: address space from the kernel, and the signal
 * masks of pantry's threads.
 *
 * Owns: mmap/munmap/madvise calls and the segment map (one bit per 4 MiB of
 * the 48-bit address space, set while a pantry segment is mapped there).
 * Calls: the kernel only. Shared state: pn_segment_map, written with atomic
 * fetch_or/fetch_and by whichever thread maps or unmaps a segment, read
 * (relaxed) by every free to reject pointers pantry never handed out.
 */
#include <errno.h>
#include <sys/mman.h>

#include "internal.h"

/* 2^26 bits = 8 MiB of .bss: the kernel maps its pages on first touch. */
pn_atomic_uintptr_t pn_segment_map[PN_SEGMENT_MAP_BITS / 64];

void pn_segment_map_set(const pn_segment_t *segment, bool present) {
  uintptr_t index = (uintptr_t)segment >> PN_SEGMENT_SHIFT;
  if (index >= PN_SEGMENT_MAP_BITS)
    return; /* never: mmap stays below 2^47 unless hinted */
  uintptr_t bit = (uintptr_t)1 << (index % 64);
  /* Release on set: a thread that sees the bit (relaxed) only dereferences
   * the segment header for a pointer it obtained through the allocation
   * that published the header, so the bit itself needs no stronger order. */
  if (present)
    atomic_fetch_or_explicit(&pn_segment_map[index / 64], bit, memory_order_release);
  else
    atomic_fetch_and_explicit(&pn_segment_map[index / 64], ~bit, memory_order_release);
}

/* Map `size` bytes (a multiple of the OS page) aligned to `align` (a power
 * of two, at least the OS page): map size + align, then trim both ends. */
void *pn_os_alloc_aligned(size_t size, size_t align) {
  if (size > SIZE_MAX - align) {
    errno = ENOMEM;
    return NULL;
  }
  size_t span = size + align;
  uint8_t *p =
      mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    errno = ENOMEM;
    return NULL;
  }
  uint8_t *aligned = (uint8_t *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
  size_t head = (size_t)(aligned - p);
  size_t tail = span - head - size;
  if (head)
    munmap(p, head);
  if (tail)
    munmap(aligned + size, tail);
  return aligned;
}

void pn_os_free(void *p, size_t size) {
  if (munmap(p, size) != 0)
    pn_warning("munmap(%p, %zu) failed: errno %d", p, size, errno);
}

/* Make a range inaccessible: a guard page (secure builds). */
void pn_os_protect(void *p, size_t size) {
  if (size != 0 && mprotect(p, size, PROT_NONE) != 0)
    pn_warning("mprotect(%p, %zu) failed: errno %d", p, size, errno);
}

/* Give the pages back to the kernel; the range stays mapped and reads as
 * zeros when touched again. */
void pn_os_purge(void *p, size_t size) {
  if (size == 0)
    return;
  (void)madvise(p, size, MADV_DONTNEED);
}

/* Signals and pantry's threads. A fault (SIGSEGV, SIGBUS, SIGFPE, SIGILL,
 * SIGTRAP, SIGSYS) is raised in the thread that caused it. If that thread
 * blocks the signal, the kernel kills the process at once: no handler runs,
 * so no sanitizer report and no message says where. So pantry's threads
 * block every signal but these. */
static const int os_fault_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS};
#define OS_FAULT_SIGNALS (sizeof os_fault_signals / sizeof os_fault_signals[0])

/* Around pthread_create of pantry's own threads (purge, deferred worker):
 * block every signal but the faults, so none meant for the program lands
 * on them; *old receives the caller's mask, to set back after the create. */
void pn_os_block_signals(sigset_t *old) {
  sigset_t set;
  sigfillset(&set);
  for (size_t i = 0; i < OS_FAULT_SIGNALS; i++)
    sigdelset(&set, os_fault_signals[i]);
  pthread_sigmask(SIG_SETMASK, &set, old);
}

/* In pantry's call_rcu callbacks: liburcu starts its call_rcu threads with
 * every signal blocked, faults too. Once per thread (the flag is the
 * thread's own). */
static _Thread_local bool os_faults_unblocked;

void pn_os_unblock_fault_signals(void) {
  if (PN_LIKELY(os_faults_unblocked))
    return;
  os_faults_unblocked = true;
  sigset_t set;
  sigemptyset(&set);
  for (size_t i = 0; i < OS_FAULT_SIGNALS; i++)
    sigaddset(&set, os_fault_signals[i]);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}
