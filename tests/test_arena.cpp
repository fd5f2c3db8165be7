// test_arena.cpp - scoped arenas through the public API: many threads
// allocating and owning in one arena (every drop exactly once, newest first
// per thread), nested arenas, reset and reuse, the limit, alignment, threads
// that exit before reset or destroy, a thread pool serving requests with an
// arena each, many arenas created and destroyed, drops that allocate during
// reset, the thread cache of a destroyed arena, strings, statistics, and the
// misuse that is diagnosed (death tests, in a forked child).
//
// Catch2 assertions are not thread-safe: workers count problems in atomics
// (and keep the first message), the main thread REQUIREs after join.
// PANTRY_TEST_THREADS (default 32 here) and PANTRY_TEST_SCALE size the work.
#include <catch2/catch.hpp>

#include <pantry.h>

#include "test_util.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

using namespace pantry_test;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * 1024;

unsigned arena_threads() {
  std::size_t n = env_size("PANTRY_TEST_THREADS", 32);
  return static_cast<unsigned>(std::min<std::size_t>(std::max<std::size_t>(n, 2), 1024));
}

using pantry_test::Problems;

/* All workers start at once: each waits until `ready` reaches n. */
struct StartLine {
  std::atomic<unsigned> ready{0};
  void wait(unsigned n) {
    ready.fetch_add(1);
    while (ready.load() < n)
      std::this_thread::yield();
  }
};

/* A record of the drops that ran, in order (drops run on the thread that
 * resets or destroys, so a plain vector is enough). */
struct DropLog {
  std::vector<std::pair<unsigned, std::size_t>> ran; /* (thread, sequence) */
};

struct Owned {
  DropLog *log;
  unsigned thread;
  std::size_t seq;
};

void drop_logged(void *obj, void *ctx) {
  Owned *o = static_cast<Owned *>(obj);
  DropLog *log = static_cast<DropLog *>(ctx);
  log->ran.emplace_back(o->thread, o->seq);
}

void drop_count(void *, void *ctx) { static_cast<std::atomic<std::size_t> *>(ctx)->fetch_add(1); }

void drop_free(void *obj, void *ctx) {
  std::free(obj);
  static_cast<std::atomic<std::size_t> *>(ctx)->fetch_add(1);
}

/* A drop that appends a label to a string. */
void drop_label(void *obj, void *ctx) {
  static_cast<std::string *>(ctx)->append(static_cast<const char *>(obj));
}

/* Uses a result that the header marks warn_unused_result. */
void ignore_result(void *) {}

bool aligned(const void *p, std::size_t align) {
  return (reinterpret_cast<std::uintptr_t>(p) & (align - 1)) == 0;
}

pantry_arena_stats_t stats_of(const pantry_arena_t *a) {
  pantry_arena_stats_t s;
  pantry_arena_stats(a, &s);
  return s;
}

struct Block {
  void *p;
  std::size_t size;
  std::uint64_t seed;
};

} // namespace

