// test_fork.cpp - fork from a process whose threads are busy allocating
// (issue 6): four threads run the malloc API, a pool, a shared arena,
// private arenas and deferred frees without pause while the main thread
// forks, again and again. Each child frees blocks the parent's threads
// published (remote frees into heaps whose threads do not exist in the
// child), allocates and checks blocks, uses the busy pool and a pool and an
// arena of its own (every drop counted), defers frees and waits for them,
// starts a thread that does the same, and must exit with status 0 within a
// time bound. (test_lifecycle.cpp has the small malloc-only case.)
//
// ThreadSanitizer forbids starting threads in the child of a multi-threaded
// process (pantry's deferred worker and liburcu's call_rcu thread included)
// unless TSAN_OPTIONS has die_after_fork=0 (scripts/test.sh sets it);
// without it the child does everything but the thread, the deferred frees
// and the pool destroy. PANTRY_TEST_SCALE multiplies the forks. Public API
// only.
#include <catch2/catch.hpp>

#include <pantry.h>

#include "child_process.hpp"
#include "test_util.hpp"

#include <atomic>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

using namespace pantry_test;

namespace {

constexpr std::size_t MiB = 1024 * 1024;

std::atomic<std::size_t> g_fork_drops{0};
void fork_pool_drop(void *, void *) { g_fork_drops.fetch_add(1); }
void fork_arena_drop(void *obj, void *) {
  std::memset(obj, 0, 8);
  g_fork_drops.fetch_add(1);
}

constexpr std::size_t kForkSlots = 512;
std::atomic<void *> g_fork_slots[kForkSlots]; // blocks published by busy threads

/* What the child does (and a thread it starts does too): malloc API, a pool,
 * an arena, deferred frees, blocks the parent's threads published. Returns
 * a bit mask of what went wrong. */
int child_work(pantry_pool_t *shared_pool, unsigned seed, bool threads_ok) {
  const bool defer = threads_ok; // pantry's worker and liburcu's call_rcu thread start
  int bad = 0;
  Rng rng(seed);
  std::vector<std::pair<void *, std::size_t>> blocks;
  for (int i = 0; i < 1500; i++) {
    std::size_t size = rng.range(1, i % 50 == 0 ? 300000 : 4000);
    void *p = pantry_malloc(size);
    if (p == nullptr) {
      bad |= 1;
      continue;
    }
    fill_pattern(p, size, pattern_seed(seed, static_cast<std::uint64_t>(i)));
    blocks.emplace_back(p, size);
  }
  for (std::size_t i = 0; i < blocks.size(); i++)
    if (check_pattern(blocks[i].first, blocks[i].second, pattern_seed(seed, i)) != blocks[i].second)
      bad |= 2;
  // Blocks of the parent's threads (which do not exist here): remote frees.
  for (int i = 0; i < 64; i++)
    pantry_free(g_fork_slots[rng.range(0, kForkSlots - 1)].exchange(nullptr));
  // The pool the parent's threads were using, and one of our own.
  std::vector<void *> objs;
  for (int i = 0; i < 300; i++) {
    void *o = pantry_pool_alloc(shared_pool);
    if (o == nullptr)
      bad |= 4;
    else
      objs.push_back(o);
  }
  for (void *o : objs)
    pantry_pool_free(shared_pool, o);
  pantry_pool_config_t cfg{};
  cfg.name = "child-pool";
  cfg.layout = {48, 16};
  cfg.drop = fork_pool_drop;
  pantry_pool_t *own = pantry_pool_create(&cfg);
  std::size_t drops_before = g_fork_drops.load();
  std::vector<void *> own_objs;
  for (int i = 0; i < 200; i++) {
    own_objs.push_back(pantry_pool_alloc(own));
    if (own_objs.back() == nullptr)
      bad |= 4;
  }
  if (threads_ok) {
    pantry_pool_destroy(own); // drops the 200 (its pages go back through call_rcu)
  } else {
    for (void *o : own_objs)
      pantry_pool_free(own, o);
  }
  // An arena with drops.
  pantry_arena_t *arena = pantry_arena_create(nullptr);
  for (int i = 0; i < 300; i++) {
    const pantry_layout_t layout = {rng.range(8, 2000), 8};
    if (pantry_arena_new(arena, layout, fork_arena_drop, nullptr) == nullptr)
      bad |= 8;
  }
  pantry_arena_destroy(arena);
  if (g_fork_drops.load() - drops_before != 500)
    bad |= 16;
  // Deferred frees, waited for.
  for (std::size_t i = 0; i < blocks.size(); i++) {
    if (defer && i % 2 == 0)
      pantry_free_deferred(blocks[i].first);
    else
      pantry_free(blocks[i].first);
  }
  if (defer)
    pantry_deferred_barrier();
  return bad;
}

} // namespace

