// test_threads.cpp - thread heaps, remote frees and the depot, through the
// public API: a ring of threads that free each other's blocks (every byte
// checked), full pages that must get their remote frees back, a thread that
// exits with live blocks that others free later and whose memory is reused,
// and many rounds of short-lived threads whose memory must stay bounded.
//
// Catch2 assertions are not thread-safe: workers count problems in atomics
// (and keep the first message), the main thread REQUIREs after join.
// PANTRY_TEST_THREADS and PANTRY_TEST_SCALE size the work (test_util.hpp).
#include <catch2/catch.hpp>

#include <pantry.h>

#include "test_util.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

using namespace pantry_test;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * 1024;

/* Problems seen by worker threads: a count and the first description. */
using pantry_test::Problems;

/* A block in flight: who made it, and so which pattern it must hold. */
struct Item {
  void *p;
  std::size_t size;
  std::uint64_t seed;
};

/* Checks every byte of `it` and its usable size; "" when fine. */
std::string check_item(const Item &it) {
  if (pantry_usable_size(it.p) < it.size)
    return "usable size " + std::to_string(pantry_usable_size(it.p)) + " < " +
           std::to_string(it.size);
  std::size_t bad = check_pattern(it.p, it.size, it.seed);
  if (bad != it.size) {
    std::ostringstream os;
    os << "block " << it.p << " of " << it.size << " bytes: byte " << bad
       << " does not hold its pattern";
    return os.str();
  }
  return "";
}

/* Mostly small blocks, some medium, a few huge. */
std::size_t random_size(Rng &rng) {
  std::size_t r = rng.range(0, 9999);
  if (r < 8000)
    return rng.range(1, 1024);
  if (r < 9900)
    return rng.range(1025, 64 * KiB);
  if (r < 9990)
    return rng.range(64 * KiB, 512 * KiB);
  return rng.range(512 * KiB, 2 * MiB);
}

/* A multi-producer mailbox guarded by the test's own mutex (pantry's paths
 * are what is under test, not this queue). */
struct Mailbox {
  std::mutex m;
  std::deque<Item> q;
  void put(const Item &it) {
    std::lock_guard<std::mutex> lock(m);
    q.push_back(it);
  }
  std::deque<Item> take_all() {
    std::deque<Item> out;
    std::lock_guard<std::mutex> lock(m);
    out.swap(q);
    return out;
  }
};

/* Frees a received block one of several ways: free, free_sized, or realloc
 * to another size (checking the kept bytes) and then free. */
void consume(const Item &it, std::uint64_t how, Problems &problems) {
  std::string err = check_item(it);
  if (!err.empty())
    problems.add("receiver: " + err);
  switch (how % 4) {
  case 0:
  case 1:
    pantry_free(it.p);
    break;
  case 2:
    pantry_free_sized(it.p, it.size);
    break;
  default: {
    std::size_t new_size = it.size / 2 + 3 + (how % 3) * it.size;
    void *q = pantry_realloc(it.p, new_size);
    if (q == nullptr) {
      problems.add("receiver: realloc of a remote block returned NULL");
      pantry_free(it.p);
      break;
    }
    std::size_t keep = std::min(it.size, new_size);
    if (check_pattern(q, keep, it.seed) != keep)
      problems.add("receiver: realloc of a remote block lost its contents");
    pantry_free(q);
  }
  }
}

} // namespace

