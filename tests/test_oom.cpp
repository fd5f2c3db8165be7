// test_oom.cpp - out of memory (issue 6): under RLIMIT_AS every allocation
// function returns NULL with errno ENOMEM, nothing crashes, pools and arenas
// stay usable, the memory freed while the limit holds can be allocated again
// (round after round: nothing leaks), and once the limit is raised,
// allocation works as before.
//
// The limit is set in a forked child, so the test process keeps its own.
// While the limit holds, the child allocates nothing outside pantry (its
// records live in static arrays) and writes its report with snprintf into a
// static buffer. Sanitizer builds reserve terabytes of shadow address space
// up front, so the limit there is set relative to the child's current
// address-space size like everywhere else; the sanitizer's own allocator is
// not used while the limit holds. Public API only.
#include <catch2/catch.hpp>

#include <pantry.h>

#include "child_process.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>

#include <sys/resource.h>
#include <unistd.h>

using namespace pantry_test;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

/* The child's address-space size in bytes (/proc/self/statm, first field). */
std::size_t vm_bytes() {
  std::FILE *f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr)
    return 0;
  unsigned long size = 0;
  int got = std::fscanf(f, "%lu", &size);
  std::fclose(f);
  return got == 1 ? static_cast<std::size_t>(size) * static_cast<std::size_t>(sysconf(_SC_PAGESIZE))
                  : 0;
}

/* The report of the child: appended with snprintf, never allocated. */
char g_report[8192];
std::size_t g_report_len;
int g_failures;

__attribute__((format(printf, 1, 2))) void note(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(g_report + g_report_len, sizeof g_report - g_report_len, fmt, ap);
  va_end(ap);
  if (n > 0)
    g_report_len = std::min(sizeof g_report - 1, g_report_len + static_cast<std::size_t>(n));
}

#define OOM_EXPECT(cond)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      g_failures++;                                                                                \
      note("FAILED line %d: %s (errno %d)\n", __LINE__, #cond, errno);                             \
    }                                                                                              \
  } while (0)

constexpr std::size_t kMaxBlocks = 1 << 18;
void *g_blocks[kMaxBlocks];
std::size_t g_sizes[kMaxBlocks];
void *g_objs[1 << 16];

/* Allocates until NULL, with sizes cycling through small, medium, large
 * and huge; checks every NULL is ENOMEM. Returns the bytes allocated. */
std::size_t fill_memory(std::size_t *count, int *bad_errno) {
  static const std::size_t sizes[] = {48, 1000, 7000, 30000, 200000, 1 * MiB, 3 * MiB};
  std::size_t bytes = 0, n = 0;
  unsigned failures_in_a_row = 0;
  for (std::size_t i = 0; n < kMaxBlocks && failures_in_a_row < 7; i++) {
    std::size_t size = sizes[i % 7];
    errno = 0;
    void *p = pantry_malloc(size);
    if (p == nullptr) {
      if (errno != ENOMEM)
        (*bad_errno)++;
      failures_in_a_row++;
      continue;
    }
    failures_in_a_row = 0;
    std::memset(p, static_cast<int>(n & 0xff), std::min<std::size_t>(size, 64));
    std::memset(static_cast<char *>(p) + size - std::min<std::size_t>(size, 64),
                static_cast<int>(n & 0xff), std::min<std::size_t>(size, 64));
    g_blocks[n] = p;
    g_sizes[n] = size;
    n++;
    bytes += size;
  }
  // Small blocks fill the last pages.
  for (unsigned misses = 0; n < kMaxBlocks && misses < 100;) {
    errno = 0;
    void *p = pantry_malloc(48);
    if (p == nullptr) {
      if (errno != ENOMEM)
        (*bad_errno)++;
      misses++;
      continue;
    }
    std::memset(p, static_cast<int>(n & 0xff), 48);
    g_blocks[n] = p;
    g_sizes[n] = 48;
    n++;
    bytes += 48;
  }
  *count = n;
  return bytes;
}

bool blocks_intact(std::size_t n) {
  for (std::size_t i = 0; i < n; i++) {
    const unsigned char *p = static_cast<const unsigned char *>(g_blocks[i]);
    std::size_t s = g_sizes[i], k = std::min<std::size_t>(s, 64);
    for (std::size_t j = 0; j < k; j++)
      if (p[j] != (i & 0xff) || p[s - k + j] != (i & 0xff))
        return false;
  }
  return true;
}