TEST_CASE("arena: many threads allocate and own in one arena - destroy runs each drop once - "
          "newest first per thread",
          "[arena]") {
  const unsigned threads = arena_threads();
  const std::size_t per_thread = 1500 * test_scale();
  pantry_arena_config_t cfg = {};
  cfg.name = "many";
  pantry_arena_t *arena = pantry_arena_create(&cfg);
  REQUIRE(arena != nullptr);
  REQUIRE(std::string(pantry_arena_name(arena)) == "many");

  DropLog log;
  Problems problems;
  StartLine start;
  std::vector<std::vector<Block>> blocks(threads);
  std::vector<std::size_t> owned(threads, 0);
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; t++) {
    workers.emplace_back([&, t] {
      Rng rng(mix64(t + 1));
      start.wait(threads);
      for (std::size_t i = 0; i < per_thread; i++) {
        std::size_t align = std::size_t(1) << rng.range(0, 7);
        if (i % 3 == 0) {
          /* an owned object: alloc + own, or new */
          Owned *o;
          if (i % 2 == 0) {
            o = static_cast<Owned *>(pantry_arena_alloc(arena, sizeof(Owned), alignof(Owned)));
            if (o == nullptr || pantry_arena_own(arena, o, drop_logged, &log) != 0) {
              problems.add("alloc/own failed");
              continue;
            }
          } else {
            o = static_cast<Owned *>(
                pantry_arena_new(arena, PANTRY_LAYOUT_OF(Owned), drop_logged, &log));
            if (o == nullptr) {
              problems.add("new failed");
              continue;
            }
          }
          *o = Owned{&log, t, owned[t]++};
          continue;
        }
        std::size_t size = rng.range(0, i % 50 == 0 ? 20000 : 300);
        void *p = pantry_arena_alloc(arena, size, align);
        if (p == nullptr) {
          problems.add("alloc failed");
          continue;
        }
        if (!aligned(p, align))
          problems.add("misaligned block");
        std::uint64_t seed = pattern_seed(t, i);
        fill_pattern(p, size, seed);
        blocks[t].push_back(Block{p, size, seed});
      }
    });
  }
  for (auto &w : workers)
    w.join();
  INFO(problems.text());
  REQUIRE(problems.count.load() == 0);

  /* No block overlapped another: every pattern is intact. */
  std::size_t bytes = 0, total_owned = 0;
  for (unsigned t = 0; t < threads; t++) {
    total_owned += owned[t];
    for (const Block &b : blocks[t]) {
      REQUIRE(check_pattern(b.p, b.size, b.seed) == b.size);
      bytes += b.size;
    }
  }
  pantry_arena_stats_t st = stats_of(arena);
  CHECK(st.owned == total_owned);
  CHECK(st.serial_arenas == threads + 1); /* the workers' and the creator's */
  CHECK(st.bytes_used >= bytes);
  CHECK(st.bytes_held >= st.bytes_used);

  pantry_arena_destroy(arena);

  /* Every drop once; within a thread, newest first. */
  REQUIRE(log.ran.size() == total_owned);
  std::vector<std::size_t> next(threads);
  for (unsigned t = 0; t < threads; t++)
    next[t] = owned[t];
  for (const auto &r : log.ran) {
    REQUIRE(r.first < threads);
    REQUIRE(next[r.first] > 0);
    REQUIRE(r.second == next[r.first] - 1); /* the newest not yet dropped */
    next[r.first]--;
  }
}

TEST_CASE("arena: nested arenas three deep are reset and destroyed children first", "[arena]") {
  std::string order;
  pantry_arena_config_t cfg = {};
  cfg.name = "root";
  pantry_arena_t *root = pantry_arena_create(&cfg);
  cfg.parent = root;
  cfg.name = "child";
  pantry_arena_t *child = pantry_arena_create(&cfg);
  pantry_arena_t *sibling = pantry_arena_create(&cfg);
  cfg.parent = child;
  cfg.name = "grandchild";
  pantry_arena_t *grandchild = pantry_arena_create(&cfg);
  REQUIRE((root && child && sibling && grandchild));
  CHECK(stats_of(root).children == 2);
  CHECK(stats_of(child).children == 1);

  auto fill = [&] {
    REQUIRE(pantry_arena_own(root, const_cast<char *>("R"), drop_label, &order) == 0);
    REQUIRE(pantry_arena_own(child, const_cast<char *>("C"), drop_label, &order) == 0);
    REQUIRE(pantry_arena_own(sibling, const_cast<char *>("S"), drop_label, &order) == 0);
    REQUIRE(pantry_arena_own(grandchild, const_cast<char *>("G"), drop_label, &order) == 0);
    REQUIRE(pantry_arena_strdup(grandchild, "deep") != nullptr);
  };

  SECTION("reset resets the children first, and they stay usable") {
    for (int round = 0; round < 3; round++) {
      order.clear();
      fill();
      pantry_arena_reset(root);
      REQUIRE(order.size() == 4);
      CHECK(order.back() == 'R');
      CHECK(order.find('G') < order.find('C')); /* grandchild before child */
      CHECK(stats_of(grandchild).owned == 0);
      CHECK(stats_of(child).children == 1);
    }
    pantry_arena_destroy(root);
  }

  SECTION("destroy destroys the children first") {
    order.clear();
    fill();
    pantry_arena_destroy(root);
    REQUIRE(order.size() == 4);
    CHECK(order.back() == 'R');
    CHECK(order.find('G') < order.find('C'));
  }

  SECTION("a child destroyed on its own is not touched by its parent") {
    order.clear();
    fill();
    pantry_arena_destroy(child); /* and with it the grandchild */
    CHECK(order == "GC");
    CHECK(stats_of(root).children == 1);
    pantry_arena_reset(root);
    CHECK(order.size() == 4);
    pantry_arena_destroy(root);
    CHECK(order.size() == 4);
  }
}

