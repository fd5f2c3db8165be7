// test_stats.cpp - pantry_stats_get and pantry_stats_print, pantry_collect
// and the background purge, and the error handler: what a program reads
// about pantry's memory and how it gets memory back. Public API only.
//
// ctest runs each test case in a process of its own, but the counters are
// process-wide, so each case compares figures before and after what it does
// rather than absolute values. Worker threads never assert: they report
// through atomics and the main thread checks.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "child_process.hpp"
#include "pantry.h"
#include "test_util.hpp"

namespace {

pantry_stats_t stats_now() {
  pantry_stats_t s;
  std::memset(&s, 0xa5, sizeof s);
  pantry_stats_get(&s);
  return s;
}

// The entry of the size class that serves `size` bytes.
const pantry_size_class_stats_t &class_of(const pantry_stats_t &s, std::size_t size) {
  for (const auto &c : s.size_classes)
    if (c.block_size >= size)
      return c;
  return s.size_classes[PANTRY_STATS_SIZE_CLASSES - 1];
}

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// Settle what earlier test cases in this process left in flight, so that only
// the case's own calls move the figures it compares: frees still deferred
// (pantry_deferred_barrier), and segments of exited threads waiting in the
// depot (pantry_collect adopts them all, collects the frees other threads
// made into them, and purges and unmaps what is empty). Without it, the
// case's first pantry_malloc may adopt such a segment and collect those
// frees, and the background purge thread may tidy or unmap one, between the
// case's `before` and `after`: counts of other size classes, or the mapped
// and committed bytes, then move by what other threads did long before. Under
// ctest each case runs alone in a fresh process and this does nothing.
void settle() {
  pantry_deferred_barrier();
  pantry_collect(true);
}

} // namespace

TEST_CASE("stats: the calling thread's blocks are counted exactly", "[stats]") {
  const std::size_t n = 1000 * pantry_test::test_scale();
  settle();
  pantry_stats_t before = stats_now();
  std::vector<void *> blocks(n);
  for (auto &b : blocks)
    b = pantry_malloc(100);
  pantry_stats_t during = stats_now();
  CHECK(class_of(during, 100).block_size == 112);
  CHECK(class_of(during, 100).live_blocks == class_of(before, 100).live_blocks + n);
  CHECK(class_of(during, 100).pages > 0);
  CHECK(during.live_blocks >= before.live_blocks + n);
  CHECK(during.bytes_allocated >= before.bytes_allocated + n * 112);
  CHECK(during.threads >= 1);
  for (auto b : blocks)
    pantry_free(b);
  pantry_stats_t after = stats_now();
  CHECK(class_of(after, 100).live_blocks == class_of(before, 100).live_blocks);
  CHECK(after.bytes_allocated == before.bytes_allocated);
}

TEST_CASE("stats: the size classes cover every request up to 512 KiB - smallest first", "[stats]") {
  pantry_stats_t s = stats_now();
  CHECK(s.size_classes[0].block_size == 16);
  CHECK(s.size_classes[PANTRY_STATS_SIZE_CLASSES - 1].block_size == 512 * 1024);
  for (int i = 1; i < PANTRY_STATS_SIZE_CLASSES; i++)
    CHECK(s.size_classes[i].block_size > s.size_classes[i - 1].block_size);
  for (std::size_t size : {1, 16, 17, 100, 1000, 5000, 70000, 300000}) {
    void *p = pantry_malloc(size);
    CHECK(pantry_usable_size(p) == class_of(s, size).block_size);
    pantry_free(p);
  }
}

TEST_CASE("stats: other threads' blocks are counted - exactly once they exit", "[stats]") {
  const std::size_t n = 5000;
  pantry_stats_t before = stats_now();
  std::atomic<int> stage{0};
  std::vector<void *> blocks(n);
  std::thread t([&] {
    for (auto &b : blocks)
      b = pantry_malloc(48);
    stage = 1;
    while (stage.load() != 2)
      sleep_ms(1);
  });
  while (stage.load() != 1)
    sleep_ms(1);
  pantry_stats_t running = stats_now();
  // Counted when each page last reached a slow path: at most one extension
  // of the thread's current page (4 KiB of 48-byte blocks) behind.
  std::size_t live = class_of(running, 48).live_blocks - class_of(before, 48).live_blocks;
  CHECK(live <= n);
  CHECK(live + 4096 / 48 + 1 >= n);
  CHECK(running.threads >= before.threads + 1);
  stage = 2;
  t.join();
  pantry_stats_t exited = stats_now();
  CHECK(class_of(exited, 48).live_blocks == class_of(before, 48).live_blocks + n);
  CHECK(exited.threads == before.threads);
  CHECK(exited.segments_abandoned >= 1);
  // The main thread frees them: each is a remote free, counted for it.
  for (auto b : blocks)
    pantry_free(b);
  pantry_stats_t freed = stats_now();
  CHECK(freed.remote_frees >= exited.remote_frees + n);
}

