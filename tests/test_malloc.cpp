// test_malloc.cpp - the malloc-compatible API and the layout API on one thread:
// size classes (alignment, usable size, internal waste at most 12.5% above
// 64 bytes) for every size up to 64 KiB and a stride up to 1 MiB and beyond,
// zero-size requests, aligned allocation up to 2 MiB, the layout API,
// free_sized, realloc keeping contents, calloc zeroing and overflow, and the
// errno of every failure. Public API only.
#include <catch2/catch.hpp>

#include <pantry.h>

#include "test_util.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

using namespace pantry_test;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * 1024;

/* Collects the first few failures of a long loop, so one REQUIRE reports them
 * (thousands of Catch2 assertions per size would be slow and unreadable). */
struct Failures {
  std::vector<std::string> first;
  std::size_t count = 0;
  void add(const std::string &what) {
    if (first.size() < 20)
      first.push_back(what);
    count++;
  }
  std::string text() const {
    std::ostringstream os;
    os << count << " failure(s)";
    for (const std::string &s : first)
      os << "\n  " << s;
    return os.str();
  }
};

bool aligned_to(const void *p, std::size_t align) {
  return (reinterpret_cast<std::uintptr_t>(p) & (align - 1)) == 0;
}

/* The waste bound of the issue: for sizes above 64 bytes the usable size is
 * at most size * 1.125 + 16 (the +16 covers rounding to 16 bytes). */
bool waste_ok(std::size_t size, std::size_t usable) {
  if (size <= 64)
    return true;
  return usable <= size + size / 8 + 16;
}

/* Checks one block of `size` bytes from pantry_malloc: non-NULL, aligned to
 * `align` (16 for malloc), usable size at least `size` (and within the waste
 * bound for malloc blocks), writable and readable over its whole usable size.
 * Returns "" or what is wrong. */
std::string check_block(void *p, std::size_t size, std::size_t align = 16,
                        bool check_waste = true) {
  std::ostringstream os;
  if (p == nullptr) {
    os << "size " << size << ": NULL";
    return os.str();
  }
  if (!aligned_to(p, align)) {
    os << "size " << size << ": " << p << " not aligned to " << align;
    return os.str();
  }
  std::size_t usable = pantry_usable_size(p);
  if (usable < size) {
    os << "size " << size << ": usable size " << usable << " < size";
    return os.str();
  }
  if (check_waste && !waste_ok(size, usable)) {
    os << "size " << size << ": usable size " << usable << " wastes more than 12.5%";
    return os.str();
  }
  if (usable > 0) {
    std::uint64_t seed = mix64(size);
    fill_pattern(p, usable, seed);
    std::size_t bad = check_pattern(p, usable, seed);
    if (bad != usable) {
      os << "size " << size << ": byte " << bad << " of " << usable << " did not keep its value";
      return os.str();
    }
  }
  return "";
}

std::vector<std::size_t> stride_sizes() {
  std::vector<std::size_t> sizes;
  for (std::size_t s = 64 * KiB + 1; s <= MiB; s += 997) // a prime stride: all residues
    sizes.push_back(s);
  for (std::size_t s = 64 * KiB; s <= 64 * MiB; s *= 2) {
    sizes.push_back(s - 1);
    sizes.push_back(s);
    sizes.push_back(s + 1);
  }
  for (std::size_t s : {512 * KiB - 16, 512 * KiB + 16, 3 * MiB + 5, 8 * MiB + 12345, 33 * MiB + 7,
                        64 * MiB - 4096})
    sizes.push_back(s);
  return sizes;
}

} // namespace

TEST_CASE("malloc: every size up to 64 KiB is aligned and usable with at most 12.5% waste",
          "[malloc][size-class]") {
  Failures fail;
  for (std::size_t size = 0; size <= 64 * KiB; size++) {
    void *p = pantry_malloc(size);
    std::string err = check_block(p, size);
    if (!err.empty())
      fail.add(err);
    pantry_free(p);
  }
  INFO(fail.text());
  REQUIRE(fail.count == 0);
}