std::size_t g_drops;
void oom_drop(void *, void *) { g_drops++; }

/* The child's whole run; returns normally (exit 0) even when checks failed:
 * the report says what failed. */
void oom_child() {
  alarm(120);
  // Made before the limit: a pool, an arena, a thread heap, pantry's
  // deferred machinery; a first pool destroy starts liburcu's call_rcu
  // thread (a thread cannot be started under a tight limit).
  pantry_pool_config_t cfg{};
  cfg.name = "oom-pool";
  cfg.layout = {200, 16};
  cfg.drop = oom_drop;
  pantry_pool_t *warm = pantry_pool_create(&cfg);
  pantry_pool_free(warm, pantry_pool_alloc(warm));
  pantry_pool_destroy(warm);
  pantry_free_deferred(pantry_malloc(100));
  pantry_deferred_barrier();
  pantry_pool_t *pool = pantry_pool_create(&cfg);
  pantry_arena_config_t acfg{};
  acfg.name = "oom-arena";
  pantry_arena_t *arena = pantry_arena_create(&acfg);
  OOM_EXPECT(pool != nullptr && arena != nullptr);

  const std::size_t headroom = 192 * MiB;
  struct rlimit old_limit;
  getrlimit(RLIMIT_AS, &old_limit);
  struct rlimit limit = old_limit;
  limit.rlim_cur = vm_bytes() + headroom;
  if (setrlimit(RLIMIT_AS, &limit) != 0) {
    note("setrlimit failed: errno %d\n", errno);
    g_failures++;
    return;
  }
  note("limit: address space %zu MiB (current + %zu MiB)\n", std::size_t(limit.rlim_cur / MiB),
       headroom / MiB);

  std::size_t first_bytes = 0;
  for (int round = 0; round < 3; round++) {
    // Some pool objects and arena memory in use before memory runs out.
    std::size_t objs = 0;
    for (; objs < 2000; objs++) {
      g_objs[objs] = pantry_pool_alloc(pool);
      if (g_objs[objs] == nullptr)
        break;
    }
    OOM_EXPECT(objs == 2000);
    for (int i = 0; i < 64; i++)
      OOM_EXPECT(pantry_arena_alloc(arena, 3000, 16) != nullptr);

    std::size_t n = 0;
    int bad_errno = 0;
    std::size_t bytes = fill_memory(&n, &bad_errno);
    note("round %d: %zu blocks, %zu MiB before NULL\n", round, n, bytes / MiB);
    OOM_EXPECT(bad_errno == 0);
    OOM_EXPECT(n > 0 && n < kMaxBlocks);
    if (round == 0)
      first_bytes = bytes;
    else // what was freed came back: at least 90% of the first round again
      OOM_EXPECT(bytes >= first_bytes / 10 * 9);

    // Every function reports ENOMEM, and nothing crashes.
    errno = 0;
    OOM_EXPECT(pantry_malloc(64 * MiB) == nullptr && errno == ENOMEM);
    errno = 0;
    OOM_EXPECT(pantry_calloc(16, 4 * MiB) == nullptr && errno == ENOMEM);
    errno = 0;
    OOM_EXPECT(pantry_aligned_alloc(2 * MiB, 8 * MiB) == nullptr && errno == ENOMEM);
    errno = 0;
    OOM_EXPECT(pantry_alloc(pantry_layout_t{32 * MiB, 4096}) == nullptr && errno == ENOMEM);
    void *last = g_blocks[n - 1];
    errno = 0;
    OOM_EXPECT(pantry_realloc(last, 64 * MiB) == nullptr && errno == ENOMEM);
    OOM_EXPECT(blocks_intact(n)); // the failed realloc left its block alone

    // The pool: allocate until NULL (ENOMEM), then free and allocate again.
    const std::size_t objs_before = objs;
    for (unsigned misses = 0; objs < (1u << 16) && misses < 3;) {
      errno = 0;
      void *o = pantry_pool_alloc(pool);
      if (o == nullptr) {
        OOM_EXPECT(errno == ENOMEM);
        misses++;
        continue;
      }
      std::memset(o, 0x3c, 200);
      g_objs[objs++] = o;
    }
    note("round %d: pool gave %zu more objects\n", round, objs - objs_before);
    OOM_EXPECT(objs < (1u << 16));
    for (std::size_t i = 0; i < objs; i += 2)
      pantry_pool_free(pool, g_objs[i]);
    for (std::size_t i = 0; i < objs; i += 2) {
      g_objs[i] = pantry_pool_alloc(pool);
      OOM_EXPECT(g_objs[i] != nullptr); // its own freed objects come back
    }

    // The arena: allocate until NULL, register drops until -1; reset works.
    std::size_t arena_bytes = 0;
    for (unsigned misses = 0; misses < 3;) {
      errno = 0;
      void *p = pantry_arena_alloc(arena, 3000, 16);
      if (p == nullptr) {
        OOM_EXPECT(errno == ENOMEM);
        misses++;
        continue;
      }
      std::memset(p, 1, 3000);
      arena_bytes += 3000;
    }
    std::size_t owned = 0;
    for (int i = 0; i < 100000; i++) {
      errno = 0;
      if (pantry_arena_own(arena, nullptr, oom_drop, nullptr) != 0) {
        OOM_EXPECT(errno == ENOMEM);
        break;
      }
      owned++;
    }
    note("round %d: arena gave %zu more KiB, %zu drops registered\n", round, arena_bytes / KiB,
         owned);
    std::size_t drops_before = g_drops;
    pantry_arena_reset(arena);
    OOM_EXPECT(g_drops - drops_before == owned);
    OOM_EXPECT(pantry_arena_alloc(arena, 100, 16) != nullptr);

    // Give everything back; the next round must get as much again.
    for (std::size_t i = 0; i < objs; i++)
      pantry_pool_free(pool, g_objs[i]);
    for (std::size_t i = 0; i < n; i++)
      pantry_free(g_blocks[i]);
    pantry_arena_reset(arena);
    pantry_pool_stats_t ps;
    pantry_pool_stats(pool, &ps);
    OOM_EXPECT(ps.live == 0);
  }

  // Memory comes back: raise the limit; large allocations work again.
  OOM_EXPECT(setrlimit(RLIMIT_AS, &old_limit) == 0);
  void *big = pantry_malloc(512 * MiB);
  OOM_EXPECT(big != nullptr);
  if (big != nullptr) {
    std::memset(big, 1, 1 * MiB);
    pantry_free(big);
  }
  std::size_t n = 0;
  for (; n < 4096; n++) {
    g_blocks[n] = pantry_malloc(64 * KiB);
    if (g_blocks[n] == nullptr)
      break;
  }
  OOM_EXPECT(n == 4096); // 256 MiB in 64 KiB blocks
  for (std::size_t i = 0; i < n; i++)
    pantry_free(g_blocks[i]);
  for (int i = 0; i < 1000; i++) {
    void *o = pantry_pool_alloc(pool);
    OOM_EXPECT(o != nullptr);
    pantry_pool_free(pool, o);
  }
  OOM_EXPECT(pantry_arena_alloc(arena, 4 * MiB, 64) != nullptr);
  pantry_arena_destroy(arena);
  pantry_pool_destroy(pool);
  // A thread can start and allocate again.
  bool thread_ok = false;
  std::thread([&thread_ok] {
    void *p = pantry_malloc(100000);
    thread_ok = p != nullptr;
    pantry_free(p);
  }).join();
  OOM_EXPECT(thread_ok);
}

} // namespace

TEST_CASE("oom: under RLIMIT_AS allocation fails with ENOMEM and pools and arenas stay usable "
          "and memory comes back",
          "[oom]") {
  ChildOutcome r = run_child(
      [] {
        oom_child();
        std::fwrite(g_report, 1, g_report_len, stdout);
        std::printf("failures: %d\n", g_failures);
        std::fflush(nullptr);
        _exit(g_failures == 0 ? 0 : 1);
      },
      240);
  std::printf("%s", r.output.c_str());
  INFO("child " << r.describe() << "; output:\n" << r.output);
  REQUIRE(r.exited);
  REQUIRE(r.exit_code == 0);
}