TEST_CASE("arena: children of one parent are created and destroyed by many threads at once",
          "[arena]") {
  const unsigned threads = std::min(arena_threads(), 16u);
  const std::size_t per_thread = 2000 * test_scale();
  pantry_arena_config_t cfg = {};
  cfg.name = "server";
  pantry_arena_t *server = pantry_arena_create(&cfg);
  REQUIRE(server != nullptr);
  std::atomic<std::size_t> drops{0};
  Problems problems;
  StartLine start;
  std::vector<std::vector<pantry_arena_t *>> kept(threads);
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; t++) {
    workers.emplace_back([&, t] {
      start.wait(threads);
      pantry_arena_config_t c = {};
      c.parent = server;
      for (std::size_t i = 0; i < per_thread; i++) {
        pantry_arena_t *a = pantry_arena_create(&c);
        if (a == nullptr || pantry_arena_own(a, nullptr, drop_count, &drops) != 0 ||
            pantry_arena_alloc(a, 64, 8) == nullptr) {
          problems.add("child create/own/alloc failed");
          continue;
        }
        if (pantry_arena_own(server, nullptr, drop_count, &drops) != 0)
          problems.add("own in the parent failed");
        if (i % 100 == 0)
          kept[t].push_back(a); /* left for the parent to destroy */
        else
          pantry_arena_destroy(a);
      }
    });
  }
  for (auto &w : workers)
    w.join();
  INFO(problems.text());
  REQUIRE(problems.count.load() == 0);
  std::size_t live = 0;
  for (auto &v : kept)
    live += v.size();
  CHECK(stats_of(server).children == live);
  std::size_t destroyed_alone = threads * per_thread - live;
  REQUIRE(drops.load() == destroyed_alone);
  pantry_arena_destroy(server);
  REQUIRE(drops.load() == 2 * threads * per_thread);
}

TEST_CASE("arena: reset then reuse many times runs no stale drop", "[arena]") {
  pantry_arena_t *arena = pantry_arena_create(nullptr);
  REQUIRE(arena != nullptr);
  const pantry_arena_stats_t empty = stats_of(arena);
  CHECK(empty.bytes_used == 0);
  CHECK(empty.owned == 0);

  struct Gen {
    std::size_t gen;
    std::size_t *seen_wrong;
    std::size_t *ran;
  };
  std::size_t seen_wrong = 0, ran = 0, current = 0;
  static std::size_t *current_ptr;
  current_ptr = &current;
  auto drop_gen = [](void *obj, void *) {
    Gen *g = static_cast<Gen *>(obj);
    if (g->gen != *current_ptr)
      (*g->seen_wrong)++;
    (*g->ran)++;
  };
  const std::size_t cycles = 2000 * test_scale();
  for (std::size_t c = 0; c < cycles; c++) {
    current = c;
    std::size_t n = 1 + c % 97, bytes = 0;
    for (std::size_t i = 0; i < n; i++) {
      Gen *g =
          static_cast<Gen *>(pantry_arena_new(arena, PANTRY_LAYOUT_OF(Gen), drop_gen, nullptr));
      REQUIRE(g != nullptr);
      *g = Gen{c, &seen_wrong, &ran};
      std::size_t size = (c * 131 + i * 17) % 2000;
      REQUIRE(pantry_arena_alloc(arena, size, 16) != nullptr);
      bytes += size;
    }
    if (c % 500 == 0)
      REQUIRE(pantry_arena_alloc(arena, 300 * KiB, 64) != nullptr); /* a chunk of its own */
    CHECK(stats_of(arena).owned == n);
    CHECK(stats_of(arena).bytes_used >= bytes + n * (sizeof(Gen) + 24));
    std::size_t before = ran;
    pantry_arena_reset(arena);
    REQUIRE(ran - before == n);
    pantry_arena_stats_t st = stats_of(arena);
    REQUIRE(st.owned == 0);
    REQUIRE(st.bytes_used == 0);
    REQUIRE(st.bytes_held <= empty.bytes_held + 256 * KiB);
  }
  CHECK(seen_wrong == 0);
  pantry_arena_destroy(arena);
  CHECK(ran == [&] {
    std::size_t s = 0;
    for (std::size_t c = 0; c < cycles; c++)
      s += 1 + c % 97;
    return s;
  }());
}

