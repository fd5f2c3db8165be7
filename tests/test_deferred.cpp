// test_deferred.cpp - RCU-deferred frees (include/pantry.h, "Deferred frees
// (RCU)"), through the public API and liburcu:
//   - readers under rcu_read_lock walk a lock-free list while writers replace
//     nodes and defer-free the old ones; every node a reader saw must still
//     hold what it held until the reader leaves its read-side section
//     (urcu-memb, the default, and urcu-qsbr through pantry_deferred_set_flavor);
//   - a reader held inside its read-side section: no deferred block is freed
//     and the barrier does not return until it leaves;
//   - the time bound: a partial batch of a live, idle thread is freed without
//     a barrier; threads that defer and exit at once lose nothing;
//   - fork with deferred frees pending: parent and child both complete them;
//   - misuse: foreign and interior pointers, the barrier inside a read-side
//     section and from an RCU callback.
//
// How a test sees that a block was freed: pantry writes its free-list link
// into the first word of a freed block, so a block whose first word still
// holds our pattern has not been freed. Such blocks are read through
// NO_ASAN loads: under AddressSanitizer pantry poisons a block while it
// waits (so that any write into it is reported), and our reads are allowed.
// The blocks come from the main thread's heap, which stays alive, so the
// memory stays mapped after the free.
//
// Catch2 assertions are not thread-safe: workers count problems in atomics;
// the main thread REQUIREs after join. PANTRY_TEST_THREADS and
// PANTRY_TEST_SCALE size the stress tests (test_util.hpp).
#include <catch2/catch.hpp>

#include <pantry.h>

#include <urcu/urcu-memb.h>
#include <urcu/urcu-qsbr.h>

#include "test_util.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

// urcu-memb.h included urcu/flavor.h under its own names; urcu-qsbr.h's
// include of it was a no-op, so its flavor is declared here.
extern "C" const struct rcu_flavor_struct urcu_qsbr_flavor;

using namespace pantry_test;

