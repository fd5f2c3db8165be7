// test_secure.cpp - secure mode (-DPANTRY_SECURE=ON, issue #6): freed
// memory filled, guard pages after each segment's header and at each
// segment's end, double frees caught from any thread.
//
// Every test asks the library which build it is (pantry_option_get
// "PANTRY_SECURE"). In a secure build it checks the secure behaviour; in a
// normal build the tests of the fill and the guards check that the normal
// build pays for neither, and the tests of mistakes only a secure build
// catches return after a WARN. The tests read freed memory on purpose, which
// AddressSanitizer reports: under it they return after a WARN too.
#include <catch2/catch.hpp>

#include <pantry.h>

#include "child_process.hpp"

#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using pantry_test::ChildOutcome;
using pantry_test::children_may_start_threads;
using pantry_test::kUnderAsan;
using pantry_test::run_child;

namespace {

constexpr std::uintptr_t kSegmentSize = std::uintptr_t(4) << 20; // PN_SEGMENT_SIZE
constexpr std::size_t kOsPage = 4096;
constexpr unsigned char kFill = 0xDF;         // PN_FREE_FILL
constexpr std::size_t kFillBytes = 64;        // PN_FREE_FILL_BYTES
constexpr std::size_t kSmallPageSize = 65536; // a small page: the header sits in page 0

bool secure_build() { return pantry_option_get("PANTRY_SECURE") == 1; }

bool skip_under_asan() {
  if (kUnderAsan)
    WARN("skipped: the test reads freed memory, which AddressSanitizer reports");
  return kUnderAsan;
}

bool skip_unless_secure() {
  if (!secure_build())
    WARN("skipped: only a secure build (-DPANTRY_SECURE=ON) promises to catch this");
  return !secure_build();
}

/* The bytes [from, to) of `p` that differ from `value`. */
std::size_t count_not(const void *p, std::size_t from, std::size_t to, unsigned char value) {
  const unsigned char *b = static_cast<const unsigned char *>(p);
  std::size_t n = 0;
  for (std::size_t i = from; i < to; i++)
    n += b[i] != value;
  return n;
}

/* Free `p` (usable size `usable`, all 0x11) with `free_it`, then check its
 * bytes 8.. (bytes 0..7 hold the free-list link). In a secure build bytes
 * 8..15 hold the free mark (derived from a secret key: not the program's
 * bytes) and 16..63 the fill; a normal build wrote none of them. */
template <class Free> void check_fill_after(void *p, std::size_t usable, Free free_it) {
  std::memset(p, 0x11, usable);
  free_it(p);
  std::size_t head = usable < kFillBytes ? usable : kFillBytes;
  INFO("usable size " << usable);
  if (secure_build()) {
    CHECK(count_not(p, 8, 16, 0x11) != 0);
    CHECK(count_not(p, 16, head, kFill) == 0);
  } else {
    CHECK(count_not(p, 8, usable, 0x11) == 0);
  }
}

struct MapsLine {
  std::uintptr_t start, end;
  std::string perms;
};

std::vector<MapsLine> read_maps() {
  std::vector<MapsLine> lines;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    std::string range, perms;
    in >> range >> perms;
    std::size_t dash = range.find('-');
    lines.push_back({std::stoull(range.substr(0, dash), nullptr, 16),
                     std::stoull(range.substr(dash + 1), nullptr, 16), perms});
  }
  return lines;
}

/* Whether the whole of [from, to) lies in one mapping line with no access. */
bool is_guard(const std::vector<MapsLine> &maps, std::uintptr_t from, std::uintptr_t to) {
  for (const MapsLine &m : maps)
    if (m.start <= from && to <= m.end)
      return m.perms.compare(0, 3, "---") == 0;
  return false;
}

/* Whether any page of [from, to) is mapped with no access. */
bool has_guard(const std::vector<MapsLine> &maps, std::uintptr_t from, std::uintptr_t to) {
  for (const MapsLine &m : maps)
    if (m.start < to && from < m.end && m.perms.compare(0, 3, "---") == 0)
      return true;
  return false;
}

} // namespace

TEST_CASE("secure: the first 64 bytes of a freed block are overwritten", "[secure]") {
  if (skip_under_asan())
    return;
  for (std::size_t size : {16, 32, 48, 64, 80, 200, 1000, 5000, 40000}) {
    // A live neighbour keeps the page in use, so its memory stays as the
    // frees left it (no purge).
    void *keep = pantry_malloc(size);
    void *mine = pantry_malloc(size);
    void *theirs = pantry_malloc(size);
    REQUIRE(keep != nullptr);
    REQUIRE(mine != nullptr);
    REQUIRE(theirs != nullptr);
    INFO("freed by its owner, size " << size);
    check_fill_after(mine, pantry_usable_size(mine), [](void *q) { pantry_free(q); });
    INFO("freed by another thread, size " << size);
    check_fill_after(theirs, pantry_usable_size(theirs),
                     [](void *q) { std::thread([q] { pantry_free(q); }).join(); });
    pantry_free(keep);
  }
}