TEST_CASE("arena: many threads reuse one arena across resets", "[arena]") {
  const unsigned threads = std::min(arena_threads(), 8u);
  pantry_arena_t *arena = pantry_arena_create(nullptr);
  REQUIRE(arena != nullptr);
  std::atomic<std::size_t> drops{0};
  Problems problems;
  const int rounds = 30;
  for (int round = 0; round < rounds; round++) {
    std::vector<std::thread> workers;
    for (unsigned t = 0; t < threads; t++) {
      workers.emplace_back([&, t] {
        for (int i = 0; i < 500; i++) {
          void *p = pantry_arena_alloc(arena, 8 + (i * 37 + t) % 700, 8);
          if (p == nullptr || pantry_arena_own(arena, p, drop_count, &drops) != 0)
            problems.add("alloc/own failed");
          else
            std::memset(p, int(t), 8);
        }
      });
    }
    for (auto &w : workers)
      w.join();
    REQUIRE(problems.count.load() == 0);
    REQUIRE(stats_of(arena).owned == threads * 500u);
    pantry_arena_reset(arena);
    REQUIRE(drops.load() == (round + 1) * threads * 500u);
    pantry_arena_stats_t st = stats_of(arena);
    REQUIRE(st.owned == 0);
    REQUIRE(st.serial_arenas == 0);
    REQUIRE(st.bytes_held <= 1 * KiB + 256 * KiB);
  }
  pantry_arena_destroy(arena);
}

TEST_CASE("arena: the limit is enforced and the arena stays usable", "[arena]") {
  pantry_arena_config_t cfg = {};
  cfg.limit = 64 * KiB;
  cfg.name = "limited";
  pantry_arena_t *arena = pantry_arena_create(&cfg);
  REQUIRE(arena != nullptr);
  for (int cycle = 0; cycle < 3; cycle++) {
    std::size_t got = 0;
    void *p;
    errno = 0;
    while ((p = pantry_arena_alloc(arena, 1000, 8)) != nullptr) {
      std::memset(p, 0xab, 1000);
      got += 1000;
      REQUIRE(got <= cfg.limit);
    }
    CHECK(errno == ENOMEM);
    CHECK(got >= cfg.limit / 2); /* most of the limit was usable */
    pantry_arena_stats_t st = stats_of(arena);
    CHECK(st.bytes_held <= cfg.limit);
    /* size overflow and a request above the limit fail without harm */
    errno = 0;
    CHECK(pantry_arena_alloc(arena, SIZE_MAX, 8) == nullptr);
    CHECK(errno == ENOMEM);
    errno = 0;
    CHECK(pantry_arena_alloc(arena, SIZE_MAX / 2 + 1, 8) == nullptr);
    CHECK(errno == ENOMEM);
    errno = 0;
    CHECK(pantry_arena_alloc(arena, 2 * cfg.limit, 8) == nullptr);
    CHECK(errno == ENOMEM);
    pantry_arena_reset(arena);
    REQUIRE(pantry_arena_alloc(arena, 1000, 8) != nullptr);
    pantry_arena_reset(arena);
  }
  pantry_arena_destroy(arena);

  /* an unlimited arena takes a large request, then small ones */
  pantry_arena_t *big = pantry_arena_create(nullptr);
  void *p = pantry_arena_alloc(big, 3 * MiB, 4096);
  REQUIRE(p != nullptr);
  std::memset(p, 1, 3 * MiB);
  CHECK(aligned(p, 4096));
  REQUIRE(pantry_arena_alloc(big, 16, 16) != nullptr);
  pantry_arena_destroy(big);
}