TEST_CASE("malloc: a stride of sizes up to 1 MiB and huge sizes up to 64 MiB",
          "[malloc][size-class][huge]") {
  Failures fail;
  for (std::size_t size : stride_sizes()) {
    void *p = pantry_malloc(size);
    std::string err = check_block(p, size);
    if (!err.empty())
      fail.add(err);
    pantry_free(p);
  }
  INFO(fail.text());
  REQUIRE(fail.count == 0);
}

TEST_CASE("malloc: live blocks of one size never overlap", "[malloc][size-class]") {
  std::vector<std::size_t> sizes;
  for (std::size_t s = 1; s <= 2 * MiB; s = s + s / 7 + 1)
    sizes.push_back(s);
  for (std::size_t s : {16u, 32u, 48u, 64u, 80u, 128u, 4096u, 65536u, 524288u})
    sizes.push_back(s);

  Failures fail;
  Rng rng(42);
  for (std::size_t size : sizes) {
    std::size_t count = std::min<std::size_t>(256, std::max<std::size_t>(4, 8 * MiB / size));
    std::vector<std::pair<char *, std::size_t>> blocks; // start, usable
    for (std::size_t i = 0; i < count; i++) {
      char *p = static_cast<char *>(pantry_malloc(size));
      if (p == nullptr) {
        fail.add("size " + std::to_string(size) + ": NULL");
        break;
      }
      std::size_t usable = pantry_usable_size(p);
      fill_pattern(p, usable, pattern_seed(size, i));
      blocks.push_back({p, usable});
    }
    for (std::size_t i = 0; i < blocks.size(); i++) {
      std::size_t usable = blocks[i].second;
      std::size_t bad = check_pattern(blocks[i].first, usable, pattern_seed(size, i));
      if (bad != usable)
        fail.add("size " + std::to_string(size) + ": block " + std::to_string(i) + " byte " +
                 std::to_string(bad) + " was overwritten by another live block");
    }
    std::vector<std::pair<char *, std::size_t>> sorted = blocks;
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t i = 1; i < sorted.size(); i++)
      if (sorted[i - 1].first + sorted[i - 1].second > sorted[i].first)
        fail.add("size " + std::to_string(size) + ": live blocks overlap");
    for (std::size_t i = blocks.size(); i > 0; i--) { // free in random order
      std::size_t j = rng.range(0, i - 1);
      std::swap(blocks[j], blocks[i - 1]);
      pantry_free(blocks[i - 1].first);
    }
  }
  INFO(fail.text());
  REQUIRE(fail.count == 0);
}

TEST_CASE("malloc: zero-size requests return distinct freeable pointers", "[malloc][zero]") {
  std::vector<void *> ptrs;
  for (int i = 0; i < 64; i++)
    ptrs.push_back(pantry_malloc(0));
  for (int i = 0; i < 16; i++) {
    ptrs.push_back(pantry_calloc(0, 0));
    ptrs.push_back(pantry_calloc(0, 16));
    ptrs.push_back(pantry_calloc(16, 0));
    ptrs.push_back(pantry_aligned_alloc(64, 0));
    ptrs.push_back(pantry_alloc(pantry_layout_t{0, 1}));
    ptrs.push_back(pantry_alloc(pantry_layout_t{0, 4096}));
    ptrs.push_back(pantry_realloc(nullptr, 0));
  }
  std::set<void *> distinct;
  for (void *p : ptrs) {
    REQUIRE(p != nullptr);
    distinct.insert(p);
  }
  REQUIRE(distinct.size() == ptrs.size());
  for (void *p : ptrs)
    pantry_free(p);
}