TEST_CASE("stats: an abandoned segment's blocks move with it to the adopting thread", "[stats]") {
  const std::size_t n = 3000;
  pantry_stats_t before = stats_now();
  std::vector<void *> blocks(n);
  std::thread([&] {
    for (auto &b : blocks)
      b = pantry_malloc(800);
  }).join();
  // Another thread frees half and allocates until it adopts the segments.
  std::thread([&] {
    for (std::size_t i = 0; i < n; i += 2)
      pantry_free(blocks[i]);
    std::vector<void *> mine;
    for (int i = 0; i < 20000; i++)
      mine.push_back(pantry_malloc(800));
    for (auto p : mine)
      pantry_free(p);
  }).join();
  pantry_stats_t after = stats_now();
  CHECK(after.depot_adoptions > before.depot_adoptions);
  // Whatever was adopted and collected, the half still allocated is counted.
  CHECK(class_of(after, 800).live_blocks >= class_of(before, 800).live_blocks + n / 2);
  CHECK(class_of(after, 800).live_blocks <= class_of(before, 800).live_blocks + n);
  for (std::size_t i = 1; i < n; i += 2)
    pantry_free(blocks[i]);
}

TEST_CASE("stats: huge blocks - mapped - committed and resident bytes", "[stats]") {
  settle();
  pantry_stats_t before = stats_now();
  const std::size_t huge = 3u << 20;
  char *p = static_cast<char *>(pantry_malloc(huge));
  REQUIRE(p != nullptr);
  std::memset(p, 1, huge);
  pantry_stats_t during = stats_now();
  CHECK(during.huge_blocks == before.huge_blocks + 1);
  CHECK(during.bytes_allocated >= before.bytes_allocated + huge);
  CHECK(during.bytes_mapped >= before.bytes_mapped + huge);
  CHECK(during.bytes_committed >= before.bytes_committed + huge);
  CHECK(during.bytes_resident >= before.bytes_resident + huge / 2);
  CHECK(during.bytes_committed <= during.bytes_mapped);
  pantry_free(p);
  pantry_stats_t after = stats_now();
  CHECK(after.huge_blocks == before.huge_blocks);
  CHECK(after.bytes_mapped == before.bytes_mapped);
  CHECK(after.bytes_committed == before.bytes_committed);
}

TEST_CASE("stats: the thread count follows thread heaps", "[stats]") {
  pantry_stats_t before = stats_now();
  const int threads = 4;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  for (int i = 0; i < threads; i++)
    ts.emplace_back([&] {
      pantry_free(pantry_malloc(10));
      ready++;
      while (!go.load())
        sleep_ms(1);
    });
  while (ready.load() != threads)
    sleep_ms(1);
  CHECK(stats_now().threads == before.threads + threads);
  go = true;
  for (auto &t : ts)
    t.join();
  CHECK(stats_now().threads == before.threads);
}

TEST_CASE("stats: pantry_stats_print writes every figure", "[stats]") {
  void *p = pantry_malloc(200);
  char *text = nullptr;
  std::size_t size = 0;
  std::FILE *out = open_memstream(&text, &size);
  REQUIRE(out != nullptr);
  pantry_stats_print(out);
  std::fclose(out);
  std::string s(text, size);
  std::free(text);
  for (const char *needle :
       {"bytes allocated", "segments", "bytes mapped", "bytes committed", "bytes resident",
        "remote frees", "depot adoptions", "purges", "threads", "live blocks", "segments mapped"})
    CHECK(s.find(needle) != std::string::npos);
  pantry_free(p);
  pantry_stats_get(nullptr); // does nothing
}

TEST_CASE("stats: PANTRY_SHOW_STATS=1 prints the statistics at exit", "[stats]") {
  pantry_test::ChildOutcome r = pantry_test::run_child([] {
    setenv("PANTRY_SHOW_STATS", "1", 1);
    execl(PANTRY_LEAK_CHILD, PANTRY_LEAK_CHILD, static_cast<char *>(nullptr));
    std::fprintf(stderr, "[exec failed]\n");
  });
  INFO("child output: [" << r.output << "]");
  REQUIRE(r.exited);
  CHECK(r.exit_code == 0);
  CHECK(r.output.find("pantry: statistics") != std::string::npos);
  CHECK(r.output.find("huge") != std::string::npos);
}

