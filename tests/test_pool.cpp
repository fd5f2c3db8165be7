// test_pool.cpp - object pools (include/pantry.h, "Pools"), through the public
// API: many threads allocating and handing objects to each other with every
// init and drop counted exactly once; destroy with live objects left by
// threads that exited; pages of exited threads adopted; alignments 8 to
// 4096; init failure; visit and stats; pool reuse after destroy (a new pool
// at a destroyed pool's address); create/destroy many times with RSS back
// where it was; and, in forked children, the misuse that must abort with a
// message naming the pool and the pointer.
//
// Catch2 assertions are not thread-safe: workers count problems in atomics
// (and keep the first message), the main thread REQUIREs after join.
// PANTRY_TEST_THREADS (default 16 here) and PANTRY_TEST_SCALE size the work.
#include <catch2/catch.hpp>

#include <pantry.h>

#include "child_process.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

using namespace pantry_test;

namespace {

constexpr std::size_t MiB = 1024 * 1024;

/* Sanitizers keep shadow memory for every range ever touched (RSS is then
 * no measure of leaks), and ThreadSanitizer kills a forked child of a
 * threaded process that starts a thread. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif
constexpr std::uint64_t kMagic = 0x706f6f6c6f626a21ull; // "poolobj!"

/* The pool tests default to 16 threads (the "16+"). */
unsigned pool_threads() {
  std::size_t n = env_size("PANTRY_TEST_THREADS", 16);
  return static_cast<unsigned>(std::min<std::size_t>(std::max<std::size_t>(n, 2), 1024));
}

/* Problems seen by worker threads: a count and the first description. */
using pantry_test::Problems;

/* A barrier for a fixed number of threads (C++17 has none). */
class Barrier {
public:
  explicit Barrier(unsigned n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    unsigned gen = gen_;
    if (++waiting_ == n_) {
      waiting_ = 0;
      gen_++;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return gen != gen_; });
  }

private:
  std::mutex m_;
  std::condition_variable cv_;
  unsigned n_, waiting_ = 0, gen_ = 0;
};

/* An object with an identity: init gives it the next serial; drop checks it
 * and marks the serial dropped (twice is a problem). */
struct Obj {
  std::uint64_t serial;
  std::uint64_t magic;
  std::uint64_t payload[4];
};

struct Ledger {
  explicit Ledger(std::size_t capacity) : dropped(capacity), inited(capacity) {}
  std::atomic<std::uint64_t> next_serial{0};
  std::atomic<std::size_t> inits{0};
  std::atomic<std::size_t> drops{0};
  std::atomic<std::size_t> fail_every{0}; /* init fails when serial % fail_every == 1 */
  std::vector<std::atomic<std::uint8_t>> dropped;
  std::vector<std::atomic<std::uint8_t>> inited;
  Problems problems;
};

int obj_init(void *p, void *ctx) {
  auto *ledger = static_cast<Ledger *>(ctx);
  auto *o = static_cast<Obj *>(p);
  std::uint64_t serial = ledger->next_serial.fetch_add(1);
  if (serial >= ledger->inited.size()) {
    ledger->problems.add("serial beyond the ledger: " + std::to_string(serial));
    return -1;
  }
  std::size_t every = ledger->fail_every.load();
  if (every != 0 && serial % every == 1)
    return 1; /* a failed init: this serial must never be dropped */
  ledger->inited[serial].fetch_add(1);
  ledger->inits.fetch_add(1);
  o->serial = serial;
  o->magic = kMagic;
  for (int i = 0; i < 4; i++)
    o->payload[i] = mix64(serial + i);
  return 0;
}

void obj_drop(void *p, void *ctx) {
  auto *ledger = static_cast<Ledger *>(ctx);
  auto *o = static_cast<Obj *>(p);
  if (o->magic != kMagic || o->serial >= ledger->dropped.size()) {
    ledger->problems.add("drop of an object without its magic or serial");
    return;
  }
  for (int i = 0; i < 4; i++)
    if (o->payload[i] != mix64(o->serial + i)) {
      ledger->problems.add("payload of object " + std::to_string(o->serial) + " corrupted");
      break;
    }
  if (ledger->dropped[o->serial].fetch_add(1) != 0)
    ledger->problems.add("object " + std::to_string(o->serial) + " dropped twice");
  o->magic = 0;
  ledger->drops.fetch_add(1);
}

