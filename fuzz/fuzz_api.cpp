// fuzz_api.cpp - a libFuzzer target that drives random sequences of pantry's
// public API against a shadow model (issue 6).
//
// Each input is a program: one byte picks an operation, the next bytes its
// arguments. The operations cover the malloc API (malloc, calloc, realloc,
// aligned_alloc, free, free_sized, usable_size), the layout API (alloc,
// dealloc), frees from another thread, deferred frees, pools (create with
// random layouts, alloc, free, destroy with objects still live) and arenas
// (create, with a parent or not, alloc, own, new, reset, destroy).
//
// The model holds what each live block, object and arena allocation must
// contain, and checks after every operation that touches one: every live
// range is disjoint from every other (an interval set), every byte still
// holds its pattern, alignment and usable size are as promised, calloc
// zeroes, errors are NULL with the documented errno, and every drop runs
// exactly once, at the moment it must (pool free, pool destroy, arena reset
// or destroy, a parent's reset or destroy). A violation prints what and
// where, then aborts, which libFuzzer reports with the input.
//
// Nothing outlives an input: everything live is freed, destroyed or waited
// for (pantry_deferred_barrier) before LLVMFuzzerTestOneInput returns.
//
// Build: cmake -DPANTRY_BUILD_FUZZ=ON with clang (fuzz/CMakeLists.txt);
// run:   build-fuzz/fuzz/pantry_fuzz -max_total_time=120 corpus/
#include <pantry.h>

#include "test_util.hpp"

#include <urcu/urcu-memb.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

using pantry_test::check_bytes;
using pantry_test::check_pattern;
using pantry_test::fill_pattern;
using pantry_test::mix64;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

[[noreturn]] void fail(const char *what, const void *p, std::size_t a = 0, std::size_t b = 0) {
  std::fprintf(stderr, "pantry_fuzz: model violated: %s (pointer %p, %zu, %zu)\n", what, p, a, b);
  std::abort();
}

// ---- the input ------------------------------------------------------------

struct Input {
  const std::uint8_t *data;
  std::size_t size, pos = 0;
  bool done() const { return pos >= size; }
  std::uint8_t byte() { return pos < size ? data[pos++] : 0; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(byte() | (byte() << 8)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(u16() | (std::uint32_t(u16()) << 16)); }
  /* A size: mostly small, sometimes medium, large or huge, sometimes 0. */
  std::size_t size_arg() {
    std::uint8_t k = byte();
    switch (k % 16) {
    case 0:
      return 0;
    case 1:
    case 2:
    case 3:
    case 4:
    case 5:
    case 6:
      return 1 + byte(); // 1..256
    case 7:
    case 8:
    case 9:
      return 1 + u16() % 1024; // ..1 KiB
    case 10:
    case 11:
      return 1 + u16() % (8 * KiB); // small pages
    case 12:
      return 1 + u32() % (64 * KiB); // medium
    case 13:
      return 1 + u32() % (512 * KiB); // large
    case 14:
      return 512 * KiB + u32() % (5 * MiB); // huge
    default:
      return std::size_t(1) << (k % 13); // powers of two: class edges
    }
  }
  /* An alignment: a power of two, rarely not one. */
  std::size_t align_arg(std::size_t max_shift, bool allow_bad) {
    std::uint8_t k = byte();
    if (allow_bad && k >= 250)
      return k == 255 ? 0 : 3 + std::size_t(k - 250) * 8; // 0, 3, 11, 19, 27, 35
    return std::size_t(1) << (k % (max_shift + 1));
  }
};

// ---- the model --------------------------------------------------------------

/* Every live range, sorted by start: a new one must meet none. */
class Ranges {
public:
  void add(const void *p, std::size_t n, const char *what) {
    std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p), b = a + (n ? n : 1);
    auto next = live_.lower_bound(a);
    if (next != live_.end() && next->first < b)
      fail(what, p, n, next->first);
    if (next != live_.begin() && std::prev(next)->second > a)
      fail(what, p, n, std::prev(next)->first);
    live_.emplace(a, b);
  }
  void remove(const void *p) {
    if (live_.erase(reinterpret_cast<std::uintptr_t>(p)) != 1)
      fail("a range the model never recorded", p);
  }
  bool empty() const { return live_.empty(); }
  void clear() { live_.clear(); }

private:
  std::map<std::uintptr_t, std::uintptr_t> live_;
};