TEST_CASE("malloc: usable_size of NULL is 0 and free of NULL does nothing", "[malloc]") {
  REQUIRE(pantry_usable_size(nullptr) == 0);
  pantry_free(nullptr);
  pantry_free_sized(nullptr, 0);
  pantry_free_sized(nullptr, 64);
  pantry_dealloc(nullptr, pantry_layout_t{64, 16});
  SUCCEED();
}

TEST_CASE("malloc: impossible sizes give NULL with ENOMEM", "[malloc][errors]") {
  const std::size_t sizes[] = {SIZE_MAX, SIZE_MAX - 4095, SIZE_MAX / 2 + 1,
                               static_cast<std::size_t>(PTRDIFF_MAX) + 1};
  for (std::size_t size : sizes) {
    CAPTURE(size);
    volatile std::size_t vsize = size; // keep the compiler from reasoning about it
    errno = 0;
    void *p = pantry_malloc(vsize);
    CHECK(p == nullptr);
    CHECK(errno == ENOMEM);
    pantry_free(p);
  }
}

TEST_CASE("aligned_alloc: every power-of-two alignment up to 2 MiB", "[aligned]") {
  Failures fail;
  for (std::size_t align = 1; align <= 2 * MiB; align *= 2) {
    std::vector<std::size_t> sizes = {1, 8, 24, 100, 1000, 70000};
    for (std::size_t s : {align / 2, align - 1, align, align + 1, 2 * align + 3})
      if (s > 0)
        sizes.push_back(s);
    std::vector<void *> live;
    std::set<void *> distinct;
    for (std::size_t size : sizes) {
      for (int rep = 0; rep < 3; rep++) { // a few live at once: not only the first is aligned
        void *p = pantry_aligned_alloc(align, size);
        std::ostringstream os;
        os << "align " << align << " size " << size << ": ";
        if (p == nullptr) {
          fail.add(os.str() + "NULL");
          continue;
        }
        std::string err = check_block(p, size, align, false);
        if (!err.empty())
          fail.add(os.str() + err);
        if (!distinct.insert(p).second)
          fail.add(os.str() + "the same pointer twice");
        live.push_back(p);
      }
    }
    for (void *p : live)
      pantry_free(p);
  }
  INFO(fail.text());
  REQUIRE(fail.count == 0);
}

TEST_CASE("aligned_alloc: a bad alignment gives NULL with EINVAL and a huge one ENOMEM",
          "[aligned][errors]") {
  SECTION("not a power of two: EINVAL") {
    const std::size_t aligns[] = {3, 5, 6, 12, 24, 48, 100, 4095, 4097, 65537, 2 * MiB - 1};
    for (std::size_t align : aligns) {
      CAPTURE(align);
      errno = 0;
      void *p = pantry_aligned_alloc(align, 64);
      CHECK(p == nullptr);
      CHECK(errno == EINVAL);
      pantry_free(p);
    }
  }
  SECTION("alignment 0 is not a power of two: EINVAL") {
    errno = 0;
    void *p = pantry_aligned_alloc(0, 64);
    CHECK(p == nullptr);
    CHECK(errno == EINVAL);
    pantry_free(p);
  }
  SECTION("a power of two above 2 MiB: ENOMEM") {
    const std::size_t aligns[] = {4 * MiB, 1024 * MiB, SIZE_MAX / 2 + 1};
    for (std::size_t align : aligns) {
      CAPTURE(align);
      errno = 0;
      void *p = pantry_aligned_alloc(align, 64);
      CHECK(p == nullptr);
      CHECK(errno == ENOMEM);
      pantry_free(p);
    }
  }
  SECTION("an impossible size: ENOMEM") {
    volatile std::size_t size = SIZE_MAX;
    errno = 0;
    void *p = pantry_aligned_alloc(64, size);
    CHECK(p == nullptr);
    CHECK(errno == ENOMEM);
    pantry_free(p);
  }
}