pantry_pool_config_t obj_config(Ledger *ledger, const char *name = "obj") {
  pantry_pool_config_t cfg{};
  cfg.name = name;
  cfg.layout = PANTRY_LAYOUT_OF(Obj);
  cfg.init = obj_init;
  cfg.drop = obj_drop;
  cfg.ctx = ledger;
  return cfg;
}

/* Every serial handed out was inited once; those that were dropped, once. */
void require_ledger_exact(Ledger &ledger, std::size_t expect_drops) {
  INFO(ledger.problems.text());
  REQUIRE(ledger.problems.count.load() == 0);
  std::size_t serials = ledger.next_serial.load();
  std::size_t bad = 0;
  for (std::size_t s = 0; s < serials; s++)
    if (ledger.inited[s].load() > 1 || ledger.dropped[s].load() > ledger.inited[s].load())
      bad++;
  REQUIRE(bad == 0);
  REQUIRE(ledger.drops.load() == expect_drops);
}

pantry_pool_stats_t stats_of(pantry_pool_t *pool) {
  pantry_pool_stats_t s;
  pantry_pool_stats(pool, &s);
  return s;
}

int count_visit(void *obj, void *arg) {
  auto *o = static_cast<Obj *>(obj);
  auto *n = static_cast<std::size_t *>(arg);
  if (o->magic == kMagic)
    ++*n;
  return 0;
}

} // namespace

TEST_CASE("pool: create rejects bad layouts with EINVAL", "[pool]") {
  pantry_pool_config_t cfg{};
  cfg.name = "bad";
  errno = 0;
  REQUIRE(pantry_pool_create(nullptr) == nullptr);
  REQUIRE(errno == EINVAL);
  const pantry_layout_t bad[] = {{0, 8}, {16, 0}, {16, 3}, {16, 24}, {16, 8192}, {1 << 20, 16}};
  for (const pantry_layout_t &l : bad) {
    CAPTURE(l.size, l.align);
    cfg.layout = l;
    errno = 0;
    REQUIRE(pantry_pool_create(&cfg) == nullptr);
    REQUIRE(errno == EINVAL);
  }
}

TEST_CASE("pool: alloc - free - stats and visit on one thread", "[pool]") {
  Ledger ledger(100000);
  pantry_pool_config_t cfg = obj_config(&ledger, "single");
  pantry_pool_t *pool = pantry_pool_create(&cfg);
  REQUIRE(pool != nullptr);
  REQUIRE(std::string(pantry_pool_name(pool)) == "single");
  pantry_pool_stats_t s = stats_of(pool);
  REQUIRE(s.live == 0);
  REQUIRE(s.pages == 0);
  REQUIRE(s.object_size == 48);

  std::vector<Obj *> objs;
  for (int i = 0; i < 10000; i++) {
    auto *o = static_cast<Obj *>(pantry_pool_alloc(pool));
    REQUIRE(o != nullptr);
    REQUIRE(o->magic == kMagic);
    objs.push_back(o);
  }
  std::vector<Obj *> sorted = objs;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 1; i < sorted.size(); i++)
    REQUIRE(reinterpret_cast<char *>(sorted[i]) - reinterpret_cast<char *>(sorted[i - 1]) >= 48);

  s = stats_of(pool);
  REQUIRE(s.live == 10000);
  REQUIRE(s.allocs == 10000);
  REQUIRE(s.peak >= 10000);
  REQUIRE(s.pages >= 10000 * 48 / (64 * 1024));
  REQUIRE(s.bytes_reserved >= 10000 * 48);
  REQUIRE(s.bytes_mapped >= s.bytes_reserved);
  REQUIRE(s.threads == 1);

  for (std::size_t i = 0; i < objs.size(); i += 2)
    pantry_pool_free(pool, objs[i]);
  s = stats_of(pool);
  REQUIRE(s.live == 5000);
  REQUIRE(s.frees == 5000);
  REQUIRE(s.peak >= 10000);
  REQUIRE(ledger.drops.load() == 5000);

  std::size_t seen = 0;
  REQUIRE(pantry_pool_visit(pool, count_visit, &seen) == 5000);
  REQUIRE(seen == 5000);
  struct Stop {
    static int after_ten(void *, void *arg) { return ++*static_cast<int *>(arg) == 10; }
  };
  int visited = 0;
  REQUIRE(pantry_pool_visit(pool, Stop::after_ten, &visited) == 10);

  // freed memory is reused: no new pages for the next 5000
  std::size_t pages = s.pages;
  for (int i = 0; i < 5000; i++)
    REQUIRE(pantry_pool_alloc(pool) != nullptr);
  REQUIRE(stats_of(pool).pages == pages);

  pantry_pool_free(pool, nullptr); // no-op
  pantry_pool_destroy(pool);
  require_ledger_exact(ledger, 15000); // 5000 freed, 10000 dropped by destroy
  pantry_pool_destroy(nullptr);        // no-op
}