TEST_CASE("threads: a ring of threads frees each other's blocks and checks every byte",
          "[threads][remote-free][stress]") {
  // Thread t allocates blocks of random sizes, fills each with the pattern of
  // (t, index) and hands most of them to thread t+1, which checks every byte
  // and frees them (a remote free; sometimes free_sized or a realloc first).
  // The rest are freed later by their owner, so pages see local and remote
  // frees at once.
  const unsigned nthreads = test_threads();
  const std::size_t per_thread = 20000 * test_scale();
  std::vector<Mailbox> mailboxes(nthreads);
  std::vector<std::atomic<std::size_t>> sent(nthreads);
  std::vector<std::atomic<bool>> sender_done(nthreads);
  for (unsigned t = 0; t < nthreads; t++) {
    sent[t].store(0);
    sender_done[t].store(false);
  }
  Problems problems;
  std::atomic<std::size_t> received_total{0};
  std::atomic<std::size_t> null_blocks{0};

  auto worker = [&](unsigned self) {
    Rng rng(1000 + self);
    Mailbox &out = mailboxes[(self + 1) % nthreads];
    Mailbox &in = mailboxes[self];
    const unsigned sender = (self + nthreads - 1) % nthreads;
    std::vector<Item> local; // some blocks stay a while and are freed by their owner
    std::size_t received = 0;
    auto drain = [&]() {
      std::deque<Item> items = in.take_all();
      for (const Item &it : items)
        consume(it, rng.next(), problems);
      received += items.size();
    };
    for (std::size_t i = 0; i < per_thread; i++) {
      Item it;
      it.size = random_size(rng);
      it.seed = pattern_seed(self, i);
      it.p = pantry_malloc(it.size);
      if (it.p == nullptr) {
        null_blocks.fetch_add(1);
        continue;
      }
      fill_pattern(it.p, it.size, it.seed);
      if (rng.range(0, 7) == 0) { // freed later by this thread
        local.push_back(it);
        if (local.size() > 64) {
          std::size_t j = rng.range(0, local.size() - 1);
          std::string err = check_item(local[j]);
          if (!err.empty())
            problems.add("owner: " + err);
          pantry_free(local[j].p);
          local[j] = local.back();
          local.pop_back();
        }
        continue;
      }
      out.put(it);
      sent[self].fetch_add(1);
      if ((i & 31) == 0)
        drain();
    }
    sender_done[self].store(true);
    for (const Item &it : local) {
      std::string err = check_item(it);
      if (!err.empty())
        problems.add("owner: " + err);
      pantry_free(it.p);
    }
    // Everything the sender sent must arrive and be checked here.
    for (;;) {
      bool finished = sender_done[sender].load();
      drain();
      if (finished && received == sent[sender].load())
        break;
      std::this_thread::yield();
    }
    received_total.fetch_add(received);
  };

  std::vector<std::thread> threads;
  for (unsigned t = 0; t < nthreads; t++)
    threads.emplace_back(worker, t);
  for (std::thread &th : threads)
    th.join();

  std::size_t sent_total = 0;
  for (unsigned t = 0; t < nthreads; t++)
    sent_total += sent[t].load();
  INFO(problems.text());
  REQUIRE(null_blocks.load() == 0);
  REQUIRE(problems.count.load() == 0);
  REQUIRE(received_total.load() == sent_total);
  REQUIRE(sent_total > per_thread * nthreads / 2);
}

TEST_CASE("threads: full pages get their remote frees back to the owner",
          "[threads][remote-free]") {
  // One producer allocates many blocks of one size (filling pages), a consumer
  // frees all of them, and the producer allocates again. If the owner never
  // collected the thread-free lists of its full pages, every round would need
  // fresh pages: the number of distinct addresses would grow with the rounds.
  const std::size_t per_round = 20000;
  const std::size_t rounds = 10 * test_scale();
  const std::size_t sizes[] = {16, 48, 64, 200, 1024};
  Problems problems;
  std::size_t distinct[sizeof(sizes) / sizeof(sizes[0])] = {};

  for (std::size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
    const std::size_t size = sizes[s];
    std::mutex m;
    std::condition_variable cv;
    std::vector<Item> batch;
    bool batch_ready = false;
    bool done = false;
    std::unordered_set<std::uintptr_t> seen;

    std::thread consumer([&]() {
      for (;;) {
        std::vector<Item> mine;
        {
          std::unique_lock<std::mutex> lock(m);
          cv.wait(lock, [&] { return batch_ready || done; });
          if (!batch_ready && done)
            return;
          mine.swap(batch);
        }
        for (const Item &it : mine) {
          std::string err = check_item(it);
          if (!err.empty())
            problems.add("consumer: " + err);
          pantry_free(it.p);
        }
        {
          std::lock_guard<std::mutex> lock(m);
          batch_ready = false;
        }
        cv.notify_all();
      }
    });
    std::thread producer([&]() {
      for (std::size_t r = 0; r < rounds; r++) {
        std::vector<Item> made;
        made.reserve(per_round);
        for (std::size_t i = 0; i < per_round; i++) {
          Item it{pantry_malloc(size), size, pattern_seed(r, i, s)};
          if (it.p == nullptr) {
            problems.add("producer: NULL");
            continue;
          }
          fill_pattern(it.p, size, it.seed);
          seen.insert(reinterpret_cast<std::uintptr_t>(it.p));
          made.push_back(it);
        }
        std::unique_lock<std::mutex> lock(m);
        batch.swap(made);
        batch_ready = true;
        cv.notify_all();
        cv.wait(lock, [&] { return !batch_ready; }); // all freed remotely
      }
      std::lock_guard<std::mutex> lock(m);
      done = true;
      cv.notify_all();
    });
    producer.join();
    consumer.join();
    distinct[s] = seen.size();
  }

  INFO(problems.text());
  REQUIRE(problems.count.load() == 0);
  for (std::size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
    INFO("size " << sizes[s] << ": " << distinct[s] << " distinct addresses over " << rounds
                 << " rounds of " << per_round << " blocks");
    CHECK(distinct[s] <= 3 * per_round);
  }
}