TEST_CASE("collect: emptied memory goes back to the OS - with and without a call",
          "[stats][purge]") {
  // Enough to start the purge thread (it starts once 8 MiB are mapped).
  const std::size_t n = 16384 * pantry_test::test_scale();
  std::vector<void *> blocks(n);
  for (auto &b : blocks) {
    b = pantry_malloc(2000);
    std::memset(b, 7, 2000);
  }
  pantry_stats_t full = stats_now();
  for (auto b : blocks)
    pantry_free(b);
  SECTION("pantry_collect gives it back at once") {
    pantry_collect(false);
    pantry_stats_t collected = stats_now();
    CHECK(collected.bytes_purged > full.bytes_purged);
    CHECK(collected.purges > full.purges);
    CHECK(collected.bytes_committed + n * 2000 / 2 < full.bytes_committed);
    pantry_collect(true);
    pantry_stats_t forced = stats_now();
    CHECK(forced.segments_cached == 0);
    CHECK(forced.bytes_committed <= collected.bytes_committed);
    CHECK(forced.bytes_mapped <= collected.bytes_mapped);
  }
  SECTION("the purge thread gives it back one purge delay later, with no call") {
    long delay = pantry_option_get("PANTRY_PURGE_DELAY_MS");
    REQUIRE(delay >= 0);
    if (pantry_option_get("PANTRY_PURGE_THREAD") == 0)
      return; // PANTRY_PURGE_THREAD=0 in the environment: nothing to test
    // Wait (no pantry call but stats) up to 100 delays, for a loaded machine.
    pantry_stats_t later = stats_now();
    for (int i = 0; i < 100 && later.bytes_committed + n * 2000 / 2 >= full.bytes_committed; i++) {
      sleep_ms(static_cast<int>(delay) + 1);
      later = stats_now();
    }
    CHECK(later.bytes_committed + n * 2000 / 2 < full.bytes_committed);
    CHECK(later.bytes_purged > full.bytes_purged);
  }
}

TEST_CASE("collect: a thread that only frees does not grow memory", "[stats][purge]") {
  // A producer allocates batches; a consumer that never allocates frees
  // them. The producer reuses what the consumer freed: the mapped bytes stay
  // bounded by a few batches, however many go through.
  const int batches = 200 * static_cast<int>(pantry_test::test_scale());
  const std::size_t per_batch = 2000;
  std::atomic<void **> handoff{nullptr};
  std::atomic<bool> done{false};
  std::size_t peak_mapped = 0;
  std::thread consumer([&] {
    while (!done.load() || handoff.load() != nullptr) {
      void **batch = handoff.exchange(nullptr);
      if (batch == nullptr) {
        std::this_thread::yield();
        continue;
      }
      for (std::size_t i = 0; i < per_batch; i++)
        pantry_free(batch[i]);
      delete[] batch; // glibc's: the consumer allocates nothing from pantry
    }
  });
  pantry_stats_t before = stats_now();
  for (int b = 0; b < batches; b++) {
    void **batch = new void *[per_batch];
    for (std::size_t i = 0; i < per_batch; i++)
      batch[i] = pantry_malloc(256);
    while (handoff.load() != nullptr)
      std::this_thread::yield();
    handoff = batch;
    pantry_stats_t s = stats_now();
    if (s.bytes_mapped > peak_mapped)
      peak_mapped = s.bytes_mapped;
  }
  done = true;
  consumer.join();
  // 200 batches of 512 KiB went through; a handful of segments suffice.
  CHECK(peak_mapped <= before.bytes_mapped + (std::size_t)8 * (4u << 20));
}

TEST_CASE("errors: a program's handler gets the message - and abort still follows",
          "[stats][death]") {
  pantry_test::ChildOutcome r = pantry_test::run_child([] {
    pantry_set_error_handler(
        [](pantry_severity_t severity, const char *message, void *ctx) {
          std::fprintf(stdout, "[handler %d %s: %s]\n", static_cast<int>(severity),
                       static_cast<const char *>(ctx), message);
          std::fflush(stdout);
        },
        const_cast<char *>("ctx-ok"));
    int local = 0;
    pantry_free(&local); // not pantry's: fatal
    std::fprintf(stdout, "[survived]\n");
  });
  INFO("child output: [" << r.output << "]");
  REQUIRE(r.signaled);
  CHECK(r.signal == SIGABRT);
  CHECK(r.output.find("[handler 2 ctx-ok: pantry_free(") != std::string::npos);
  CHECK(r.output.find("pantry: error:") == std::string::npos); // not on stderr
  CHECK(r.output.find("[survived]") == std::string::npos);
}