// Issue 5: this test caught two hangs of a child. A fork that froze a
// busy thread between the two steps of its wait-free enqueue on pantry's
// handover queue left a hole that the child's worker waited on forever;
// and a fork while pantry's worker was running but not yet published as
// started left it unparked inside urcu-memb, so the child's grace periods
// waited forever for a reader that no longer existed. (The same hole in
// urcu-bp's call_rcu queue, from a segment release, was fixed with them.)
// The busy threads' first deferred frees race with the first forks on
// purpose: no warm-up.
TEST_CASE("fork: while threads allocate and use pools and arenas and defer frees the child "
          "allocates and frees and starts a thread and exits cleanly",
          "[stress][fork]") {
  const bool child_threads = children_may_start_threads();
  const std::size_t scale = test_scale();
  pantry_pool_config_t cfg{};
  cfg.name = "busy-pool";
  cfg.layout = {80, 16};
  cfg.drop = fork_pool_drop;
  pantry_pool_t *pool = pantry_pool_create(&cfg);
  REQUIRE(pool != nullptr);
  pantry_arena_config_t acfg{};
  acfg.name = "busy-arena";
  pantry_arena_t *shared_arena = pantry_arena_create(&acfg);
  REQUIRE(shared_arena != nullptr);

  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> busy_ops{0};
  StartedThreads busy_started;
  std::vector<std::thread> busy;
  for (unsigned t = 0; t < 4; t++)
    busy.emplace_back([&, t] {
      busy_started.started();
      Rng rng(t + 100);
      std::vector<void *> live(128, nullptr);
      std::vector<void *> objs(64, nullptr);
      std::size_t arena_bytes = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        std::size_t i = rng.range(0, live.size() - 1);
        pantry_free(live[i]);
        live[i] = pantry_malloc(rng.range(1, rng.range(0, 99) == 0 ? 200000 : 3000));
        std::size_t j = rng.range(0, objs.size() - 1);
        pantry_pool_free(pool, objs[j]);
        objs[j] = pantry_pool_alloc(pool);
        if (arena_bytes < 4 * MiB) {
          const pantry_layout_t layout = {rng.range(8, 500), 8};
          if (pantry_arena_new(shared_arena, layout, fork_arena_drop, nullptr) != nullptr)
            arena_bytes += layout.size;
        }
        if (rng.range(0, 7) == 0) { // a private arena per "request"
          pantry_arena_t *a = pantry_arena_create(nullptr);
          for (int k = 0; k < 20; k++)
            if (pantry_arena_alloc(a, rng.range(1, 3000), 16) == nullptr)
              std::abort();
          pantry_arena_destroy(a);
        }
        if (rng.range(0, 3) == 0) // deferred frees are pending at every fork
          pantry_free_deferred(pantry_malloc(rng.range(1, 2000)));
        pantry_free(
            g_fork_slots[rng.range(0, kForkSlots - 1)].exchange(pantry_malloc(rng.range(1, 5000))));
        busy_ops.fetch_add(1, std::memory_order_relaxed);
      }
      for (void *p : live)
        pantry_free(p);
      for (void *o : objs)
        pantry_pool_free(pool, o);
    });

  // A fork and its child take about 0.2 s (the child's two barriers wait
  // for grace periods; liburcu's fork handshakes poll): 16 keep the test
  // to a few seconds. PANTRY_TEST_SCALE=N for N times as many.
  const int forks = static_cast<int>(16 * scale);
  int failures = 0;
  std::string first_failure;
  busy_started.wait_for(busy.size()); // no fork inside a thread's start (StartedThreads)
  const double t0 = monotonic_seconds();
  for (int f = 0; f < forks; f++) {
    while (busy_ops.load() < static_cast<std::uint64_t>(f + 1) * 50) // forks land mid-work
      std::this_thread::yield();
    ChildOutcome r = run_child(
        [&] {
          int bad = child_work(pool, 1000 + f, child_threads);
          if (child_threads) {
            int tbad = 0;
            std::thread th([&] { tbad = child_work(pool, 2000 + f, true); });
            th.join();
            bad |= tbad << 8;
          }
          std::fflush(nullptr);
          _exit(bad);
        },
        60);
    if (!r.exited || r.exit_code != 0) {
      if (failures++ == 0)
        first_failure = "fork " + std::to_string(f) + ": child " + r.describe() +
                        " (exit bits: 1 NULL, 2 contents, 4 pool, 8 arena, 16 drops; <<8 for its "
                        "thread); output: " +
                        r.output;
    }
  }
  const double fork_s = monotonic_seconds() - t0;
  stop = true;
  for (auto &th : busy)
    th.join();
  for (auto &slot : g_fork_slots)
    pantry_free(slot.exchange(nullptr));
  pantry_deferred_barrier();
  pantry_arena_destroy(shared_arena);
  pantry_pool_destroy(pool);
  std::printf("fork: %d forks in %.2f s while 4 threads ran %" PRIu64 " ops\n", forks, fork_s,
              busy_ops.load());
  INFO(first_failure);
  REQUIRE(failures == 0);
}