namespace {
/* The blocks a thread leaves behind when it exits. */
struct Leftovers {
  std::vector<Item> items;
};

void make_leftovers(Leftovers &out, std::uint64_t who, std::size_t count,
                    const std::vector<std::size_t> &sizes, Problems &problems) {
  out.items.reserve(count);
  for (std::size_t i = 0; i < count; i++) {
    Item it;
    it.size = sizes[i % sizes.size()];
    it.seed = pattern_seed(who, i, 3);
    it.p = pantry_malloc(it.size);
    if (it.p == nullptr) {
      problems.add("NULL");
      continue;
    }
    fill_pattern(it.p, it.size, it.seed);
    out.items.push_back(it);
  }
}
} // namespace

TEST_CASE("threads: an exited thread's live blocks are freed by others and its memory reused",
          "[threads][depot]") {
  const unsigned nthreads = test_threads();
  const std::size_t count = 4000 * test_scale();
  const std::vector<std::size_t> sizes = {16, 32, 48, 64, 100, 256, 1000, 4000, 20000};
  Problems problems;

  // 1. A thread allocates blocks and exits with all of them live.
  Leftovers dead;
  std::thread([&]() { make_leftovers(dead, 77, count, sizes, problems); }).join();
  REQUIRE(problems.count.load() == 0);
  REQUIRE(dead.items.size() == count);
  std::set<std::uintptr_t> dead_addresses;
  for (const Item &it : dead.items)
    dead_addresses.insert(reinterpret_cast<std::uintptr_t>(it.p));

  // 2. The main thread checks all of them and frees every other one...
  for (std::size_t i = 0; i < dead.items.size(); i++) {
    std::string err = check_item(dead.items[i]);
    if (!err.empty())
      problems.add("after the owner exited: " + err);
    if (i % 2 == 0)
      pantry_free(dead.items[i].p);
  }
  // ... and other threads free the rest.
  {
    std::vector<std::thread> freers;
    for (unsigned t = 0; t < nthreads; t++)
      freers.emplace_back([&, t]() {
        for (std::size_t i = 1 + 2 * t; i < dead.items.size(); i += 2 * nthreads)
          pantry_free_sized(dead.items[i].p, dead.items[i].size);
      });
    for (std::thread &th : freers)
      th.join();
  }
  INFO(problems.text());
  REQUIRE(problems.count.load() == 0);

  // 3. New threads (and the main thread) allocate the same sizes again: the
  // dead thread's memory must come back (the depot hands its segments to a
  // new heap), not only fresh memory from the OS.
  std::vector<Leftovers> again(nthreads + 1);
  {
    std::vector<std::thread> takers;
    std::mutex m;
    std::condition_variable cv;
    unsigned finished = 0;
    bool release = false;
    for (unsigned t = 0; t < nthreads; t++)
      takers.emplace_back([&, t]() {
        make_leftovers(again[t], 100 + t, count, sizes, problems);
        std::unique_lock<std::mutex> lock(m);
        finished++;
        cv.notify_all();
        cv.wait(lock, [&] { return release; }); // keep the blocks live until all are done
      });
    {
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return finished == nthreads; });
    }
    make_leftovers(again[nthreads], 200, count, sizes, problems);
    {
      std::lock_guard<std::mutex> lock(m);
      release = true;
    }
    cv.notify_all();
    for (std::thread &th : takers)
      th.join();
  }
  std::size_t reused = 0;
  for (Leftovers &l : again)
    for (const Item &it : l.items)
      reused += dead_addresses.count(reinterpret_cast<std::uintptr_t>(it.p));
  // Everything allocated in step 3 must still be intact, then goes back.
  for (Leftovers &l : again)
    for (const Item &it : l.items) {
      std::string err = check_item(it);
      if (!err.empty())
        problems.add("step 3: " + err);
      pantry_free(it.p);
    }
  INFO(problems.text());
  REQUIRE(problems.count.load() == 0);
  INFO(reused << " of the " << count << " addresses of the exited thread's blocks came back");
  REQUIRE(reused > 0);
}