TEST_CASE("pool: alignments 8 to 4096 and many sizes", "[pool]") {
  for (std::size_t align = 8; align <= 4096; align *= 2) {
    for (std::size_t size : {std::size_t{1}, align, align + 1, std::size_t{100}, std::size_t{3000},
                             std::size_t{70000}}) {
      CAPTURE(align, size);
      pantry_pool_config_t cfg{};
      cfg.name = "align";
      cfg.layout = {size, align};
      pantry_pool_t *pool = pantry_pool_create(&cfg);
      REQUIRE(pool != nullptr);
      std::size_t objsize = stats_of(pool).object_size;
      REQUIRE(objsize >= size);
      REQUIRE(objsize % align == 0);
      REQUIRE(objsize % 16 == 0);
      const int n = size > 10000 ? 40 : 600;
      std::vector<unsigned char *> objs;
      for (int i = 0; i < n; i++) {
        auto *p = static_cast<unsigned char *>(pantry_pool_alloc(pool));
        REQUIRE(p != nullptr);
        REQUIRE(reinterpret_cast<std::uintptr_t>(p) % align == 0);
        fill_pattern(p, size, pattern_seed(align, i));
        objs.push_back(p);
      }
      for (int i = 0; i < n; i++)
        REQUIRE(check_pattern(objs[i], size, pattern_seed(align, i)) == size);
      for (int i = 0; i < n; i += 3)
        pantry_pool_free(pool, objs[i]);
      REQUIRE(stats_of(pool).live == static_cast<std::size_t>(n - (n + 2) / 3));
      pantry_pool_destroy(pool);
    }
  }
}

TEST_CASE("pool: threads hand objects to each other - every init and drop exactly once",
          "[pool][threads]") {
  const unsigned nthreads = pool_threads();
  const std::size_t rounds = 20 * test_scale();
  const std::size_t per_round = 500;
  Ledger ledger(nthreads * rounds * per_round + 16);
  pantry_pool_config_t cfg = obj_config(&ledger, "crossing");
  pantry_pool_t *pool = pantry_pool_create(&cfg);
  REQUIRE(pool != nullptr);

  std::vector<std::mutex> locks(nthreads);
  std::vector<std::vector<Obj *>> inbox(nthreads);
  Barrier barrier(nthreads);
  std::atomic<std::size_t> freed{0}, kept{0};

  auto worker = [&](unsigned me) {
    Rng rng(pattern_seed(me, 0, 7));
    std::vector<Obj *> mine;
    for (std::size_t r = 0; r < rounds; r++) {
      for (std::size_t k = 0; k < per_round; k++) {
        auto *o = static_cast<Obj *>(pantry_pool_alloc(pool));
        if (o == nullptr || o->magic != kMagic) {
          ledger.problems.add("alloc failed or init not run");
          continue;
        }
        unsigned to = static_cast<unsigned>(rng.range(0, nthreads - 1));
        if (to == me) {
          mine.push_back(o);
        } else {
          std::lock_guard<std::mutex> lock(locks[to]);
          inbox[to].push_back(o);
        }
      }
      barrier.wait();
      std::vector<Obj *> got;
      {
        std::lock_guard<std::mutex> lock(locks[me]);
        got.swap(inbox[me]);
      }
      // free what others sent (remote frees), keep one in 16 alive
      for (Obj *o : got) {
        if (rng.range(0, 15) == 0) {
          mine.push_back(o);
          continue;
        }
        pantry_pool_free(pool, o);
        freed.fetch_add(1);
      }
      // free most of our own (local frees), in random order
      for (std::size_t i = 0; i < mine.size();) {
        if (rng.range(0, 3) != 0) {
          pantry_pool_free(pool, mine[i]);
          freed.fetch_add(1);
          mine[i] = mine.back();
          mine.pop_back();
        } else {
          i++;
        }
      }
      barrier.wait();
    }
    kept.fetch_add(mine.size()); // left live: the thread exits, destroy drops them
  };
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < nthreads; t++)
    threads.emplace_back(worker, t);
  for (auto &t : threads)
    t.join();

  INFO(ledger.problems.text());
  REQUIRE(ledger.problems.count.load() == 0);
  std::size_t total = nthreads * rounds * per_round;
  REQUIRE(ledger.inits.load() == total);
  REQUIRE(ledger.drops.load() == freed.load());
  pantry_pool_stats_t s = stats_of(pool);
  REQUIRE(s.allocs == total);
  REQUIRE(s.frees == freed.load());
  REQUIRE(s.live == kept.load());
  std::size_t seen = 0;
  REQUIRE(pantry_pool_visit(pool, count_visit, &seen) == kept.load());
  REQUIRE(seen == kept.load());

  pantry_pool_destroy(pool); // drops what the exited threads left
  require_ledger_exact(ledger, total);
  for (std::size_t s2 = 0; s2 < total; s2++)
    if (ledger.dropped[s2].load() != 1)
      FAIL("object " << s2 << " dropped " << int(ledger.dropped[s2].load()) << " times");
}