TEST_CASE("arena: alignment - size 0 - bad alignments", "[arena]") {
  pantry_arena_t *arena = pantry_arena_create(nullptr);
  REQUIRE(arena != nullptr);
  std::atomic<std::size_t> drops{0};
  std::vector<Block> blocks;
  std::uint64_t n = 0;
  for (std::size_t align = 1; align <= 4096; align *= 2) {
    for (std::size_t size :
         {std::size_t(0), std::size_t(1), std::size_t(7), std::size_t(24), std::size_t(100),
          std::size_t(4095), std::size_t(5000), std::size_t(70000)}) {
      for (int rep = 0; rep < 3; rep++) {
        void *p = pantry_arena_alloc(arena, size, align);
        REQUIRE(p != nullptr);
        REQUIRE(aligned(p, align));
        std::uint64_t seed = pattern_seed(0, n++);
        fill_pattern(p, size, seed);
        blocks.push_back(Block{p, size, seed});
      }
    }
    pantry_layout_t layout = {40, align};
    void *q = pantry_arena_new(arena, layout, drop_count, &drops);
    REQUIRE(q != nullptr);
    REQUIRE(aligned(q, align));
  }
  /* no overlap: every pattern intact; size-0 pointers are distinct */
  std::vector<std::uintptr_t> zero;
  for (const Block &b : blocks) {
    REQUIRE(check_pattern(b.p, b.size, b.seed) == b.size);
    if (b.size == 0)
      zero.push_back(reinterpret_cast<std::uintptr_t>(b.p));
  }
  std::sort(zero.begin(), zero.end());
  CHECK(std::adjacent_find(zero.begin(), zero.end()) == zero.end());

  for (std::size_t bad :
       {std::size_t(0), std::size_t(3), std::size_t(24), std::size_t(8192), std::size_t(1) << 40}) {
    errno = 0;
    CHECK(pantry_arena_alloc(arena, 16, bad) == nullptr);
    CHECK(errno == EINVAL);
    pantry_layout_t layout = {16, bad};
    errno = 0;
    CHECK(pantry_arena_new(arena, layout, drop_count, &drops) == nullptr);
    CHECK(errno == EINVAL);
  }
  errno = 0;
  CHECK(pantry_arena_own(arena, nullptr, nullptr, nullptr) == -1);
  CHECK(errno == EINVAL);
  pantry_arena_destroy(arena);
  CHECK(drops.load() == 13); /* one per alignment 1..4096 */
}

TEST_CASE("arena: threads that exit before reset or destroy leave nothing that breaks them",
          "[arena]") {
  const unsigned threads = arena_threads();
  pantry_arena_t *arena = pantry_arena_create(nullptr);
  REQUIRE(arena != nullptr);
  std::atomic<std::size_t> drops{0}, frees{0};
  Problems problems;
  for (int round = 0; round < 3; round++) {
    /* waves of short-lived threads, each joined (exited) before the reset */
    for (unsigned wave = 0; wave < 2; wave++) {
      std::vector<std::thread> workers;
      for (unsigned t = 0; t < threads / 2; t++) {
        workers.emplace_back([&, t] {
          for (int i = 0; i < 200; i++) {
            void *owned = std::malloc(32);
            char *s = pantry_arena_asprintf(arena, "thread %u item %d", t, i);
            if (owned == nullptr || s == nullptr ||
                pantry_arena_own(arena, owned, drop_free, &frees) != 0 ||
                pantry_arena_own(arena, s, drop_count, &drops) != 0)
              problems.add("alloc/own failed");
            if (i % 50 == 0 && pantry_arena_alloc(arena, 20000, 64) == nullptr)
              problems.add("large alloc failed");
          }
        });
      }
      for (auto &w : workers)
        w.join();
    }
    REQUIRE(problems.count.load() == 0);
    const std::size_t expect = std::size_t(threads / 2) * 2 * 200 * (round + 1);
    if (round < 2) {
      pantry_arena_reset(arena);
      REQUIRE(drops.load() == expect);
      REQUIRE(frees.load() == expect);
      /* the main thread uses the arena after the reset */
      REQUIRE(pantry_arena_strdup(arena, "after") != nullptr);
    } else {
      pantry_arena_destroy(arena);
      REQUIRE(drops.load() == expect);
      REQUIRE(frees.load() == expect);
    }
  }
}