enum class How : std::uint8_t { Malloc, Calloc, Aligned, Layout, Realloc };

struct Block {
  void *p = nullptr;
  std::size_t size = 0, align = 16;
  std::uint64_t seed = 0;
  How how = How::Malloc;
};

/* Drops: each registered object has a counter that its drop bumps. */
struct DropCell {
  std::uint32_t runs = 0;
  bool expected = false; // the model says it must have run by now
};

struct PoolObj {
  void *p;
  std::uint32_t cell;
  std::uint64_t seed;
};

struct Pool {
  pantry_pool_t *pool = nullptr;
  std::size_t size = 0, align = 0, object_size = 0;
  std::vector<PoolObj> objs;
};

struct ArenaAlloc {
  void *p;
  std::size_t size;
  std::uint64_t seed;
};

struct Arena {
  pantry_arena_t *arena = nullptr;
  int parent = -1; // slot of the parent arena
  std::vector<ArenaAlloc> allocs;
  std::vector<std::uint32_t> cells; // drops registered, run at reset or destroy
};

constexpr unsigned kBlocks = 48, kPools = 4, kArenas = 4, kPoolObjs = 48;

struct Model {
  Ranges ranges;
  Block blocks[kBlocks];
  Pool pools[kPools];
  Arena arenas[kArenas];
  std::vector<DropCell> cells;
  std::vector<Block> deferred; // deferred frees: still live until the grace period
  std::uint64_t seq = 0;

  std::uint64_t seed() { return mix64(++seq * 0x9e37); }
  std::uint32_t new_cell() {
    cells.push_back(DropCell{});
    return static_cast<std::uint32_t>(cells.size() - 1);
  }
};

Model *g_model;

void drop_cell(void *, void *ctx) {
  std::uint32_t cell = static_cast<std::uint32_t>(reinterpret_cast<std::uintptr_t>(ctx));
  if (cell >= g_model->cells.size())
    fail("a drop with a context the model never registered", ctx);
  g_model->cells[cell].runs++;
}

/* Pool drops find their cell in the object's first word. */
void pool_drop(void *obj, void *) {
  std::uint32_t cell;
  std::memcpy(&cell, obj, sizeof cell);
  if (cell >= g_model->cells.size())
    fail("a pool drop on an object whose first word was overwritten", obj);
  g_model->cells[cell].runs++;
}

void expect_cell(std::uint32_t cell) {
  DropCell &c = g_model->cells[cell];
  c.expected = true;
  if (c.runs != 1)
    fail(c.runs == 0 ? "a drop did not run" : "a drop ran more than once", nullptr, cell, c.runs);
}

// ---- a helper thread for frees from another thread ---------------------------