namespace {

#if defined(__SANITIZE_ADDRESS__)
#define NO_ASAN __attribute__((no_sanitize("address"), noinline))
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NO_ASAN __attribute__((no_sanitize("address"), noinline))
#endif
#endif
#ifndef NO_ASAN
#define NO_ASAN __attribute__((noinline))
#endif

/* ThreadSanitizer cannot see liburcu's grace periods (liburcu is not
 * instrumented), so a reader's load of a node, or a test's look at a block
 * pantry frees meanwhile, and the free after the grace period look like a
 * race to it; and it kills a forked child of a threaded process that starts
 * a thread (liburcu's after_fork_child starts a call_rcu thread). Those
 * tests run in the other builds only. */
#if defined(__SANITIZE_THREAD__)
constexpr bool kTsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kTsan = true;
#else
constexpr bool kTsan = false;
#endif
#else
constexpr bool kTsan = false;
#endif

#define SKIP_UNDER_TSAN()                                                                          \
  do {                                                                                             \
    if (kTsan) {                                                                                   \
      WARN("ThreadSanitizer build: skipped (liburcu's grace periods are invisible to it)");        \
      return;                                                                                      \
    }                                                                                              \
  } while (0)

/* A load that AddressSanitizer does not check (see the top comment). */
NO_ASAN std::uint64_t peek(const void *p) {
  return __atomic_load_n(static_cast<const std::uint64_t *>(p), __ATOMIC_ACQUIRE);
}

/* Problems seen by worker threads: a count and the first description. */
using pantry_test::Problems;

/* Blocks of `words` 8-byte words, word i of block b holding mix64(b, i). */
struct Blocks {
  std::vector<std::uint64_t *> p;
  std::size_t words;
  Blocks(std::size_t n, std::size_t words_) : p(n), words(words_) {
    for (std::size_t b = 0; b < n; b++) {
      p[b] = static_cast<std::uint64_t *>(pantry_malloc(words * 8));
      for (std::size_t i = 0; i < words; i++)
        p[b][i] = word(b, i);
    }
  }
  std::uint64_t word(std::size_t b, std::size_t i) const { return mix64((b << 20) ^ i) | 1; }
  /* Blocks whose every word is intact (never freed, never written). */
  std::size_t intact() const {
    std::size_t n = 0;
    for (std::size_t b = 0; b < p.size(); b++) {
      bool ok = true;
      for (std::size_t i = 0; i < words && ok; i++)
        ok = peek(&p[b][i]) == word(b, i);
      n += ok;
    }
    return n;
  }
  /* Blocks whose first word no longer holds the pattern (freed). */
  std::size_t freed() const {
    std::size_t n = 0;
    for (std::size_t b = 0; b < p.size(); b++)
      n += peek(p[b]) != word(b, 0);
    return n;
  }
};

/* Polls `done` every 10 ms for up to `seconds`. */
template <class F> bool eventually(F done, double seconds) {
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!done()) {
    if (std::chrono::steady_clock::now() > end)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

/* A memb reader parked inside rcu_read_lock until released. */
struct HeldReader {
  std::atomic<int> state{0}; // 0 starting, 1 inside, 2 released
  std::thread t;
  HeldReader() {
    t = std::thread([this] {
      urcu_memb_register_thread();
      urcu_memb_read_lock();
      state.store(1);
      while (state.load() != 2)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      urcu_memb_read_unlock();
      urcu_memb_unregister_thread();
    });
    while (state.load() != 1)
      std::this_thread::yield();
  }
  void release() {
    if (t.joinable()) {
      state.store(2);
      t.join();
    }
  }
  ~HeldReader() { release(); }
};

/* ------------------------------------------------------------------------ */
/* The RCU list                                                             */
/* ------------------------------------------------------------------------ */

struct Node {
  Node *next; // pantry writes its free-list link here when the node is freed
  std::uint64_t id;
  std::uint64_t seed; // mix64(id)
  std::uint64_t words[5];
};

NO_ASAN Node *load_next(Node *n) { return __atomic_load_n(&n->next, __ATOMIC_ACQUIRE); }

/* Nodes from pantry_malloc, or from a pool whose drop counts each node's
 * drops and overwrites it (so a reader that still sees a dropped node
 * notices). */
struct NodeSource {
  pantry_pool_t *pool = nullptr;
  std::vector<std::atomic<std::uint32_t>> drops; // by node id
  std::atomic<std::size_t> dropped{0};
  explicit NodeSource(std::size_t max_id) : drops(max_id) {}
};

void node_drop(void *obj, void *ctx) {
  auto *src = static_cast<NodeSource *>(ctx);
  Node *n = static_cast<Node *>(obj);
  if (n->id < src->drops.size())
    src->drops[n->id].fetch_add(1);
  src->dropped.fetch_add(1);
  n->seed = 0xdeaddeaddeaddeadull; // a reader that sees this was not protected
}

Node *node_new(std::uint64_t id, NodeSource *src) {
  Node *n = static_cast<Node *>(src && src->pool ? pantry_pool_alloc(src->pool)
                                                 : pantry_malloc(sizeof(Node)));
  n->next = nullptr;
  n->id = id;
  n->seed = mix64(id);
  for (std::size_t i = 0; i < 5; i++)
    n->words[i] = mix64(n->seed + i);
  return n;
}

/* Whether the node holds a consistent pattern; its id in *id. */
bool node_valid(Node *n, std::uint64_t *id) {
  *id = peek(&n->id);
  std::uint64_t seed = peek(&n->seed);
  if (seed != mix64(*id))
    return false;
  for (std::size_t i = 0; i < 5; i++)
    if (peek(&n->words[i]) != mix64(seed + i))
      return false;
  return true;
}

/* The readers' side of a flavor. */
struct ReaderFlavor {
  const char *name;
  const void *flavor; // for pantry_deferred_set_flavor
  void (*register_thread)();
  void (*unregister_thread)();
  void (*read_lock)();
  void (*read_unlock)();
  void (*quiescent)(); // QSBR: report a quiescent state between sections
  void (*offline)();
};

void noop() {}

const ReaderFlavor kMemb = {"urcu-memb",
                            nullptr,
                            urcu_memb_register_thread,
                            urcu_memb_unregister_thread,
                            urcu_memb_read_lock,
                            urcu_memb_read_unlock,
                            noop,
                            noop};
const ReaderFlavor kQsbr = {"urcu-qsbr",
                            &urcu_qsbr_flavor,
                            urcu_qsbr_register_thread,
                            urcu_qsbr_unregister_thread,
                            urcu_qsbr_read_lock,
                            urcu_qsbr_read_unlock,
                            urcu_qsbr_quiescent_state,
                            urcu_qsbr_thread_offline};

void run_list_test(const ReaderFlavor &fl, bool use_pool) {
  SKIP_UNDER_TSAN();
  const std::size_t length = 64;
  const unsigned threads = test_threads();
  const unsigned writers = threads / 2;
  const unsigned readers = threads - writers;
  const std::size_t replacements = 20000 * test_scale();

  REQUIRE(pantry_deferred_set_flavor(fl.flavor) == 0);
  struct RestoreFlavor { // even when a REQUIRE below fails: later tests use urcu-memb
    ~RestoreFlavor() { pantry_deferred_set_flavor(nullptr); }
  } restore_flavor;

  NodeSource src(1 + length + writers * replacements);
  if (use_pool) {
    pantry_pool_config_t cfg{};
    cfg.name = "rcu-nodes";
    cfg.layout = PANTRY_LAYOUT_OF(Node);
    cfg.drop = node_drop;
    cfg.ctx = &src;
    src.pool = pantry_pool_create(&cfg);
    REQUIRE(src.pool != nullptr);
  }

  Node head{};
  std::atomic<std::uint64_t> next_id{1};
  for (std::size_t i = 0; i < length; i++) {
    Node *n = node_new(next_id++, &src);
    n->next = head.next;
    __atomic_store_n(&head.next, n, __ATOMIC_RELEASE);
  }

  std::mutex update_lock; // RCU writers serialise among themselves
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> walks{0}, replaced{0};
  std::atomic<unsigned> readers_walking{0}; // writers start once every reader walked once
  Problems problems;

  std::vector<std::thread> pool;
  for (unsigned r = 0; r < readers; r++) {
    pool.emplace_back([&, r] {
      fl.register_thread();
      std::vector<std::pair<Node *, std::uint64_t>> seen;
      seen.reserve(length + 1);
      std::size_t my_walks = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        seen.clear();
        fl.read_lock();
        for (Node *n = load_next(&head); n != nullptr; n = load_next(n)) {
          std::uint64_t id;
          if (!node_valid(n, &id)) {
            problems.add("reader " + std::to_string(r) + ": node " +
                         std::to_string(reinterpret_cast<std::uintptr_t>(n)) +
                         " corrupt while reachable");
            break;
          }
          if (seen.size() > length * 2) {
            problems.add("reader: the list has a cycle (a node was freed and reused)");
            break;
          }
          seen.emplace_back(n, id);
        }
        // Still inside the section: nothing we saw may have been freed.
        for (auto &s : seen) {
          std::uint64_t id;
          if (!node_valid(s.first, &id) || id != s.second) {
            problems.add("reader " + std::to_string(r) + ": node id " + std::to_string(s.second) +
                         " changed inside the read-side section");
            break;
          }
        }
        fl.read_unlock();
        fl.quiescent();
        if (my_walks++ == 0)
          readers_walking++;
      }
      walks += my_walks;
      fl.offline();
      fl.unregister_thread();
    });
  }
  for (unsigned w = 0; w < writers; w++) {
    pool.emplace_back([&, w] {
      while (readers_walking.load() < readers)
        std::this_thread::yield();
      Rng rng(mix64(w + 77));
      for (std::size_t k = 0; k < replacements; k++) {
        Node *old;
        {
          std::lock_guard<std::mutex> lock(update_lock);
          std::size_t pos = rng.range(0, length - 1);
          Node *prev = &head;
          for (std::size_t i = 0; i < pos; i++)
            prev = prev->next;
          old = prev->next;
          Node *fresh = node_new(next_id++, &src);
          fresh->next = old->next;
          __atomic_store_n(&prev->next, fresh, __ATOMIC_RELEASE); // rcu_assign_pointer
        }
        if (use_pool) // readers may still hold it
          pantry_pool_free_deferred(src.pool, old);
        else
          pantry_free_deferred(old);
        replaced++;
      }
    });
  }
  for (unsigned w = 0; w < writers; w++)
    pool[readers + w].join();
  stop.store(true);
  for (unsigned r = 0; r < readers; r++)
    pool[r].join();
  pantry_deferred_barrier();

  INFO(fl.name << ": " << readers << " readers, " << writers << " writers, " << walks.load()
               << " walks");
  INFO(problems.text());
  REQUIRE(problems.count.load() == 0);
  REQUIRE(replaced.load() == writers * replacements);
  REQUIRE(walks.load() > 0);

  if (use_pool) {
    // After the barrier: every replaced node dropped exactly once, the
    // nodes still in the list never.
    REQUIRE(src.dropped.load() == writers * replacements);
    std::size_t wrong = 0;
    for (Node *n = head.next; n != nullptr; n = n->next)
      wrong += src.drops[n->id].load() != 0;
    std::size_t dropped_once = 0;
    for (auto &d : src.drops)
      dropped_once += d.load() == 1;
    REQUIRE(wrong == 0);
    REQUIRE(dropped_once == writers * replacements);
  }
  for (Node *n = head.next; n != nullptr;) {
    Node *next = n->next;
    if (use_pool)
      pantry_pool_free(src.pool, n);
    else
      pantry_free(n);
    n = next;
  }
  if (use_pool)
    pantry_pool_destroy(src.pool);
}

} // namespace