TEST_CASE("errors: without a handler the message goes to stderr", "[stats][death]") {
  pantry_test::ChildOutcome r = pantry_test::run_child([] {
    pantry_set_error_handler([](pantry_severity_t, const char *, void *) {}, nullptr);
    pantry_set_error_handler(nullptr, nullptr); // back to the default
    int local = 0;
    pantry_free(&local);
  });
  INFO("child output: [" << r.output << "]");
  REQUIRE(r.signaled);
  CHECK(r.output.find("pantry: error: pantry_free(") != std::string::npos);
}

TEST_CASE("collect: the page kept for a size class lends its memory while empty",
          "[stats][purge]") {
  // One size class only: its last page is kept when it empties (so a block
  // of that class costs no new page), but after it grew past one extension
  // it gives its memory back like any emptied page, and takes it again.
  const std::size_t n = 2000; // 2000 * 96 bytes: far more than one 4 KiB extension
  settle();
  // 0 in a process of its own; after other cases, what they left in the class.
  const std::size_t live_before = class_of(stats_now(), 96).live_blocks;
  std::vector<void *> blocks(n);
  for (int round = 0; round < 3; round++) {
    for (std::size_t i = 0; i < n; i++) {
      blocks[i] = pantry_malloc(96);
      pantry_test::fill_pattern(blocks[i], 96, pantry_test::pattern_seed(round, i));
    }
    for (std::size_t i = 0; i < n; i++)
      CHECK(pantry_test::check_pattern(blocks[i], 96, pantry_test::pattern_seed(round, i)) == 96);
    for (auto b : blocks)
      pantry_free(b);
    pantry_collect(false); // purges the kept page at once
    pantry_stats_t s = stats_now();
    CHECK(class_of(s, 96).live_blocks == live_before);
  }
  pantry_test::ChildOutcome r = pantry_test::run_child([] {
    std::vector<void *> v(2000);
    for (auto &b : v)
      b = pantry_malloc(96);
    for (auto b : v)
      pantry_free(b);
    pantry_free(v[1000]); // a block of the emptied (trimmed) page, freed again
    std::fprintf(stderr, "[survived]\n");
  });
  INFO("child output: [" << r.output << "]");
  CHECK(r.signaled);
  CHECK(r.output.find("double free") != std::string::npos);
}

namespace {

// Resident bytes of [p, p + size) (mincore; p a multiple of the OS page).
std::size_t resident_bytes(const void *p, std::size_t size) {
  const std::size_t os_page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> v((size + os_page - 1) / os_page);
  if (mincore(const_cast<void *>(p), size, v.data()) != 0)
    return SIZE_MAX;
  std::size_t n = 0;
  for (unsigned char c : v)
    n += c & 1;
  return n * os_page;
}

// One thread's burst: `kept` blocks of 1000 bytes allocated first stay live;
// `burst` more are allocated (every byte written) and freed in the order
// they came. Run in a thread of its own, so the size class's first page
// holds the kept blocks at its start and the burst fills the rest of it.
struct Burst {
  static constexpr std::size_t size = 1000;
  static constexpr std::size_t page =
      64 * 1024; // a small page (pantry.h: pantry_size_class_stats_t)
  std::size_t kept_n = 4, burst_n;
  bool collect;
  std::size_t resident_full = 0, resident_after = 0;
  bool kept_intact = true, reuse_intact = true;