TEST_CASE("pool: pages of exited threads are adopted - their remote frees not lost",
          "[pool][threads]") {
  Ledger ledger(200000);
  pantry_pool_config_t cfg = obj_config(&ledger, "orphans");
  pantry_pool_t *pool = pantry_pool_create(&cfg);
  REQUIRE(pool != nullptr);
  const std::size_t n = 20000;

  // A thread allocates n and exits; the main thread frees all of them
  // (remote frees onto pages whose owner is gone).
  std::vector<void *> objs(n);
  std::thread([&] {
    for (std::size_t i = 0; i < n; i++)
      objs[i] = pantry_pool_alloc(pool);
  }).join();
  for (void *p : objs)
    REQUIRE(p != nullptr);
  std::size_t pages = stats_of(pool).pages;
  for (void *p : objs)
    pantry_pool_free(pool, p);
  REQUIRE(stats_of(pool).live == 0);

  // A new thread reuses those pages instead of taking new ones.
  std::thread([&] {
    for (std::size_t i = 0; i < n; i++)
      objs[i] = pantry_pool_alloc(pool);
  }).join();
  for (void *p : objs)
    REQUIRE(p != nullptr);
  pantry_pool_stats_t s = stats_of(pool);
  CHECK(s.pages <= pages + 1);
  REQUIRE(s.live == n);

  // Several threads each leave objects live and exit; destroy drops them all.
  const unsigned nthreads = pool_threads();
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < nthreads; t++)
    threads.emplace_back([&] {
      std::vector<void *> local;
      for (int i = 0; i < 1000; i++)
        local.push_back(pantry_pool_alloc(pool));
      for (std::size_t i = 0; i < local.size(); i += 2)
        pantry_pool_free(pool, local[i]);
    });
  for (auto &t : threads)
    t.join();
  REQUIRE(stats_of(pool).live == n + nthreads * 500);
  pantry_pool_destroy(pool);
  require_ledger_exact(ledger, ledger.inits.load());
  REQUIRE(ledger.inits.load() == 2 * n + nthreads * 1000);
}

TEST_CASE("pool: a failed init fails the alloc with ENOMEM and is never dropped", "[pool]") {
  Ledger ledger(100000);
  ledger.fail_every = 5;
  pantry_pool_config_t cfg = obj_config(&ledger, "initfail");
  pantry_pool_t *pool = pantry_pool_create(&cfg);
  REQUIRE(pool != nullptr);
  std::size_t ok = 0, failed = 0;
  std::vector<void *> objs;
  for (int i = 0; i < 5000; i++) {
    errno = 0;
    void *p = pantry_pool_alloc(pool);
    if (p == nullptr) {
      REQUIRE(errno == ENOMEM);
      failed++;
    } else {
      ok++;
      objs.push_back(p);
    }
  }
  REQUIRE(failed == 1000);
  REQUIRE(stats_of(pool).live == ok);
  REQUIRE(stats_of(pool).allocs == ok);
  for (std::size_t i = 0; i < objs.size(); i += 2)
    pantry_pool_free(pool, objs[i]);
  pantry_pool_destroy(pool);
  require_ledger_exact(ledger, ok);
  for (std::size_t s = 1; s < 5000; s += 5)
    REQUIRE(ledger.dropped[s].load() == 0);
}