TEST_CASE("deferred: readers walk an RCU list while writers replace nodes (urcu-memb)",
          "[deferred][stress]") {
  run_list_test(kMemb, false);
}

TEST_CASE("deferred: readers walk an RCU list while writers replace nodes (urcu-qsbr)",
          "[deferred][stress]") {
  run_list_test(kQsbr, false);
}

TEST_CASE("deferred: pool objects of an RCU list are dropped once - after the grace period",
          "[deferred][stress][pool]") {
  run_list_test(kMemb, true);
}

TEST_CASE("deferred: pool objects under QSBR readers are dropped once - after the grace period",
          "[deferred][stress][pool]") {
  run_list_test(kQsbr, true);
}

TEST_CASE("deferred: a reader inside its read-side section holds every deferred free",
          "[deferred]") {
  SKIP_UNDER_TSAN();
  Blocks blocks(3000, 8); // more than two batches: full batches are handed over too
  HeldReader reader;
  for (auto *p : blocks.p)
    pantry_free_deferred(p);

  std::atomic<bool> barrier_done{false};
  std::thread barrier([&] {
    pantry_deferred_barrier();
    barrier_done.store(true);
  });
  // Several ticks of the worker: partial batches are handed over, call_rcu
  // is issued, and the grace period waits for the reader.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  bool barrier_returned_early = barrier_done.load();
  std::size_t intact = blocks.intact();
  reader.release();
  barrier.join();

  CHECK_FALSE(barrier_returned_early);
  REQUIRE(intact == blocks.p.size());
  REQUIRE(barrier_done.load());
  REQUIRE(blocks.freed() == blocks.p.size());
}