namespace {
struct OneChar {
  char c;
};
struct Mixed {
  double d;
  char c;
};
struct alignas(64) CacheLine {
  char bytes[64];
};
struct alignas(256) Wide {
  char bytes[10000];
};
struct alignas(4096) PageAligned {
  char bytes[100];
};
struct Array {
  int values[1000];
};

/* Allocates `count` blocks of `layout`, checks alignment, usable size and
 * contents, then frees them with pantry_dealloc and the same layout. */
void exercise_layout(pantry_layout_t layout, int count, Failures &fail) {
  std::vector<void *> live;
  for (int i = 0; i < count; i++) {
    void *p = pantry_alloc(layout);
    std::ostringstream os;
    os << "layout {" << layout.size << ", " << layout.align << "} #" << i << ": ";
    if (p == nullptr) {
      fail.add(os.str() + "NULL");
      continue;
    }
    if (!aligned_to(p, layout.align))
      fail.add(os.str() + "not aligned");
    if (pantry_usable_size(p) < layout.size)
      fail.add(os.str() + "usable size below the layout's size");
    fill_pattern(p, layout.size, pattern_seed(layout.size, static_cast<std::uint64_t>(i)));
    live.push_back(p);
  }
  for (std::size_t i = 0; i < live.size(); i++) {
    if (check_pattern(live[i], layout.size, pattern_seed(layout.size, i)) != layout.size)
      fail.add("layout {" + std::to_string(layout.size) + ", " + std::to_string(layout.align) +
               "}: contents lost");
    pantry_dealloc(live[i], layout);
  }
}
} // namespace

TEST_CASE("layout: pantry_alloc and pantry_dealloc with PANTRY_LAYOUT_OF and explicit layouts",
          "[layout]") {
  Failures fail;
  SECTION("PANTRY_LAYOUT_OF") {
    STATIC_REQUIRE(PANTRY_LAYOUT_OF(CacheLine).align == 64);
    STATIC_REQUIRE(PANTRY_LAYOUT_OF(PageAligned).size == 4096);
    exercise_layout(PANTRY_LAYOUT_OF(OneChar), 100, fail);
    exercise_layout(PANTRY_LAYOUT_OF(Mixed), 100, fail);
    exercise_layout(PANTRY_LAYOUT_OF(CacheLine), 100, fail);
    exercise_layout(PANTRY_LAYOUT_OF(Wide), 20, fail);
    exercise_layout(PANTRY_LAYOUT_OF(PageAligned), 20, fail);
    exercise_layout(PANTRY_LAYOUT_OF(Array), 20, fail);
  }
  SECTION("explicit layouts") {
    const pantry_layout_t layouts[] = {{1, 1},
                                       {3, 1},
                                       {100, 8},
                                       {100, 32},
                                       {1000, 512},
                                       {5000, 4096},
                                       {70000, 64},
                                       {70000, 65536},
                                       {600000, 16},
                                       {600000, 4096},
                                       {MiB, 2 * MiB},
                                       {4 * MiB, 64},
                                       {3 * MiB + 1, 2 * MiB},
                                       {24, 8},
                                       {48, 16}};
    for (const pantry_layout_t &layout : layouts)
      exercise_layout(layout, 4, fail);
  }
  SECTION("a zero-size layout gives a unique, aligned, freeable pointer") {
    void *a = pantry_alloc(pantry_layout_t{0, 256});
    void *b = pantry_alloc(pantry_layout_t{0, 256});
    REQUIRE(a != nullptr);
    REQUIRE(b != nullptr);
    REQUIRE(a != b);
    REQUIRE(aligned_to(a, 256));
    REQUIRE(aligned_to(b, 256));
    pantry_dealloc(a, pantry_layout_t{0, 256});
    pantry_free(b); // pantry_free is allowed for layout blocks too
  }
  SECTION("a block from pantry_alloc may be freed with pantry_free") {
    void *p = pantry_alloc(PANTRY_LAYOUT_OF(CacheLine));
    REQUIRE(p != nullptr);
    pantry_free(p);
  }
  SECTION("bad layouts: EINVAL for a non-power-of-two alignment, ENOMEM for too much") {
    const pantry_layout_t einval[] = {{16, 0}, {16, 3}, {16, 24}, {4096, 4095}};
    for (const pantry_layout_t &layout : einval) {
      CAPTURE(layout.size, layout.align);
      errno = 0;
      void *p = pantry_alloc(layout);
      CHECK(p == nullptr);
      CHECK(errno == EINVAL);
      pantry_free(p);
    }
    const pantry_layout_t enomem[] = {{16, 4 * MiB}, {SIZE_MAX, 16}, {SIZE_MAX - 64, 64}};
    for (const pantry_layout_t &layout : enomem) {
      CAPTURE(layout.size, layout.align);
      errno = 0;
      void *p = pantry_alloc(layout);
      CHECK(p == nullptr);
      CHECK(errno == ENOMEM);
      pantry_free(p);
    }
  }
  INFO(fail.text());
  REQUIRE(fail.count == 0);
}