TEST_CASE("threads: rounds of short-lived threads leave live blocks for the next round to free",
          "[threads][depot][stress]") {
  // Round r's threads free (after checking) the blocks that round r-1's
  // threads left live when they exited, then allocate their own and exit. If
  // abandoned memory were never reused, the address span and the resident
  // size would grow with every round.
  const unsigned nthreads = test_threads();
  const std::size_t rounds = 100 * test_scale();
  const std::size_t per_thread = 1000;
  Problems problems;
  std::vector<Leftovers> previous(nthreads), next(nthreads);
  std::set<std::uintptr_t> regions; // 1 MiB regions that ever held a block
  std::size_t regions_after_warmup = 0, rss_after_warmup = 0;
  const std::size_t warmup = std::min<std::size_t>(10, rounds / 2);

  for (std::size_t r = 0; r < rounds; r++) {
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < nthreads; t++)
      threads.emplace_back([&, t, r]() {
        // Free a slice of every previous thread's blocks: frees from a thread
        // that is neither the owner nor the one that adopts them.
        for (unsigned from = 0; from < nthreads; from++) {
          std::vector<Item> &items = previous[from].items;
          for (std::size_t i = t; i < items.size(); i += nthreads) {
            std::string err = check_item(items[i]);
            if (!err.empty())
              problems.add("round " + std::to_string(r) + ": " + err);
            pantry_free(items[i].p);
          }
        }
        Rng rng(r * 1000 + t);
        Leftovers &mine = next[t];
        mine.items.clear();
        for (std::size_t i = 0; i < per_thread; i++) {
          Item it;
          it.size = rng.range(0, 99) == 0 ? rng.range(4 * KiB, 64 * KiB) : rng.range(1, 2 * KiB);
          it.seed = pattern_seed(t, i, r);
          it.p = pantry_malloc(it.size);
          if (it.p == nullptr) {
            problems.add("NULL");
            continue;
          }
          fill_pattern(it.p, it.size, it.seed);
          mine.items.push_back(it);
        }
      });
    for (std::thread &th : threads)
      th.join();
    std::swap(previous, next);
    for (const Leftovers &l : previous)
      for (const Item &it : l.items)
        regions.insert(reinterpret_cast<std::uintptr_t>(it.p) >> 20);
    if (r + 1 == warmup) {
      regions_after_warmup = regions.size();
      rss_after_warmup = rss_bytes();
    }
    if (problems.count.load() > 0)
      break;
  }
  for (const Leftovers &l : previous)
    for (const Item &it : l.items) {
      std::string err = check_item(it);
      if (!err.empty())
        problems.add("last round: " + err);
      pantry_free(it.p);
    }
  std::size_t rss_end = rss_bytes();

  INFO(problems.text());
  REQUIRE(problems.count.load() == 0);
  INFO("1 MiB regions holding blocks: " << regions_after_warmup << " after " << warmup
                                        << " rounds, " << regions.size() << " after " << rounds);
  INFO("resident size: " << rss_after_warmup / MiB << " MiB after " << warmup << " rounds, "
                         << rss_end / MiB << " MiB at the end");
  CHECK(regions.size() <= 3 * regions_after_warmup + 128);
#if defined(__SANITIZE_THREAD__)
#define PANTRY_TEST_TSAN_RSS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PANTRY_TEST_TSAN_RSS 1
#endif
#endif
#ifndef PANTRY_TEST_TSAN_RSS
  // Not under ThreadSanitizer, whose shadow memory is part of the RSS and
  // grows with every address touched; the region count above still holds.
  CHECK(rss_end <= rss_after_warmup + 128 * MiB);
#endif
}