TEST_CASE("deferred: the barrier returns at once with nothing pending - and frees NULL "
          "does nothing",
          "[deferred]") {
  pantry_free_deferred(nullptr);
  pantry_deferred_barrier();
  void *p = pantry_malloc(100);
  pantry_free_deferred(p);
  pantry_deferred_barrier();
  pantry_deferred_barrier();
  SUCCEED();
}

TEST_CASE("deferred: blocks of every kind (aligned - large - huge - size 0) are deferred",
          "[deferred]") {
  std::vector<void *> ps;
  ps.push_back(pantry_malloc(0));
  ps.push_back(pantry_malloc(16));
  ps.push_back(pantry_calloc(10, 100));
  ps.push_back(pantry_aligned_alloc(4096, 100));
  ps.push_back(pantry_aligned_alloc(64, 3000));
  ps.push_back(pantry_malloc(200 * 1024));
  ps.push_back(pantry_malloc(3 * 1024 * 1024)); // huge: its own mapping
  for (void *p : ps) {
    REQUIRE(p != nullptr);
    pantry_free_deferred(p);
  }
  pantry_deferred_barrier();
  SUCCEED();
}

TEST_CASE("deferred: a partial batch of a live - idle thread is freed after the time bound",
          "[deferred]") {
  SKIP_UNDER_TSAN();
  Blocks blocks(10, 4);
  std::atomic<bool> deferred{false}, leave{false};
  std::thread idle([&] {
    for (auto *p : blocks.p)
      pantry_free_deferred(p);
    deferred.store(true);
    while (!leave.load()) // alive and idle: no exit, no barrier
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
  });
  while (!deferred.load())
    std::this_thread::yield();
  bool all_freed = eventually([&] { return blocks.freed() == blocks.p.size(); }, 5.0);
  leave.store(true);
  idle.join();
  REQUIRE(all_freed);
}