TEST_CASE("pool: pools reused after destroy - a new pool never sees a dead pool's caches",
          "[pool][threads]") {
  // Long-lived threads keep their thread-local caches across pools: every
  // round creates a pool (often at the address of the last one), the threads
  // allocate and cross-free in it, and the main thread destroys it.
  const unsigned nthreads = std::min(pool_threads(), 8u);
  const int rounds = 200;
  Barrier barrier(nthreads + 1);
  std::atomic<pantry_pool_t *> current{nullptr};
  std::atomic<bool> stop{false};
  std::vector<std::vector<void *>> handoff(nthreads);
  std::vector<std::mutex> locks(nthreads);
  Problems problems;
  std::unique_ptr<Ledger> ledger;

  auto worker = [&](unsigned me) {
    for (;;) {
      barrier.wait(); // round starts (or stop)
      if (stop.load())
        return;
      pantry_pool_t *pool = current.load();
      std::vector<void *> made;
      for (int i = 0; i < 300; i++) {
        void *p = pantry_pool_alloc(pool);
        if (p == nullptr)
          problems.add("alloc failed");
        else
          made.push_back(p);
      }
      {
        std::lock_guard<std::mutex> lock(locks[(me + 1) % nthreads]);
        for (std::size_t i = 0; i < made.size(); i += 2)
          handoff[(me + 1) % nthreads].push_back(made[i]);
      }
      barrier.wait(); // hand-offs done
      std::vector<void *> got;
      {
        std::lock_guard<std::mutex> lock(locks[me]);
        got.swap(handoff[me]);
      }
      for (void *p : got)
        pantry_pool_free(pool, p);
      barrier.wait(); // round ends: the main thread destroys the pool
    }
  };
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < nthreads; t++)
    threads.emplace_back(worker, t);

  pantry_pool_t *previous = nullptr;
  int same_address = 0;
  for (int r = 0; r < rounds; r++) {
    ledger.reset(new Ledger(nthreads * 300 + 16));
    pantry_pool_config_t cfg = obj_config(ledger.get(), "reused");
    pantry_pool_t *pool = pantry_pool_create(&cfg);
    REQUIRE(pool != nullptr);
    same_address += pool == previous;
    previous = pool;
    current.store(pool);
    barrier.wait();
    barrier.wait();
    barrier.wait();
    pantry_pool_stats_t s = stats_of(pool);
    REQUIRE(s.allocs == nthreads * 300);
    REQUIRE(s.live == nthreads * 150);
    REQUIRE(s.threads == nthreads);
    REQUIRE(ledger->inits.load() == nthreads * 300); // this pool's init, this pool's ctx
    pantry_pool_destroy(pool);
    require_ledger_exact(*ledger, nthreads * 300);
  }
  stop.store(true);
  barrier.wait();
  for (auto &t : threads)
    t.join();
  INFO(problems.text());
  REQUIRE(problems.count.load() == 0);
  WARN("pools created at the address of the previous one: " << same_address << " of " << rounds);
}

TEST_CASE("pool: creating and destroying thousands of pools leaks nothing", "[pool][rss]") {
  auto cycle = [](int objects) {
    pantry_pool_config_t cfg{};
    cfg.name = "cycle";
    cfg.layout = {64, 16};
    pantry_pool_t *pool = pantry_pool_create(&cfg);
    REQUIRE(pool != nullptr);
    std::vector<void *> objs;
    objs.reserve(objects);
    for (int i = 0; i < objects; i++) {
      void *p = pantry_pool_alloc(pool);
      if (p == nullptr)
        FAIL("pantry_pool_alloc failed in cycle");
      std::memset(p, 0xab, 64);
      objs.push_back(p);
    }
    for (std::size_t i = 0; i < objs.size(); i += 2)
      pantry_pool_free(pool, objs[i]);
    pantry_pool_destroy(pool);
  };
  for (int i = 0; i < 50; i++)
    cycle(5000);
  std::this_thread::sleep_for(std::chrono::milliseconds(200)); // the depot's call_rcu worker
  std::size_t before = rss_bytes();
  const int cycles = 3000 * static_cast<int>(test_scale());
  for (int i = 0; i < cycles; i++)
    cycle(i % 10 == 0 ? 20000 : 2000);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::size_t after = rss_bytes();
  INFO("RSS before " << before / 1024 << " KiB, after " << cycles << " cycles " << after / 1024
                     << " KiB");
  if (kSanitized) {
    WARN("RSS bound not checked: a sanitizer's shadow memory grows with every range touched");
    return;
  }
  REQUIRE(after < before + 8 * MiB);
}