TEST_CASE("free_sized: freeing with the allocation's size or its usable size", "[free_sized]") {
  std::vector<std::size_t> sizes;
  for (std::size_t s = 0; s <= 8192; s++)
    sizes.push_back(s);
  for (std::size_t s : stride_sizes())
    if (s <= 16 * MiB)
      sizes.push_back(s);
  Failures fail;
  for (std::size_t size : sizes) {
    void *p = pantry_malloc(size);
    if (p == nullptr) {
      fail.add("size " + std::to_string(size) + ": NULL");
      continue;
    }
    pantry_free_sized(p, size);
    void *q = pantry_malloc(size);
    if (q == nullptr) {
      fail.add("size " + std::to_string(size) + ": NULL");
      continue;
    }
    pantry_free_sized(q, pantry_usable_size(q)); // any size of the same size class
  }
  // calloc'ed and realloc'ed blocks: the size is the one last asked for.
  void *c = pantry_calloc(10, 8);
  REQUIRE(c != nullptr);
  pantry_free_sized(c, 80);
  void *r = pantry_malloc(10);
  REQUIRE(r != nullptr);
  r = pantry_realloc(r, 3000);
  REQUIRE(r != nullptr);
  pantry_free_sized(r, 3000);
  INFO(fail.text());
  REQUIRE(fail.count == 0);
}

namespace {
/* Grows or shrinks `p` (holding `old_size` bytes of pattern `old_seed`) to
 * `new_size`, checks the kept bytes, refills with `new_seed`. */
void *realloc_and_check(void *p, std::size_t old_size, std::uint64_t old_seed, std::size_t new_size,
                        std::uint64_t new_seed, Failures &fail) {
  void *q = pantry_realloc(p, new_size);
  std::ostringstream os;
  os << "realloc " << old_size << " -> " << new_size << ": ";
  if (q == nullptr) {
    fail.add(os.str() + "NULL");
    return p;
  }
  if (!aligned_to(q, 16))
    fail.add(os.str() + "not 16-byte aligned");
  if (pantry_usable_size(q) < new_size)
    fail.add(os.str() + "usable size too small");
  std::size_t keep = std::min(old_size, new_size);
  std::size_t bad = check_pattern(q, keep, old_seed);
  if (bad != keep)
    fail.add(os.str() + "byte " + std::to_string(bad) + " of the kept " + std::to_string(keep) +
             " changed");
  fill_pattern(q, new_size, new_seed);
  return q;
}
} // namespace