TEST_CASE("deferred: threads that defer and exit at once lose nothing", "[deferred][stress]") {
  SKIP_UNDER_TSAN();
  const unsigned threads = test_threads();
  const std::size_t rounds = 20 * test_scale();
  const std::size_t per_thread = 100; // a partial batch: handed over at exit
  for (std::size_t round = 0; round < rounds; round++) {
    Blocks blocks(threads * per_thread, 2);
    HeldReader reader; // nothing may be freed while it is inside
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; t++)
      pool.emplace_back([&, t] {
        for (std::size_t i = 0; i < per_thread; i++)
          pantry_free_deferred(blocks.p[t * per_thread + i]);
      });
    for (auto &th : pool)
      th.join();
    std::size_t intact = blocks.intact();
    reader.release();
    // No barrier: the exit handover (or the time bound) must do it.
    bool all_freed = eventually([&] { return blocks.freed() == blocks.p.size(); }, 10.0);
    INFO("round " << round);
    REQUIRE(intact == blocks.p.size());
    REQUIRE(all_freed);
  }
}

TEST_CASE("deferred: fork with deferred frees pending", "[deferred][fork]") {
  SKIP_UNDER_TSAN();
  Blocks before(2000, 2);
  for (auto *p : before.p)
    pantry_free_deferred(p);

  std::fflush(nullptr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    alarm(60);
    // The child: what the parent deferred completes here too; the child can
    // allocate, defer, and wait.
    Blocks mine(3000, 2);
    for (auto *p : mine.p)
      pantry_free_deferred(p);
    pantry_deferred_barrier();
    int code = 0;
    if (before.freed() != before.p.size())
      code |= 1;
    if (mine.freed() != mine.p.size())
      code |= 2;
    for (int i = 0; i < 1000; i++)
      pantry_free(pantry_malloc(64));
    _exit(code);
  }
  pantry_deferred_barrier();
  std::size_t parent_freed = before.freed();
  // The parent can keep deferring after the fork.
  Blocks after(500, 2);
  for (auto *p : after.p)
    pantry_free_deferred(p);
  pantry_deferred_barrier();
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  INFO("child status " << status << " (exit bits: 1 = pre-fork frees lost, 2 = child's lost)");
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  REQUIRE(parent_freed == before.p.size());
  REQUIRE(after.freed() == after.p.size());
}

TEST_CASE("deferred: pantry_deferred_set_flavor rejects an incomplete flavor", "[deferred]") {
  struct rcu_flavor_struct broken = urcu_qsbr_flavor;
  broken.update_call_rcu = nullptr;
  REQUIRE(pantry_deferred_set_flavor(&broken) == EINVAL);
  REQUIRE(pantry_deferred_set_flavor(nullptr) == 0);
}

/* ------------------------------------------------------------------------ */
/* Misuse                                                                   */
/* ------------------------------------------------------------------------ */

namespace {

/* Runs `mistake` in a forked child; returns its stderr and whether it died
 * of SIGABRT. */
template <class F> std::pair<bool, std::string> abort_in_child(F mistake) {
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
    alarm(30);
    mistake();
    _exit(0);
  }
  close(fds[1]);
  std::string out;
  char buf[1024];
  for (;;) {
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n > 0)
      out.append(buf, static_cast<std::size_t>(n));
    else if (n == 0 || errno != EINTR)
      break;
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return {WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, out};
}

std::string ptr_text(const void *p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

void barrier_from_callback(struct rcu_head *) { pantry_deferred_barrier(); }

} // namespace