TEST_CASE("arena: a thread pool serves requests - each with its own arena", "[arena]") {
  const unsigned workers_n = std::min(arena_threads(), 16u);
  const std::size_t requests = 20000 * test_scale();
  pantry_arena_config_t scfg = {};
  scfg.name = "server";
  pantry_arena_t *server = pantry_arena_create(&scfg);
  REQUIRE(server != nullptr);

  std::mutex m;
  std::condition_variable cv;
  std::deque<std::size_t> queue;     /* request numbers */
  std::deque<pantry_arena_t *> done; /* arenas handed over to be destroyed elsewhere */
  bool closing = false;
  std::atomic<std::size_t> owned{0}, dropped{0}, served{0};
  Problems problems;

  auto serve = [&](std::size_t r) {
    pantry_arena_config_t cfg = {};
    cfg.name = "request";
    cfg.parent = (r % 4 == 0) ? server : nullptr;
    cfg.limit = (r % 7 == 0) ? 256 * KiB : 0;
    pantry_arena_t *a = pantry_arena_create(&cfg);
    if (a == nullptr) {
      problems.add("create failed");
      return;
    }
    Rng rng(mix64(r));
    std::vector<Block> blocks;
    for (int i = 0; i < 60; i++) {
      std::size_t size = rng.range(1, 512);
      void *p = pantry_arena_alloc(a, size, 8);
      if (p == nullptr) {
        problems.add("alloc failed");
        break;
      }
      fill_pattern(p, size, pattern_seed(r, i));
      blocks.push_back(Block{p, size, pattern_seed(r, i)});
      if (i % 6 == 0) {
        void *buf = std::malloc(64);
        if (pantry_arena_own(a, buf, drop_free, &dropped) != 0)
          problems.add("own failed");
        else
          owned.fetch_add(1);
      }
    }
    char *name = pantry_arena_asprintf(a, "request %zu", r);
    if (name == nullptr || std::strcmp(name, ("request " + std::to_string(r)).c_str()) != 0)
      problems.add("asprintf");
    for (const Block &b : blocks)
      if (check_pattern(b.p, b.size, b.seed) != b.size)
        problems.add("block overwritten in request " + std::to_string(r));
    served.fetch_add(1);
    if (r % 3 == 0) { /* another worker destroys it */
      std::lock_guard<std::mutex> lock(m);
      done.push_back(a);
      cv.notify_one();
    } else {
      pantry_arena_destroy(a);
    }
  };

  std::vector<std::thread> pool;
  for (unsigned w = 0; w < workers_n; w++) {
    pool.emplace_back([&] {
      for (;;) {
        std::unique_lock<std::mutex> lock(m);
        cv.wait(lock, [&] { return closing || !queue.empty() || !done.empty(); });
        if (!done.empty()) {
          pantry_arena_t *a = done.front();
          done.pop_front();
          lock.unlock();
          pantry_arena_destroy(a);
          continue;
        }
        if (queue.empty()) {
          if (closing)
            return;
          continue;
        }
        std::size_t r = queue.front();
        queue.pop_front();
        lock.unlock();
        serve(r);
      }
    });
  }
  for (std::size_t r = 0; r < requests; r++) {
    std::lock_guard<std::mutex> lock(m);
    queue.push_back(r);
    cv.notify_one();
  }
  {
    std::unique_lock<std::mutex> lock(m);
    closing = true;
    cv.notify_all();
  }
  for (auto &t : pool)
    t.join();
  for (pantry_arena_t *a : done) /* handed over after the workers left */
    pantry_arena_destroy(a);
  INFO(problems.text());
  REQUIRE(problems.count.load() == 0);
  REQUIRE(served.load() == requests);
  REQUIRE(dropped.load() == owned.load());
  CHECK(stats_of(server).children == 0); /* every request arena destroyed itself */
  pantry_arena_destroy(server);
}

TEST_CASE("arena: creating and destroying many arenas leaks nothing", "[arena]") {
  const std::size_t n = 300000 * test_scale();
  std::atomic<std::size_t> drops{0};
  auto cycle = [&](std::size_t count) {
    for (std::size_t i = 0; i < count; i++) {
      pantry_arena_t *a = pantry_arena_create(nullptr);
      REQUIRE(a != nullptr);
      for (int k = 0; k < 8; k++)
        REQUIRE(pantry_arena_alloc(a, 16 + (i + k) % 3000, 16) != nullptr);
      REQUIRE(pantry_arena_own(a, nullptr, drop_count, &drops) == 0);
      if (i % 64 == 0) {
        pantry_arena_config_t c = {};
        c.parent = a;
        REQUIRE(pantry_arena_alloc(pantry_arena_create(&c), 100, 8) != nullptr);
      }
      pantry_arena_destroy(a);
    }
  };
  cycle(n / 10); /* warm up: the heap reaches its working set */
  std::size_t rss_before = rss_bytes();
  cycle(n);
  std::size_t rss_after = rss_bytes();
  INFO("rss before " << rss_before / KiB << " KiB, after " << rss_after / KiB << " KiB");
  CHECK(rss_after <= rss_before + 8 * MiB);
  CHECK(drops.load() == n + n / 10);
}

namespace {

struct Chain {
  pantry_arena_t *arena;
  int depth;
  std::atomic<std::size_t> *ran;
};

/* A drop that allocates in, and registers a new drop into, its own arena
 * while the arena is being reset or destroyed. */
void drop_chain(void *obj, void *) {
  Chain *c = static_cast<Chain *>(obj);
  c->ran->fetch_add(1);
  if (c->depth == 0)
    return;
  Chain *next = static_cast<Chain *>(
      pantry_arena_new(c->arena, PANTRY_LAYOUT_OF(Chain), drop_chain, nullptr));
  if (next == nullptr)
    std::abort();
  *next = Chain{c->arena, c->depth - 1, c->ran};
  if (pantry_arena_alloc(c->arena, 50000, 16) == nullptr) /* a new chunk, mid-reset */
    std::abort();
}

} // namespace