TEST_CASE("realloc: growing and shrinking across size classes and huge sizes keeps contents",
          "[realloc]") {
  const std::size_t up[] = {
      1,    2,           8,        15,      16,    17,    32,     48,        63,
      64,   65,          100,      128,     129,   500,   1024,   1025,      4000,
      4096, 4097,        10000,    32768,   65536, 65537, 200000, 512 * KiB, 512 * KiB + 1,
      MiB,  3 * MiB + 5, 16 * MiB, 40 * MiB};
  std::vector<std::size_t> steps(std::begin(up), std::end(up));
  for (std::size_t i = sizeof(up) / sizeof(up[0]); i > 0; i--)
    steps.push_back(up[i - 1]);
  // Big jumps both ways, into and out of huge sizes.
  for (std::size_t s : {1u, 33u * 1024 * 1024, 7u, 600000u, 24u, 2u * 1024 * 1024, 100u})
    steps.push_back(s);

  Failures fail;
  std::size_t size = 0;
  std::uint64_t seed = 0;
  void *p = pantry_realloc(nullptr, 1); // realloc(NULL, n) is malloc(n)
  REQUIRE(p != nullptr);
  fill_pattern(p, 1, seed);
  size = 1;
  for (std::size_t i = 0; i < steps.size(); i++) {
    std::uint64_t next_seed = pattern_seed(7, i);
    p = realloc_and_check(p, size, seed, steps[i], next_seed, fail);
    size = steps[i];
    seed = next_seed;
  }
  pantry_free(p);
  INFO(fail.text());
  REQUIRE(fail.count == 0);
}

TEST_CASE("realloc: random walk of many live blocks keeps every byte", "[realloc]") {
  Rng rng(2024);
  const std::size_t live_count = 64;
  const std::size_t steps = 20000 * test_scale();
  struct Live {
    void *p;
    std::size_t size;
    std::uint64_t seed;
  };
  std::vector<Live> live(live_count, Live{nullptr, 0, 0});
  Failures fail;
  for (std::size_t step = 0; step < steps; step++) {
    Live &b = live[rng.range(0, live_count - 1)];
    std::size_t r = rng.range(0, 999);
    std::size_t size = r < 700   ? rng.range(0, 512)
                       : r < 950 ? rng.range(513, 64 * KiB)
                       : r < 998 ? rng.range(64 * KiB, 600 * KiB)
                                 : rng.range(600 * KiB, 3 * MiB);
    std::uint64_t seed = pattern_seed(1, step);
    b.p = realloc_and_check(b.p, b.size, b.seed, size, seed, fail);
    b.size = size;
    b.seed = seed;
    if (fail.count > 0)
      break;
  }
  for (Live &b : live) {
    if (check_pattern(b.p, b.size, b.seed) != b.size)
      fail.add("a live block lost its contents");
    pantry_free(b.p);
  }
  INFO(fail.text());
  REQUIRE(fail.count == 0);
}

TEST_CASE("realloc: realloc of NULL and to size 0 and a failed realloc", "[realloc][errors]") {
  SECTION("realloc(NULL, n) allocates") {
    void *p = pantry_realloc(nullptr, 100);
    REQUIRE(p != nullptr);
    REQUIRE(pantry_usable_size(p) >= 100);
    std::memset(p, 1, 100);
    pantry_free(p);
  }
  SECTION("realloc(p, 0) frees p and returns a unique freeable pointer") {
    void *a = pantry_malloc(100);
    void *b = pantry_malloc(100);
    REQUIRE(a != nullptr);
    REQUIRE(b != nullptr);
    void *a0 = pantry_realloc(a, 0);
    void *b0 = pantry_realloc(b, 0);
    REQUIRE(a0 != nullptr);
    REQUIRE(b0 != nullptr);
    REQUIRE(a0 != b0);
    pantry_free(a0);
    pantry_free(b0);
    void *h = pantry_malloc(4 * MiB);
    REQUIRE(h != nullptr);
    void *h0 = pantry_realloc(h, 0);
    REQUIRE(h0 != nullptr);
    pantry_free(h0);
  }
  SECTION("a failed realloc returns NULL with ENOMEM and leaves the block untouched") {
    const std::size_t sizes[] = {100, 5000, 700000};
    for (std::size_t size : sizes) {
      CAPTURE(size);
      void *p = pantry_malloc(size);
      REQUIRE(p != nullptr);
      fill_pattern(p, size, 99);
      volatile std::size_t huge = SIZE_MAX - 100;
      errno = 0;
      void *q = pantry_realloc(p, huge);
      CHECK(q == nullptr);
      CHECK(errno == ENOMEM);
      CHECK(check_pattern(p, size, 99) == size);
      CHECK(pantry_usable_size(p) >= size);
      pantry_free(p);
    }
  }
}