TEST_CASE("death: pantry_free_deferred of a stack address aborts at the call",
          "[death][deferred]") {
  int local = 0;
  auto r = abort_in_child([&] { pantry_free_deferred(&local); });
  INFO(r.second);
  REQUIRE(r.first);
  CHECK(r.second.find("pantry_free_deferred") != std::string::npos);
  CHECK(r.second.find(ptr_text(&local)) != std::string::npos);
  CHECK(r.second.find("not allocated by pantry") != std::string::npos);
}

TEST_CASE("death: pantry_free_deferred of the middle of a block aborts at the call",
          "[death][deferred]") {
  char *p = static_cast<char *>(pantry_malloc(64));
  auto r = abort_in_child([&] { pantry_free_deferred(p + 16); });
  INFO(r.second);
  REQUIRE(r.first);
  CHECK(r.second.find("pantry_free_deferred") != std::string::npos);
  CHECK(r.second.find("middle") != std::string::npos);
  pantry_free(p);
}

TEST_CASE("death: pantry_deferred_barrier inside a read-side critical section aborts",
          "[death][deferred]") {
  auto r = abort_in_child([] {
    urcu_memb_register_thread();
    urcu_memb_read_lock();
    pantry_deferred_barrier();
  });
  INFO(r.second);
  REQUIRE(r.first);
  CHECK(r.second.find("pantry_deferred_barrier") != std::string::npos);
  CHECK(r.second.find("read-side critical section") != std::string::npos);
}

TEST_CASE("death: pantry_deferred_barrier from an RCU callback aborts", "[death][deferred]") {
  auto r = abort_in_child([] {
    static struct rcu_head head;
    urcu_memb_register_thread();
    urcu_memb_call_rcu(&head, barrier_from_callback);
    urcu_memb_unregister_thread();
    urcu_memb_barrier(); // the callback aborts the process
  });
  INFO(r.second);
  REQUIRE(r.first);
  CHECK(r.second.find("pantry_deferred_barrier") != std::string::npos);
  CHECK(r.second.find("RCU callback") != std::string::npos);
}

TEST_CASE("deferred: a QSBR thread may call the barrier while online", "[deferred]") {
  REQUIRE(pantry_deferred_set_flavor(&urcu_qsbr_flavor) == 0);
  struct RestoreFlavor {
    ~RestoreFlavor() { pantry_deferred_set_flavor(nullptr); }
  } restore_flavor;
  urcu_qsbr_register_thread(); // online
  void *p = pantry_malloc(32);
  pantry_free_deferred(p);
  pantry_deferred_barrier();
  urcu_qsbr_unregister_thread();
}

namespace {

struct Small {
  std::uint64_t words[4];
};

void drop_calls_barrier(void *, void *) { pantry_deferred_barrier(); }

pantry_pool_t *small_pool(const char *name, pantry_drop_fn drop) {
  pantry_pool_config_t cfg{};
  cfg.name = name;
  cfg.layout = PANTRY_LAYOUT_OF(Small);
  cfg.drop = drop;
  return pantry_pool_create(&cfg);
}

} // namespace

TEST_CASE("death: pantry_free_deferred of a pool object aborts at the call",
          "[death][deferred][pool]") {
  pantry_pool_t *pool = small_pool("deferred-misfree", nullptr);
  void *obj = pantry_pool_alloc(pool);
  auto r = abort_in_child([&] { pantry_free_deferred(obj); });
  INFO(r.second);
  REQUIRE(r.first);
  CHECK(r.second.find("pantry_free_deferred") != std::string::npos);
  CHECK(r.second.find("pantry_pool_free") != std::string::npos);
  pantry_pool_free(pool, obj);
  pantry_pool_destroy(pool);
}