// ---------------------------------------------------------------------------
// Misuse, diagnosed in a forked child (see test_death.cpp for the pattern)
// ---------------------------------------------------------------------------

namespace {

using ChildResult = pantry_test::ChildOutcome;

/* Runs `mistake` in a forked child with stderr and stdout going to a pipe
 * (child_process.hpp). */
template <class F> ChildResult run_in_child(F mistake) { return pantry_test::run_child(mistake); }

std::string ptr_text(const void *p) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

pantry_pool_t *plain_pool(const char *name, std::size_t size = 64) {
  pantry_pool_config_t cfg{};
  cfg.name = name;
  cfg.layout = {size, 16};
  return pantry_pool_create(&cfg);
}

/* Whether the library is a debug build (PANTRY_DEBUG): only debug builds
 * check that a freed pointer is one of the objects handed out so far (here:
 * one far beyond the first, in a fresh page). */
bool library_is_debug_build() {
  static const bool debug = [] {
    ChildResult r = run_in_child([] {
      pantry_pool_t *pool = plain_pool("probe");
      char *first = static_cast<char *>(pantry_pool_alloc(pool));
      pantry_pool_free(pool, first + 64 * 500); // an object never handed out
      _exit(0);
    });
    return r.signaled && r.signal == SIGABRT;
  }();
  return debug;
}

} // namespace

TEST_CASE("pool death: a correct program survives the harness", "[pool][death]") {
  ChildResult r = run_in_child([] {
    pantry_pool_t *pool = plain_pool("fine");
    void *p = pantry_pool_alloc(pool);
    pantry_pool_free(pool, p);
    pantry_pool_destroy(pool);
  });
  INFO("child output: [" << r.output << "]");
  REQUIRE(r.exited);
  REQUIRE(r.exit_code == 0);
}

TEST_CASE("pool death: an object freed into another pool aborts", "[pool][death]") {
  pantry_pool_t *a = plain_pool("pool-a");
  pantry_pool_t *b = plain_pool("pool-b");
  void *p = pantry_pool_alloc(a);
  REQUIRE(p != nullptr);
  require_aborts_with([&] { pantry_pool_free(b, p); },
                      {"pantry_pool_free", ptr_text(p), "pool-a", "pool-b", "another pool"});
  pantry_pool_free(a, p);
  pantry_pool_destroy(a);
  pantry_pool_destroy(b);
}

TEST_CASE("pool death: pointers pantry never handed out abort", "[pool][death]") {
  pantry_pool_t *pool = plain_pool("conns");
  SECTION("a stack address") {
    alignas(64) char buffer[256];
    buffer[0] = 1;
    void *p = buffer + 64;
    require_aborts_with([&] { pantry_pool_free(pool, p); },
                        {"pantry_pool_free", ptr_text(p), "conns", "not allocated by pantry"});
  }
  SECTION("a glibc malloc block") {
    void *p = std::malloc(64);
    require_aborts_with([&] { pantry_pool_free(pool, p); },
                        {"pantry_pool_free", ptr_text(p), "conns", "not allocated by pantry"});
    std::free(p);
  }
  SECTION("a pantry_malloc block") {
    void *p = pantry_malloc(64);
    require_aborts_with([&] { pantry_pool_free(pool, p); },
                        {"pantry_pool_free", ptr_text(p), "conns", "not a pool object"});
    pantry_free(p);
  }
  SECTION("the middle of an object") {
    char *p = static_cast<char *>(pantry_pool_alloc(pool));
    void *mid = p + 16;
    require_aborts_with([&] { pantry_pool_free(pool, mid); },
                        {"pantry_pool_free", ptr_text(mid), "conns", "middle"});
    pantry_pool_free(pool, p);
  }
  pantry_pool_destroy(pool);
}