TEST_CASE("secure: guard pages follow the header of a segment and end it", "[secure]") {
  void *p = pantry_malloc(64);
  void *huge = pantry_malloc(3 << 20); // a huge block: a segment of its own
  REQUIRE(p != nullptr);
  REQUIRE(huge != nullptr);
  std::uintptr_t seg = reinterpret_cast<std::uintptr_t>(p) & ~(kSegmentSize - 1);
  std::uintptr_t huge_seg = reinterpret_cast<std::uintptr_t>(huge) & ~(kSegmentSize - 1);
  std::uintptr_t huge_end =
      (reinterpret_cast<std::uintptr_t>(huge) + pantry_usable_size(huge) + kOsPage - 1) &
      ~(kOsPage - 1);
  std::vector<MapsLine> maps = read_maps();
  if (secure_build()) {
    // The header takes less than half of page 0; the guard comes right after.
    CHECK(has_guard(maps, seg + kOsPage, seg + kSmallPageSize / 2 + kOsPage));
    CHECK(is_guard(maps, seg + kSegmentSize - kOsPage, seg + kSegmentSize));
    CHECK(has_guard(maps, huge_seg + kOsPage, huge_seg + kSmallPageSize / 2 + kOsPage));
    CHECK(is_guard(maps, huge_end, huge_end + kOsPage));
  } else {
    CHECK_FALSE(has_guard(maps, seg, seg + kSegmentSize));
    CHECK_FALSE(has_guard(maps, huge_seg, huge_end));
  }
  pantry_free(huge);
  pantry_free(p);
}

TEST_CASE("secure: a write past the end of a segment faults", "[death][secure]") {
  if (skip_unless_secure())
    return;
  void *p = pantry_malloc(64);
  REQUIRE(p != nullptr);
  std::uintptr_t seg = reinterpret_cast<std::uintptr_t>(p) & ~(kSegmentSize - 1);
  volatile unsigned char *last = reinterpret_cast<unsigned char *>(seg + kSegmentSize - 1);
  ChildOutcome r = run_child([last] { *last = 1; }, 60);
  INFO("child " << r.describe());
  REQUIRE(r.signaled);
  CHECK(r.signal == SIGSEGV);
  pantry_free(p);
}

TEST_CASE("secure: a double free after a write to the freed block's link aborts",
          "[death][secure][double-free]") {
  // The normal build's check reads the link word that the write replaced;
  // the secure build's reads the free mark in word 1.
  if (skip_unless_secure() || skip_under_asan())
    return;
  void *keep = pantry_malloc(64);
  void *p = pantry_malloc(64);
  pantry_test::require_aborts_with(
      [p] {
        pantry_free(p);
        std::uint64_t junk = 0x4141414141414141u;
        std::memcpy(p, &junk, sizeof junk);
        pantry_free(p);
      },
      {"double free", "pantry_free"});
  pantry_free(p);
  pantry_free(keep);
}

TEST_CASE("secure: a block that the program filled with the fill pattern frees normally",
          "[secure]") {
  // The free mark comes from the page key: a program's own bytes, 0xDF
  // included, never read as "already free".
  for (std::size_t size : {16, 64, 1000, 3840}) {
    void *keep = pantry_malloc(size);
    void *p = pantry_malloc(size);
    REQUIRE(p != nullptr);
    std::memset(p, kFill, size);
    void *q = nullptr;
    std::thread([&q, size] {
      q = pantry_malloc(size);
      std::memset(q, kFill, size);
    }).join();
    pantry_free(p);
    pantry_free(q); // a remote free into the exited thread's segment
    pantry_free(keep);
  }
  SUCCEED("no false double free");
}

TEST_CASE("secure: a block freed by two other threads at once aborts",
          "[death][secure][double-free][remote]") {
  // Two threads that do not own the block free it at the same moment:
  // without secure mode's claim both could read the block as allocated and
  // push it twice. With it, one of them aborts, whichever way the two frees
  // interleave.
  if (skip_unless_secure())
    return;
  if (!children_may_start_threads()) {
    WARN("skipped: the child must start threads, which ThreadSanitizer forbids after a "
         "multi-threaded fork unless TSAN_OPTIONS has die_after_fork=0");
    return;
  }
  pantry_test::require_aborts_with(
      [] {
        void *p = pantry_malloc(64);
        std::atomic<int> ready{0};
        auto racer = [&] {
          ready.fetch_add(1);
          while (ready.load() < 2) {
          }
          pantry_free(p);
        };
        std::thread a(racer), b(racer);
        a.join();
        b.join();
      },
      {"double free"});
}