TEST_CASE("death: pantry_pool_free_deferred into the wrong pool aborts at the call",
          "[death][deferred][pool]") {
  pantry_pool_t *a = small_pool("deferred-a", nullptr);
  pantry_pool_t *b = small_pool("deferred-b", nullptr);
  void *obj = pantry_pool_alloc(a);
  void *block = pantry_malloc(32);
  auto wrong_pool = abort_in_child([&] { pantry_pool_free_deferred(b, obj); });
  auto not_pool = abort_in_child([&] { pantry_pool_free_deferred(a, block); });
  INFO(wrong_pool.second << " / " << not_pool.second);
  REQUIRE(wrong_pool.first);
  REQUIRE(not_pool.first);
  CHECK(wrong_pool.second.find("pantry_pool_free_deferred") != std::string::npos);
  CHECK(wrong_pool.second.find("another pool") != std::string::npos);
  CHECK(not_pool.second.find("not a pool object") != std::string::npos);
  pantry_pool_free(a, obj);
  pantry_free(block);
  pantry_pool_destroy(a);
  pantry_pool_destroy(b);
}

TEST_CASE("death: pantry_deferred_barrier from a deferred drop aborts", "[death][deferred][pool]") {
  auto r = abort_in_child([] {
    pantry_pool_t *pool = small_pool("deferred-drop-barrier", drop_calls_barrier);
    pantry_pool_free_deferred(pool, pantry_pool_alloc(pool));
    pantry_deferred_barrier(); // the drop runs, calls the barrier, aborts
  });
  INFO(r.second);
  REQUIRE(r.first);
  CHECK(r.second.find("pantry_deferred_barrier") != std::string::npos);
  CHECK(r.second.find("callback") != std::string::npos);
}

TEST_CASE("deferred: a held reader keeps a pool object's drop from running", "[deferred][pool]") {
  SKIP_UNDER_TSAN();
  static std::atomic<int> drops{0};
  drops.store(0);
  pantry_pool_t *pool = small_pool("deferred-held", [](void *, void *) { drops.fetch_add(1); });
  std::vector<void *> objs;
  for (int i = 0; i < 100; i++)
    objs.push_back(pantry_pool_alloc(pool));
  HeldReader reader;
  for (void *o : objs)
    pantry_pool_free_deferred(pool, o);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  int early = drops.load();
  reader.release();
  pantry_deferred_barrier();
  CHECK(early == 0);
  REQUIRE(drops.load() == 100);
  pantry_pool_destroy(pool);
}

// A fault in a thread that blocks SIGSEGV kills the process with no handler
// run: no sanitizer report, no message. liburcu starts its call_rcu threads
// with every signal blocked, and pantry its purge thread and deferred
// worker; they must still take their own faults.
TEST_CASE("deferred: pantry's threads and the RCU callback thread take their own faults",
          "[deferred]") {
  static std::atomic<long> drop_tid{0};
  drop_tid.store(0);
  pantry_pool_t *pool =
      small_pool("deferred-faults", [](void *, void *) { drop_tid.store(syscall(SYS_gettid)); });
  pantry_pool_free_deferred(pool, pantry_pool_alloc(pool));
  pantry_deferred_barrier(); // the drop ran on liburcu's call_rcu thread
  // The purge thread starts once pantry maps its second segment.
  std::vector<void *> blocks_held;
  for (int i = 0; i < 800; i++)
    blocks_held.push_back(pantry_malloc(16384));
  for (void *p : blocks_held)
    pantry_free(p);
  long purge = 0;
  for (int i = 0; i < 500 && purge == 0; i++) { // the thread names itself when it runs
    purge = thread_named("pantry-purge");
    if (purge == 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  unsigned long long mask = 0;
  REQUIRE(purge != 0);
  REQUIRE(blocked_signals(purge, &mask));
  CHECK_FALSE(blocks_signal(mask, SIGSEGV));
  CHECK_FALSE(blocks_signal(mask, SIGBUS));
  CHECK(blocks_signal(mask, SIGUSR1)); // signals meant for the program stay away
  REQUIRE(drop_tid.load() != 0);
  REQUIRE(blocked_signals(drop_tid.load(), &mask));
  CHECK_FALSE(blocks_signal(mask, SIGSEGV));
  CHECK_FALSE(blocks_signal(mask, SIGBUS));
  const long worker = thread_named("pantry-deferred");
  REQUIRE(worker != 0);
  REQUIRE(blocked_signals(worker, &mask));
  CHECK_FALSE(blocks_signal(mask, SIGSEGV));
  CHECK_FALSE(blocks_signal(mask, SIGBUS));
  CHECK(blocks_signal(mask, SIGUSR1));
  pantry_pool_destroy(pool);
}