TEST_CASE("arena: a drop that allocates and registers during reset or destroy is run", "[arena]") {
  std::atomic<std::size_t> ran{0};
  pantry_arena_t *arena = pantry_arena_create(nullptr);
  REQUIRE(arena != nullptr);
  for (int round = 0; round < 5; round++) {
    ran = 0;
    for (int i = 0; i < 10; i++) {
      Chain *c = static_cast<Chain *>(
          pantry_arena_new(arena, PANTRY_LAYOUT_OF(Chain), drop_chain, nullptr));
      REQUIRE(c != nullptr);
      *c = Chain{arena, 3, &ran};
    }
    pantry_arena_reset(arena);
    REQUIRE(ran.load() == 40); /* 10 chains of 4 */
    pantry_arena_stats_t st = stats_of(arena);
    REQUIRE(st.owned == 0);
    REQUIRE(st.bytes_used == 0);
  }
  ran = 0;
  /* another thread registered the chains; the drops run on this thread */
  std::thread([&] {
    for (int i = 0; i < 10; i++) {
      Chain *c = static_cast<Chain *>(
          pantry_arena_new(arena, PANTRY_LAYOUT_OF(Chain), drop_chain, nullptr));
      *c = Chain{arena, 2, &ran};
    }
  }).join();
  pantry_arena_destroy(arena);
  REQUIRE(ran.load() == 30);
}

TEST_CASE("arena: a destroyed arena's thread cache is never used again", "[arena]") {
  for (int i = 0; i < 1000; i++) {
    pantry_arena_t *a = pantry_arena_create(nullptr);
    void *pa = pantry_arena_alloc(a, 100, 8);
    REQUIRE(pa != nullptr);
    pantry_arena_destroy(a);
    pantry_arena_t *b = pantry_arena_create(nullptr); /* often at a's address */
    void *pb = pantry_arena_alloc(b, 100, 8);
    REQUIRE(pb != nullptr);
    pantry_arena_stats_t st = stats_of(b);
    REQUIRE(st.serial_arenas == 1);
    REQUIRE(st.bytes_used == 100);
    pantry_arena_destroy(b);
  }
}

TEST_CASE("arena: an arena made on one thread is used by another", "[arena]") {
  pantry_arena_t *a = pantry_arena_create(nullptr);
  std::atomic<std::size_t> drops{0};
  std::thread([&] {
    for (int i = 0; i < 5; i++) {
      ignore_result(pantry_arena_alloc(a, 64, 8));
      REQUIRE(pantry_arena_own(a, nullptr, drop_count, &drops) == 0);
    }
  }).join();
  pantry_arena_stats_t st = stats_of(a);
  CHECK(st.serial_arenas == 2); /* the creator's (unused) and the user thread's */
  CHECK(st.bytes_used >= 5 * 64 + 5 * 24);
  CHECK(st.owned == 5);
  /* after a reset the first thread to allocate claims the first serial arena */
  pantry_arena_reset(a);
  CHECK(drops.load() == 5);
  std::thread([&] { ignore_result(pantry_arena_alloc(a, 64, 8)); }).join();
  st = stats_of(a);
  CHECK(st.serial_arenas == 1);
  CHECK(st.bytes_used == 64); /* in the initial chunk; the user thread's chunk is kept spare */
  pantry_arena_destroy(a);
}

TEST_CASE("arena: strings and copies", "[arena]") {
  pantry_arena_t *a = pantry_arena_create(nullptr);
  REQUIRE(a != nullptr);
  char *s = pantry_arena_strdup(a, "hello, arena");
  REQUIRE(s != nullptr);
  CHECK(std::string(s) == "hello, arena");
  char *t = pantry_arena_strndup(a, "abcdef", 3);
  REQUIRE(t != nullptr);
  CHECK(std::string(t) == "abc");
  CHECK(std::string(pantry_arena_strndup(a, "ab", 10)) == "ab");
  CHECK(std::string(pantry_arena_strdup(a, "")).empty());
  int data[5] = {1, 2, 3, 4, 5};
  int *d = static_cast<int *>(pantry_arena_memdup(a, data, sizeof data));
  REQUIRE(d != nullptr);
  CHECK(aligned(d, 16));
  CHECK(std::memcmp(d, data, sizeof data) == 0);
  CHECK(pantry_arena_memdup(a, nullptr, 0) != nullptr);
  std::string long_text(1000, 'x');
  char *f = pantry_arena_asprintf(a, "%s-%d-%s", "a", 42, long_text.c_str());
  REQUIRE(f != nullptr);
  CHECK(std::string(f) == "a-42-" + long_text);
  pantry_arena_destroy(a);
}