class Remote {
public:
  Remote() : thread_([this] { loop(); }) {}
  ~Remote() {
    {
      std::lock_guard<std::mutex> lock(m_);
      quit_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  /* Runs `fn` on the helper thread and waits for it. */
  template <class F> void run(F fn) {
    std::unique_lock<std::mutex> lock(m_);
    job_ = fn;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !job_; });
  }

private:
  void loop() {
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      cv_.wait(lock, [&] { return quit_ || job_; });
      if (quit_)
        return;
      job_();
      job_ = nullptr;
      cv_.notify_all();
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::function<void()> job_;
  bool quit_ = false;
  std::thread thread_;
};

// ---- operations ----------------------------------------------------------------

void check_block(const Block &b) {
  if (check_pattern(b.p, b.size, b.seed) != b.size)
    fail("a block lost its contents", b.p, b.size);
  if (pantry_usable_size(b.p) < b.size)
    fail("usable size below the size asked for", b.p, pantry_usable_size(b.p), b.size);
}

void track_block(Model &m, Block &b) {
  std::size_t usable = pantry_usable_size(b.p);
  if (usable < b.size)
    fail("usable size below the size asked for", b.p, usable, b.size);
  if ((reinterpret_cast<std::uintptr_t>(b.p) & (b.align - 1)) != 0)
    fail("misaligned block", b.p, b.align);
  m.ranges.add(b.p, usable, "a new block overlaps a live range");
  b.seed = m.seed();
  fill_pattern(b.p, b.size, b.seed);
}

void free_block(Model &m, Block &b, std::uint8_t how, Remote *remote) {
  check_block(b);
  m.ranges.remove(b.p);
  void *p = b.p;
  std::size_t size = b.size, align = b.align;
  How kind = b.how;
  auto do_free = [p, size, align, kind, how] {
    switch (how % 4) {
    case 0:
      pantry_free(p);
      break;
    case 1:
      // free_sized is for malloc and calloc blocks (pantry.h; C23 has
      // free_aligned_sized for the others), with the size of the latest
      // allocation; realloc'd blocks are freed without one (a false
      // diagnosis, see tests/test_misuse.cpp).
      if (kind == How::Malloc || kind == How::Calloc)
        pantry_free_sized(p, size);
      else if (kind == How::Realloc)
        pantry_free(p);
      else
        pantry_dealloc(p, pantry_layout_t{size, align});
      break;
    case 2:
      if (kind == How::Layout || kind == How::Aligned)
        pantry_dealloc(p, pantry_layout_t{size, align});
      else
        pantry_free(p);
      break;
    default:
      pantry_free(pantry_realloc(p, 0));
    }
  };
  if (remote != nullptr)
    remote->run(do_free);
  else
    do_free();
  b = Block{};
}

void op_alloc(Model &m, Input &in, unsigned kind) {
  Block &b = m.blocks[in.byte() % kBlocks];
  if (b.p != nullptr)
    free_block(m, b, in.byte(), nullptr);
  std::size_t size = in.size_arg();
  errno = 0;
  switch (kind) {
  case 0:
    b.p = pantry_malloc(size);
    b.how = How::Malloc;
    break;
  case 1: {
    std::size_t n = 1 + in.byte() % 16;
    b.p = pantry_calloc(n, size / n);
    b.size = (size / n) * n;
    if (b.p != nullptr && check_bytes(b.p, b.size, 0) != b.size)
      fail("calloc block not zeroed", b.p, b.size);
    b.how = How::Calloc;
    break;
  }
  case 2: {
    std::size_t align = in.align_arg(21, true);
    bool bad = align == 0 || (align & (align - 1)) != 0;
    void *p = pantry_aligned_alloc(align, size);
    if (bad) {
      if (p != nullptr || errno != EINVAL)
        fail("aligned_alloc with a bad alignment did not give EINVAL", p, align);
      return;
    }
    b.p = p;
    b.align = align;
    b.how = How::Aligned;
    break;
  }
  default: {
    std::size_t align = in.align_arg(16, true);
    bool bad = align == 0 || (align & (align - 1)) != 0;
    void *p = pantry_alloc(pantry_layout_t{size, align});
    if (bad) {
      if (p != nullptr || errno != EINVAL)
        fail("pantry_alloc with a bad alignment did not give EINVAL", p, align);
      return;
    }
    b.p = p;
    b.align = align;
    b.how = How::Layout;
  }
  }
  if (b.p == nullptr)
    fail("allocation returned NULL", nullptr, size, static_cast<std::size_t>(errno));
  if (kind != 1)
    b.size = size;
  track_block(m, b);
}

void op_realloc(Model &m, Input &in) {
  Block &b = m.blocks[in.byte() % kBlocks];
  std::size_t size = in.size_arg();
  if (b.p == nullptr) {
    b.p = pantry_realloc(nullptr, size);
    if (b.p == nullptr)
      fail("realloc(NULL) returned NULL", nullptr, size);
    b.size = size;
    b.align = 16;
    b.how = How::Realloc;
    track_block(m, b);
    return;
  }
  if (b.how == How::Aligned || b.how == How::Layout)
    return; // realloc keeps only 16-byte alignment: not for these
  check_block(b);
  m.ranges.remove(b.p);
  void *q = pantry_realloc(b.p, size);
  if (q == nullptr)
    fail("realloc returned NULL", b.p, size);
  std::size_t keep = std::min(b.size, size);
  if (check_pattern(q, keep, b.seed) != keep)
    fail("realloc lost the contents", q, keep);
  b.p = q;
  b.size = size;
  b.align = 16;
  b.how = How::Realloc;
  track_block(m, b);
}

void op_free(Model &m, Input &in, Remote *remote) {
  Block &b = m.blocks[in.byte() % kBlocks];
  std::uint8_t how = in.byte();
  if (b.p != nullptr)
    free_block(m, b, how, remote);
}

/* The fuzzing thread stays inside an urcu-memb read-side critical section
 * for the whole input, so no grace period ends before the teardown: a
 * deferred block must not be handed out again until then (its range stays
 * in the model). pantry poisons it for AddressSanitizer while it waits, so
 * a write into it (pantry's code is instrumented too) is reported by ASan. */
void op_defer(Model &m, Input &in) {
  Block &b = m.blocks[in.byte() % kBlocks];
  if (b.p == nullptr)
    return;
  check_block(b);
  pantry_free_deferred(b.p);
  m.deferred.push_back(b);
  b = Block{};
}

void op_check(Model &m) {
  for (const Block &b : m.blocks)
    if (b.p != nullptr)
      check_block(b);
  for (const Pool &pl : m.pools)
    for (const PoolObj &o : pl.objs)
      if (check_pattern(static_cast<char *>(o.p) + 8, pl.size - 8, o.seed) != pl.size - 8)
        fail("a pool object lost its contents", o.p);
  for (const Arena &a : m.arenas)
    for (const ArenaAlloc &x : a.allocs)
      if (check_pattern(x.p, x.size, x.seed) != x.size)
        fail("an arena allocation lost its contents", x.p, x.size);
}

// Pools ---------------------------------------------------------------------------

void pool_destroy(Model &m, Pool &pl) {
  for (const PoolObj &o : pl.objs)
    m.ranges.remove(o.p);
  pantry_pool_destroy(pl.pool); // drops every live object once
  for (const PoolObj &o : pl.objs)
    expect_cell(o.cell);
  pl = Pool{};
}

void op_pool(Model &m, Input &in, Remote *remote) {
  Pool &pl = m.pools[in.byte() % kPools];
  std::uint8_t what = in.byte();
  if (pl.pool == nullptr) {
    std::size_t size = 8 + in.u16() % (what & 1 ? 600 : 20000);
    std::size_t align = in.align_arg(12, true);
    bool bad = align == 0 || (align & (align - 1)) != 0;
    pantry_pool_config_t cfg{};
    cfg.name = "fuzz";
    cfg.layout = {size, align};
    cfg.drop = pool_drop;
    errno = 0;
    pl.pool = pantry_pool_create(&cfg);
    if (bad) {
      if (pl.pool != nullptr || errno != EINVAL)
        fail("pool_create with a bad alignment did not give EINVAL", pl.pool, align);
      return;
    }
    if (pl.pool == nullptr)
      fail("pool_create returned NULL", nullptr, size, align);
    pl.size = size;
    pl.align = align;
    pantry_pool_stats_t st;
    pantry_pool_stats(pl.pool, &st);
    pl.object_size = st.object_size;
    if (st.object_size < size || st.object_size % 16 != 0 || st.object_size % align != 0)
      fail("pool object size", pl.pool, st.object_size, size);
    return;
  }
  switch (what % 8) {
  case 0:
  case 1:
  case 2: { // alloc
    if (pl.objs.size() >= kPoolObjs)
      return;
    void *p = pantry_pool_alloc(pl.pool);
    if (p == nullptr)
      fail("pool_alloc returned NULL", pl.pool);
    if ((reinterpret_cast<std::uintptr_t>(p) & (pl.align - 1)) != 0)
      fail("misaligned pool object", p, pl.align);
    m.ranges.add(p, pl.object_size, "a pool object overlaps a live range");
    PoolObj o{p, m.new_cell(), m.seed()};
    std::memcpy(p, &o.cell, sizeof o.cell);
    fill_pattern(static_cast<char *>(p) + 8, pl.size - 8, o.seed);
    pl.objs.push_back(o);
    return;
  }
  case 3:
  case 4:
  case 5: { // free, locally or from the helper thread
    if (pl.objs.empty())
      return;
    std::size_t i = in.byte() % pl.objs.size();
    PoolObj o = pl.objs[i];
    pl.objs.erase(pl.objs.begin() + static_cast<std::ptrdiff_t>(i));
    if (check_pattern(static_cast<char *>(o.p) + 8, pl.size - 8, o.seed) != pl.size - 8)
      fail("a pool object lost its contents", o.p);
    m.ranges.remove(o.p);
    pantry_pool_t *pool = pl.pool;
    if (what % 8 == 5 && remote != nullptr)
      remote->run([pool, o] { pantry_pool_free(pool, o.p); });
    else
      pantry_pool_free(pool, o.p);
    expect_cell(o.cell);
    return;
  }
  case 6: { // stats agree with the model
    pantry_pool_stats_t st;
    pantry_pool_stats(pl.pool, &st);
    if (st.live != pl.objs.size())
      fail("pool stats: live", pl.pool, st.live, pl.objs.size());
    return;
  }
  default:
    pool_destroy(m, pl);
  }
}

// Arenas ----------------------------------------------------------------------------

/* What a reset or destroy of slot `i` does to the model: its children
 * first (reset, or destroyed with it), then its own allocations. Appends the
 * drops that the reset or destroy must run to `due` (checked after it). */
void arena_forget(Model &m, unsigned i, bool destroyed, std::vector<std::uint32_t> &due) {
  for (unsigned c = 0; c < kArenas; c++)
    if (m.arenas[c].arena != nullptr && m.arenas[c].parent == static_cast<int>(i))
      arena_forget(m, c, destroyed, due);
  Arena &a = m.arenas[i];
  for (const ArenaAlloc &x : a.allocs)
    m.ranges.remove(x.p);
  a.allocs.clear();
  due.insert(due.end(), a.cells.begin(), a.cells.end());
  a.cells.clear();
  if (destroyed)
    a = Arena{};
}

/* Reset or destroy slot `i`, then check its drops (and its children's). */
void arena_end(Model &m, unsigned i, bool destroy) {
  op_check(m);
  pantry_arena_t *arena = m.arenas[i].arena;
  std::vector<std::uint32_t> due;
  arena_forget(m, i, destroy, due);
  if (destroy)
    pantry_arena_destroy(arena);
  else
    pantry_arena_reset(arena);
  for (std::uint32_t cell : due)
    expect_cell(cell);
}

void op_arena(Model &m, Input &in) {
  unsigned i = in.byte() % kArenas;
  Arena &a = m.arenas[i];
  std::uint8_t what = in.byte();
  if (a.arena == nullptr) {
    pantry_arena_config_t cfg{};
    cfg.name = "fuzz";
    unsigned parent = what % kArenas;
    if (what & 0x10 && parent != i && m.arenas[parent].arena != nullptr) {
      cfg.parent = m.arenas[parent].arena;
      a.parent = static_cast<int>(parent);
    }
    if (what & 0x20)
      cfg.chunk_size = 256 + in.u16();
    a.arena = pantry_arena_create(&cfg);
    if (a.arena == nullptr)
      fail("arena_create returned NULL", nullptr);
    return;
  }
  switch (what % 10) {
  case 0:
  case 1:
  case 2:
  case 3: { // alloc
    if (a.allocs.size() >= 256)
      return;
    std::size_t size = std::min<std::size_t>(in.size_arg(), 300 * KiB);
    std::size_t align = in.align_arg(12, true);
    bool bad = align == 0 || (align & (align - 1)) != 0;
    errno = 0;
    void *p = pantry_arena_alloc(a.arena, size, align);
    if (bad) {
      if (p != nullptr || errno != EINVAL)
        fail("arena_alloc with a bad alignment did not give EINVAL", p, align);
      return;
    }
    if (p == nullptr)
      fail("arena_alloc returned NULL", a.arena, size, align);
    if ((reinterpret_cast<std::uintptr_t>(p) & (align - 1)) != 0)
      fail("misaligned arena allocation", p, align);
    if (size == 0)
      return; // a unique pointer, but no bytes to own
    m.ranges.add(p, size, "an arena allocation overlaps a live range");
    ArenaAlloc x{p, size, m.seed()};
    fill_pattern(p, size, x.seed);
    a.allocs.push_back(x);
    return;
  }
  case 4: { // own: a drop for an object outside the arena
    std::uint32_t cell = m.new_cell();
    if (pantry_arena_own(a.arena, nullptr, drop_cell,
                         reinterpret_cast<void *>(static_cast<std::uintptr_t>(cell))) != 0)
      fail("arena_own failed", a.arena);
    a.cells.push_back(cell);
    return;
  }
  case 5: { // new: an object with a drop
    std::size_t size = 1 + in.byte();
    std::size_t align = in.align_arg(8, false);
    std::uint32_t cell = m.new_cell();
    const pantry_layout_t layout = {size, align};
    void *p = pantry_arena_new(a.arena, layout, drop_cell,
                               reinterpret_cast<void *>(static_cast<std::uintptr_t>(cell)));
    if (p == nullptr || (reinterpret_cast<std::uintptr_t>(p) & (align - 1)) != 0)
      fail("arena_new", p, size, align);
    m.ranges.add(p, size, "an arena object overlaps a live range");
    ArenaAlloc x{p, size, m.seed()};
    fill_pattern(p, size, x.seed);
    a.allocs.push_back(x);
    a.cells.push_back(cell);
    return;
  }
  case 6: { // stats agree with the model
    pantry_arena_stats_t st;
    pantry_arena_stats(a.arena, &st);
    if (st.owned != a.cells.size())
      fail("arena stats: owned", a.arena, st.owned, a.cells.size());
    return;
  }
  case 7:
  case 8:
    arena_end(m, i, false);
    return;
  default:
    arena_end(m, i, true);
  }
}

/* Recheck the drops that must have run: none ran again later. */
void check_cells(const Model &m) {
  for (std::size_t c = 0; c < m.cells.size(); c++)
    if (m.cells[c].runs != (m.cells[c].expected ? 1u : 0u))
      fail(m.cells[c].runs > 1 ? "a drop ran twice" : "a drop ran too early or never", nullptr, c,
           m.cells[c].runs);
}

/* Destroys every arena (children by their parents), counting drops at the
 * destroy that runs them. */
void destroy_arenas(Model &m) {
  for (unsigned i = 0; i < kArenas; i++) {
    if (m.arenas[i].arena != nullptr && m.arenas[i].parent == -1)
      arena_end(m, i, true);
  }
}

void teardown(Model &m) {
  op_check(m);
  for (Block &b : m.blocks)
    if (b.p != nullptr)
      free_block(m, b, 0, nullptr);
  for (Pool &pl : m.pools)
    if (pl.pool != nullptr)
      pool_destroy(m, pl);
  destroy_arenas(m);
  check_cells(m);
  for (const Block &b : m.deferred)
    m.ranges.remove(b.p);
  if (!m.ranges.empty())
    fail("live ranges left after teardown", nullptr);
  urcu_memb_read_unlock();
  if (!m.deferred.empty())
    pantry_deferred_barrier();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  static Remote *remote = new Remote; // one helper thread for the whole run
  static bool registered = (urcu_memb_register_thread(), true);
  (void)registered;
  Model m;
  g_model = &m;
  urcu_memb_read_lock(); // until teardown: see op_defer
  Input in{data, size};
  for (unsigned steps = 0; !in.done() && steps < 2000; steps++) {
    std::uint8_t op = in.byte();
    switch (op % 16) {
    case 0:
    case 1:
      op_alloc(m, in, 0);
      break;
    case 2:
      op_alloc(m, in, 1);
      break;
    case 3:
      op_alloc(m, in, 2);
      break;
    case 4:
      op_alloc(m, in, 3);
      break;
    case 5:
      op_realloc(m, in);
      break;
    case 6:
    case 7:
      op_free(m, in, nullptr);
      break;
    case 8:
      op_free(m, in, remote);
      break;
    case 9:
      if (op & 0x80)
        op_defer(m, in);
      else
        op_check(m);
      break;
    case 10:
    case 11:
    case 12:
      op_pool(m, in, (op & 0x40) ? remote : nullptr);
      break;
    default:
      op_arena(m, in);
      break;
    }
  }
  teardown(m);
  g_model = nullptr;
  return 0;
}