  void run() {
    std::vector<void *> kept(kept_n), burst(burst_n);
    for (std::size_t i = 0; i < kept_n; i++) {
      kept[i] = pantry_malloc(size);
      pantry_test::fill_pattern(kept[i], size, pantry_test::pattern_seed(1, i));
    }
    for (std::size_t i = 0; i < burst_n; i++) {
      burst[i] = pantry_malloc(size);
      std::memset(burst[i], 0x5a, size);
    }
    // The 64 KiB page that holds the kept blocks.
    void *window = reinterpret_cast<void *>(reinterpret_cast<std::uintptr_t>(kept[0]) &
                                            ~static_cast<std::uintptr_t>(page - 1));
    resident_full = resident_bytes(window, page);
    for (auto b : burst)
      pantry_free(b);
    if (collect)
      pantry_collect(false);
    resident_after = resident_bytes(window, page);
    for (std::size_t i = 0; i < kept_n; i++)
      kept_intact &=
          pantry_test::check_pattern(kept[i], size, pantry_test::pattern_seed(1, i)) == size;
    // The page carves its given-back blocks again.
    for (std::size_t i = 0; i < 200; i++) {
      burst[i] = pantry_malloc(size);
      pantry_test::fill_pattern(burst[i], size, pantry_test::pattern_seed(2, i));
    }
    for (std::size_t i = 0; i < 200; i++) {
      reuse_intact &=
          pantry_test::check_pattern(burst[i], size, pantry_test::pattern_seed(2, i)) == size;
      pantry_free(burst[i]);
    }
    for (auto b : kept)
      pantry_free(b);
  }
};

} // namespace

TEST_CASE("collect: a page that keeps a few live blocks after a burst gives its free tail back",
          "[stats][purge]") {
  // The kept blocks take the first 4 KiB of their page (and the segment
  // header 8 KiB more if it is the segment's first page); the burst touched
  // all 64 KiB. Only what the kept blocks span may stay resident.
  SECTION("pantry_collect") {
    Burst b{4, 4000, true};
    std::thread([&] { b.run(); }).join();
    CHECK(b.resident_full >= 48 * 1024);
    CHECK(b.resident_after <= 16 * 1024);
    CHECK(b.kept_intact);
    CHECK(b.reuse_intact);
  }
  SECTION("with no call: the burst of frees goes over the thread's 4 MiB reserve") {
    Burst b{4, 24000, false};
    std::thread([&] { b.run(); }).join();
    CHECK(b.resident_full >= 48 * 1024);
    CHECK(b.resident_after <= 16 * 1024);
    CHECK(b.kept_intact);
    CHECK(b.reuse_intact);
  }
}

TEST_CASE("collect: a double free into a page's given-back tail is diagnosed", "[stats][death]") {
  pantry_test::ChildOutcome r = pantry_test::run_child([] {
    std::vector<void *> kept(4), burst(4000);
    for (auto &p : kept)
      p = pantry_malloc(1000);
    for (auto &p : burst)
      p = pantry_malloc(1000);
    for (auto p : burst)
      pantry_free(p);
    pantry_collect(false);
    pantry_free(burst[30]); // in the kept blocks' page, past them: given back
    std::fprintf(stderr, "[survived]\n");
  });
  INFO("child output: [" << r.output << "]");
  CHECK(r.signaled);
  CHECK(r.output.find("double free") != std::string::npos);
}

TEST_CASE("collect: pages shrink while another thread frees their live blocks", "[stats][purge]") {
  // The owner frees a burst and shrinks its pages (pantry_collect) over and
  // over while another thread frees the blocks the owner kept, one by one,
  // checking each first: a shrink must never give back a live block, nor
  // lose one freed meanwhile (the class's live count comes back).
  constexpr std::size_t size = 1000, kept_n = 256, burst_n = 4000;
  const std::size_t live_before = class_of(stats_now(), size).live_blocks;
  std::vector<void *> kept(kept_n);
  std::atomic<bool> handed{false}, remote_done{false};
  std::atomic<std::size_t> damaged{0};
  std::thread owner([&] {
    for (std::size_t i = 0; i < kept_n; i++) {
      kept[i] = pantry_malloc(size);
      pantry_test::fill_pattern(kept[i], size, pantry_test::pattern_seed(3, i));
    }
    std::vector<void *> burst(burst_n);
    for (auto &b : burst) {
      b = pantry_malloc(size);
      std::memset(b, 0x5a, size);
    }
    handed = true;
    for (std::size_t i = 0; i < burst_n; i++) {
      pantry_free(burst[i]);
      if (i % 256 == 0)
        pantry_collect(false);
    }
    while (!remote_done.load())
      pantry_collect(false);
  });
  std::thread remote([&] {
    while (!handed.load())
      std::this_thread::yield();
    for (std::size_t i = 0; i < kept_n; i++) {
      if (pantry_test::check_pattern(kept[i], size, pantry_test::pattern_seed(3, i)) != size)
        damaged++;
      pantry_free(kept[i]);
    }
    remote_done = true;
  });
  owner.join();
  remote.join();
  CHECK(damaged.load() == 0);
  CHECK(class_of(stats_now(), size).live_blocks == live_before);
}