TEST_CASE("pool death: double frees abort", "[pool][death]") {
  pantry_pool_t *pool = plain_pool("twice");
  SECTION("the only object of its page, freed twice by its thread") {
    void *p = pantry_pool_alloc(pool);
    require_aborts_with(
        [&] {
          pantry_pool_free(pool, p);
          pantry_pool_free(pool, p);
        },
        {"pantry_pool_free", ptr_text(p), "twice", "double free"});
    pantry_pool_free(pool, p);
  }
  SECTION("an object among live ones: at the free (debug) or at the next walk (release)") {
    // Release builds do not check this free (see pantry_pool_free); the
    // free lists that visit (or a destroy with a drop) walks show it.
    std::vector<void *> objs;
    for (int i = 0; i < 16; i++)
      objs.push_back(pantry_pool_alloc(pool));
    void *p = objs[8];
    require_aborts_with(
        [&] {
          pantry_pool_free(pool, p);
          pantry_pool_free(pool, p);
          std::size_t n = 0;
          pantry_pool_visit(
              pool,
              [](void *, void *arg) { return int(++*static_cast<std::size_t *>(arg) > 1000000); },
              &n);
        },
        {"pantry_pool_free", ptr_text(p), "twice", "double free"});
    for (void *q : objs)
      pantry_pool_free(pool, q);
  }
  SECTION("freed twice from another thread: caught at the next walk at the latest") {
    // The objects come from a thread that has exited, so every free here is
    // a remote free (no thread is started in the child).
    std::vector<void *> objs;
    std::thread([&] {
      for (int i = 0; i < 16; i++)
        objs.push_back(pantry_pool_alloc(pool));
    }).join();
    void *p = objs[3];
    require_aborts_with(
        [&] {
          pantry_pool_free(pool, p);
          pantry_pool_free(pool, p);
          std::size_t n = 0;
          pantry_pool_visit(
              pool,
              [](void *, void *arg) { return int(++*static_cast<std::size_t *>(arg) > 1000000); },
              &n);
        },
        {"pantry_pool_free", ptr_text(p), "twice", "double free"});
    for (void *q : objs)
      pantry_pool_free(pool, q);
  }
  pantry_pool_destroy(pool);
}

TEST_CASE("pool death: pantry_free of a pool object aborts", "[pool][death]") {
  pantry_pool_t *pool = plain_pool("boxes");
  void *p = pantry_pool_alloc(pool);
  REQUIRE(p != nullptr);
  require_aborts_with([&] { pantry_free(p); },
                      {"pantry_free", ptr_text(p), "boxes", "pantry_pool_free"});
  pantry_pool_free(pool, p);
  pantry_pool_destroy(pool);
}

TEST_CASE("pool death: destroy racing with alloc or free aborts in debug builds",
          "[pool][death][debug]") {
  if (!library_is_debug_build()) {
    WARN("skipped: libpantry is a release build; destroy racing with alloc is diagnosed only "
         "with PANTRY_DEBUG");
    return;
  }
  if (kSanitized) {
    WARN("skipped: the child must start a thread, which ThreadSanitizer forbids after fork");
    return;
  }
  SECTION("destroy while another thread is inside pantry_pool_alloc (its init)") {
    require_aborts_with(
        [] {
          static std::atomic<int> in_init{0};
          static std::atomic<bool> release{false};
          pantry_pool_config_t cfg{};
          cfg.name = "racy";
          cfg.layout = {64, 16};
          cfg.init = [](void *, void *) {
            in_init.store(1);
            while (!release.load())
              std::this_thread::yield();
            return 0;
          };
          pantry_pool_t *pool = pantry_pool_create(&cfg);
          std::thread t([&] { (void)pantry_pool_alloc(pool); });
          while (in_init.load() == 0)
            std::this_thread::yield();
          pantry_pool_destroy(pool); // aborts: an alloc is in progress
          release.store(true);
          t.join();
        },
        {"pantry_pool_destroy", "racy", "still running"});
  }
  SECTION("a drop run by destroy frees into the pool being destroyed") {
    require_aborts_with(
        [] {
          static pantry_pool_t *pool;
          pantry_pool_config_t cfg{};
          cfg.name = "reentrant";
          cfg.layout = {64, 16};
          cfg.drop = [](void *obj, void *) { pantry_pool_free(pool, obj); };
          pool = pantry_pool_create(&cfg);
          (void)pantry_pool_alloc(pool);
          pantry_pool_destroy(pool);
        },
        {"pantry_pool_free", "reentrant", "pantry_pool_destroy runs"});
  }
}