TEST_CASE("arena: statistics and names", "[arena]") {
  pantry_arena_config_t cfg = {};
  cfg.name = "a name longer than thirty-one bytes is cut";
  cfg.chunk_size = 4096;
  pantry_arena_t *a = pantry_arena_create(&cfg);
  REQUIRE(a != nullptr);
  CHECK(std::string(pantry_arena_name(a)) == std::string(cfg.name).substr(0, 31));
  pantry_arena_stats_t st = stats_of(a);
  CHECK(st.chunks == 1);
  CHECK(st.bytes_held == 4096);
  CHECK(st.bytes_used == 0);
  CHECK(st.serial_arenas == 1); /* the creating thread's */
  for (int i = 0; i < 100; i++)
    REQUIRE(pantry_arena_alloc(a, 100, 4) != nullptr);
  std::atomic<std::size_t> drops{0};
  for (int i = 0; i < 7; i++)
    REQUIRE(pantry_arena_own(a, nullptr, drop_count, &drops) == 0);
  st = stats_of(a);
  CHECK(st.owned == 7);
  CHECK(st.bytes_used == 100 * 100 + 7 * 24);
  CHECK(st.chunks >= 3);
  CHECK(st.bytes_held == st.chunks * 4096);
  CHECK(st.serial_arenas == 1);
  pantry_arena_destroy(a);
  CHECK(drops.load() == 7);
  errno = 0;
  cfg.chunk_size = std::size_t(2) << 30;
  CHECK(pantry_arena_create(&cfg) == nullptr);
  CHECK(errno == EINVAL);
}

/* ---- misuse that is diagnosed (death tests) ------------------------------ */

namespace {

/* Runs `mistake` in a forked child; returns (killed by SIGABRT, its stderr). */
template <class F> std::pair<bool, std::string> die_in_child(F mistake) {
  int fds[2];
  if (pipe(fds) != 0)
    return {false, "pipe failed"};
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL);
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    mistake();
    std::fprintf(stderr, "[child survived the mistake]\n");
    _exit(0);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
    if (n > 0)
      out.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return {WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, out};
}

pantry_arena_t *g_victim;

void drop_resets_own_arena(void *, void *) { pantry_arena_reset(g_victim); }

void drop_lets_another_thread_alloc(void *, void *) {
  /* runs inside the reset: another thread allocates in the same arena */
  std::thread([] { ignore_result(pantry_arena_alloc(g_victim, 16, 8)); }).join();
}

} // namespace

TEST_CASE("arena: reset of an arena from its own drop is diagnosed", "[arena][death]") {
  auto r = die_in_child([] {
    pantry_arena_config_t cfg = {};
    cfg.name = "victim";
    g_victim = pantry_arena_create(&cfg);
    (void)pantry_arena_own(g_victim, nullptr, drop_resets_own_arena, nullptr);
    pantry_arena_reset(g_victim);
  });
  INFO("child output: " << r.second);
  CHECK(r.first);
  CHECK(r.second.find("pantry_arena_reset") != std::string::npos);
  CHECK(r.second.find("victim") != std::string::npos);
  CHECK(r.second.find("already being reset") != std::string::npos);
}

TEST_CASE("arena: allocation racing with reset is diagnosed", "[arena][death]") {
  auto r = die_in_child([] {
    pantry_arena_config_t cfg = {};
    cfg.name = "raced";
    g_victim = pantry_arena_create(&cfg);
    std::thread([] { ignore_result(pantry_arena_alloc(g_victim, 16, 8)); }).join();
    (void)pantry_arena_own(g_victim, nullptr, drop_lets_another_thread_alloc, nullptr);
    pantry_arena_reset(g_victim);
  });
  INFO("child output: " << r.second);
  CHECK(r.first);
  CHECK(r.second.find("pantry_arena_alloc") != std::string::npos);
  CHECK(r.second.find("raced") != std::string::npos);
  CHECK(r.second.find("another thread") != std::string::npos);
}