TEST_CASE("calloc: zeroes fresh and reused blocks", "[calloc]") {
  const std::size_t sizes[] = {1,         8,      16,   17,          64,     100,
                               1000,      4096,   5000, 40000,       65536,  100000,
                               512 * KiB, 600000, MiB,  2 * MiB + 1, 9 * MiB};
  Failures fail;
  for (std::size_t size : sizes) {
    std::size_t count = std::max<std::size_t>(2, std::min<std::size_t>(64, 16 * MiB / size));
    // Dirty blocks of this size and free them, so calloc likely reuses them.
    std::vector<void *> dirty;
    for (std::size_t i = 0; i < count; i++) {
      void *p = pantry_malloc(size);
      if (p == nullptr) {
        fail.add("malloc " + std::to_string(size) + ": NULL");
        continue;
      }
      std::memset(p, 0xAB, pantry_usable_size(p));
      dirty.push_back(p);
    }
    for (void *p : dirty)
      pantry_free(p);
    std::vector<void *> clean;
    for (std::size_t i = 0; i < count; i++) {
      bool by_elements = (i % 2) == 0;
      void *p = by_elements ? pantry_calloc(size, 1) : pantry_calloc(1, size);
      if (p == nullptr) {
        fail.add("calloc " + std::to_string(size) + ": NULL");
        continue;
      }
      std::size_t bad = check_bytes(p, size, 0);
      if (bad != size)
        fail.add("calloc " + std::to_string(size) + ": byte " + std::to_string(bad) +
                 " is not zero");
      std::memset(p, 0xCD, size);
      clean.push_back(p);
    }
    for (void *p : clean)
      pantry_free(p);
  }
  // Arrays: count * size with both factors above 1.
  const std::pair<std::size_t, std::size_t> arrays[] = {
      {3, 7}, {100, 40}, {4096, 3}, {1000, 1000}, {3, 700001}};
  for (const auto &a : arrays) {
    void *p = pantry_calloc(a.first, a.second);
    if (p == nullptr) {
      fail.add("calloc array: NULL");
      continue;
    }
    std::size_t n = a.first * a.second;
    if (check_bytes(p, n, 0) != n)
      fail.add("calloc array " + std::to_string(a.first) + " x " + std::to_string(a.second) +
               ": not zero");
    pantry_free(p);
  }
  INFO(fail.text());
  REQUIRE(fail.count == 0);
}

TEST_CASE("calloc: count times size overflow gives NULL with ENOMEM", "[calloc][errors]") {
  const std::pair<std::size_t, std::size_t> cases[] = {
      {SIZE_MAX / 2 + 1, 2},
      {2, SIZE_MAX / 2 + 1},
      {SIZE_MAX, SIZE_MAX},
      {SIZE_MAX, 2},
      {std::size_t(1) << 32, std::size_t(1) << 32},
      {(std::size_t(1) << 33) + 1, std::size_t(1) << 31},
      {1, SIZE_MAX},       // no overflow, but too large
      {SIZE_MAX / 16, 16}, // no overflow, but too large
  };
  for (const auto &c : cases) {
    CAPTURE(c.first, c.second);
    volatile std::size_t count = c.first;
    errno = 0;
    void *p = pantry_calloc(count, c.second);
    CHECK(p == nullptr);
    CHECK(errno == ENOMEM);
    pantry_free(p);
  }
}
