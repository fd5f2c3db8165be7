// test_stress.cpp - the stress suite of issue 6: many threads (256 unless
// PANTRY_TEST_THREADS says otherwise; the machine may have 2 cores) mix
// malloc-API blocks, pool objects and arena allocations of random sizes and
// alignments; free each other's blocks; are constantly replaced by new
// threads while they hold live blocks. A shadow record (a sorted interval
// set under the test's own mutex: the test may lock, pantry may not) sees
// every live block, object and arena allocation, so two that overlap are
// caught the moment the second is handed out; every byte is checked before
// it is given back. At the end every drop ran exactly once, the pools'
// live counts are zero, and the process's RSS returns to within a stated
// bound of where it started. (fork from busy threads: test_fork.cpp.)
//
// Catch2 assertions are not thread-safe: workers count problems in atomics
// (and keep the first message); the main thread REQUIREs after join.
// PANTRY_TEST_SCALE multiplies the work. Public API only.
#include <catch2/catch.hpp>

#include <pantry.h>

#include "child_process.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <malloc.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

using namespace pantry_test;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

/* The stress suite runs the 256 threads unless PANTRY_TEST_THREADS
 * says otherwise (at least 2, at most 1024). */
unsigned stress_threads() {
  std::size_t n = env_size("PANTRY_TEST_THREADS", 256);
  return static_cast<unsigned>(std::min<std::size_t>(std::max<std::size_t>(n, 2), 1024));
}

/* Problems seen by worker threads: a count and the first few descriptions. */
struct Problems {
  std::atomic<std::size_t> count{0};
  std::mutex m;
  std::vector<std::string> first;
  void add(const std::string &what) {
    count.fetch_add(1);
    std::lock_guard<std::mutex> lock(m);
    if (first.size() < 5)
      first.push_back(what);
  }
  std::string text() {
    std::lock_guard<std::mutex> lock(m);
    std::string s = std::to_string(count.load()) + " problem(s)";
    for (const std::string &f : first)
      s += "\n  " + f;
    return s;
  }
};

std::string hex(const void *p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

/* Every live range [start, end) that pantry has handed out and the test has
 * not given back, sorted by start. A new range that meets a live one is an
 * overlap: two owners for the same bytes. */
class Shadow {
public:
  /* "" when [p, p + n) overlaps nothing live (n 0 counts as 1 byte). */
  std::string insert(const void *p, std::size_t n, const char *what) {
    std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p), b = a + std::max<std::size_t>(n, 1);
    std::lock_guard<std::mutex> lock(m_);
    auto next = live_.lower_bound(a);
    if (next != live_.end() && next->first < b)
      return overlap(what, a, b, next->first, next->second.end, next->second.what);
    if (next != live_.begin()) {
      auto prev = std::prev(next);
      if (prev->second.end > a)
        return overlap(what, a, b, prev->first, prev->second.end, prev->second.what);
    }
    live_.emplace_hint(next, a, Range{b, what});
    return "";
  }
  bool erase(const void *p) {
    std::lock_guard<std::mutex> lock(m_);
    return live_.erase(reinterpret_cast<std::uintptr_t>(p)) == 1;
  }
  std::size_t size() {
    std::lock_guard<std::mutex> lock(m_);
    return live_.size();
  }

private:
  struct Range {
    std::uintptr_t end;
    const char *what;
  };
  static std::string overlap(const char *what, std::uintptr_t a, std::uintptr_t b, std::uintptr_t c,
                             std::uintptr_t d, const char *other) {
    std::ostringstream os;
    os << "overlap: new " << what << " [" << hex(reinterpret_cast<void *>(a)) << ", +" << (b - a)
       << ") meets live " << other << " [" << hex(reinterpret_cast<void *>(c)) << ", +" << (d - c)
       << ")";
    return os.str();
  }
  std::mutex m_;
  std::map<std::uintptr_t, Range> live_;
};

/* How a block was made, so it is freed the matching way. */
enum class Kind : std::uint8_t { Malloc, Calloc, Aligned, Layout, Pool, Arena, ArenaNew, Owned };

const char *kind_name(Kind k) {
  switch (k) {
  case Kind::Malloc:
    return "malloc block";
  case Kind::Calloc:
    return "calloc block";
  case Kind::Aligned:
    return "aligned block";
  case Kind::Layout:
    return "layout block";
  case Kind::Pool:
    return "pool object";
  case Kind::Arena:
    return "arena allocation";
  case Kind::ArenaNew:
    return "arena object";
  case Kind::Owned:
    return "arena-owned block";
  }
  return "?";
}

struct Item {
  void *p;
  std::size_t size;  // bytes the pattern covers (from p)
  std::size_t align; // requested alignment
  std::uint64_t seed;
  Kind kind;
  unsigned pool;        // Kind::Pool: index of its pool
  bool resized = false; // realloc'd: freed without a size (see test_misuse.cpp, free_sized)
};

/* Ids of objects with a drop: each drop must run exactly once. */
struct Ledger {
  explicit Ledger(std::size_t capacity)
      : dropped(new std::atomic<std::uint8_t>[capacity]()), cap(capacity) {}
  std::unique_ptr<std::atomic<std::uint8_t>[]> dropped;
  std::size_t cap;
  std::atomic<std::uint64_t> next{0};
  std::atomic<std::uint64_t> drops{0};
};

struct PoolSpec {
  std::size_t size, align;
};
const PoolSpec kPools[] = {{16, 16}, {72, 8}, {200, 64}, {1000, 128}, {5000, 4096}};
constexpr unsigned kPoolCount = sizeof kPools / sizeof kPools[0];
constexpr unsigned kSharedArenas = 4;

/* An object with a drop starts with its id; the pattern covers the rest. */
std::uint64_t id_of(const void *obj) {
  std::uint64_t id;
  std::memcpy(&id, obj, sizeof id);
  return id;
}

class Stress;
Stress *g_stress; // for the drops and inits (C callbacks)

/* The shared state of one run. */
class Stress {
public:
  Stress(unsigned threads, std::size_t scale)
      : threads_(threads), scale_(scale), ledger_(1u << 24), mailboxes_(threads) {
    for (unsigned i = 0; i < kPoolCount; i++) {
      pantry_pool_config_t cfg{};
      std::string name = "stress-" + std::to_string(i);
      cfg.name = name.c_str();
      cfg.layout = {kPools[i].size, kPools[i].align};
      cfg.init = pool_init;
      cfg.drop = pool_drop;
      cfg.ctx = reinterpret_cast<void *>(static_cast<std::uintptr_t>(i));
      pools_[i] = pantry_pool_create(&cfg);
    }
    for (unsigned i = 0; i < kSharedArenas; i++) {
      pantry_arena_config_t cfg{};
      std::string name = "shared-" + std::to_string(i);
      cfg.name = name.c_str();
      shared_arenas_[i] = pantry_arena_create(&cfg);
    }
  }

  unsigned threads_;
  std::size_t scale_;
  Shadow shadow_;
  Ledger ledger_;
  Problems problems_;
  /* Blocks sent to a slot; the slot's current thread frees them. */
  struct Mailbox {
    std::mutex m;
    std::vector<Item> items;
  };
  std::vector<Mailbox> mailboxes_;
  pantry_pool_t *pools_[kPoolCount] = {};
  pantry_arena_t *shared_arenas_[kSharedArenas] = {};
  std::atomic<std::uint64_t> ops_{0}, remote_frees_{0}, adopted_{0}, lives_{0};

  /* What exited threads left: live items and private arenas (with their
   * allocations), adopted by later threads or, at the end, the main thread. */
  struct Orphan {
    pantry_arena_t *arena = nullptr;
    std::vector<Item> arena_items;
  };
  std::mutex orphans_m_;
  std::vector<Item> orphan_items_;
  std::vector<Orphan> orphan_arenas_;
  std::vector<Item> shared_arena_items_; // allocations in the shared arenas

  // ---- checks ----------------------------------------------------------

  void track(const Item &it) {
    std::string err = shadow_.insert(it.p, it.size, kind_name(it.kind));
    if (!err.empty())
      problems_.add(err);
  }
  void untrack(const Item &it, const char *where) {
    if (!shadow_.erase(it.p))
      problems_.add(std::string(where) + ": " + kind_name(it.kind) + " " + hex(it.p) +
                    " missing from the shadow record");
  }
  bool intact(const Item &it, const char *where) {
    std::size_t off =
        it.kind == Kind::Pool || it.kind == Kind::ArenaNew || it.kind == Kind::Owned ? 8 : 0;
    std::size_t bad = check_pattern(static_cast<const char *>(it.p) + off, it.size - off, it.seed);
    if (bad == it.size - off)
      return true;
    std::ostringstream os;
    os << where << ": " << kind_name(it.kind) << " " << it.p << " of " << it.size << " bytes: byte "
       << bad + off << " lost its pattern";
    problems_.add(os.str());
    return false;
  }
  void fill(const Item &it) {
    std::size_t off =
        it.kind == Kind::Pool || it.kind == Kind::ArenaNew || it.kind == Kind::Owned ? 8 : 0;
    fill_pattern(static_cast<char *>(it.p) + off, it.size - off, it.seed);
  }

  std::uint64_t new_id() {
    std::uint64_t id = ledger_.next.fetch_add(1);
    if (id >= ledger_.cap)
      problems_.add("more objects with drops than the ledger holds");
    return id;
  }
  void mark_dropped(std::uint64_t id, const char *what) {
    ledger_.drops.fetch_add(1);
    if (id >= ledger_.cap) {
      problems_.add(std::string(what) + ": drop of an object with a bad id");
      return;
    }
    if (ledger_.dropped[id].fetch_add(1) != 0)
      problems_.add(std::string(what) + ": drop ran twice for object " + std::to_string(id));
  }

  // ---- callbacks -------------------------------------------------------

  static int pool_init(void *obj, void *) {
    std::uint64_t id = g_stress->new_id();
    std::memcpy(obj, &id, sizeof id);
    return 0;
  }
  static void pool_drop(void *obj, void *ctx) {
    unsigned pool = static_cast<unsigned>(reinterpret_cast<std::uintptr_t>(ctx));
    std::uint64_t id = id_of(obj);
    Item it{obj, kPools[pool].size, kPools[pool].align, mix64(id), Kind::Pool, pool};
    g_stress->intact(it, "pool drop");
    g_stress->mark_dropped(id, "pool drop");
  }
  /* ctx: the object's size. */
  static void arena_object_drop(void *obj, void *ctx) {
    std::uint64_t id = id_of(obj);
    Item it{obj, reinterpret_cast<std::uintptr_t>(ctx), 8, mix64(id), Kind::ArenaNew, 0};
    g_stress->intact(it, "arena drop");
    g_stress->mark_dropped(id, "arena drop");
  }
  /* A pantry_malloc block owned by an arena: the drop frees it. ctx: size. */
  static void owned_block_drop(void *obj, void *ctx) {
    std::uint64_t id = id_of(obj);
    Item it{obj, reinterpret_cast<std::uintptr_t>(ctx), 16, mix64(id), Kind::Owned, 0};
    g_stress->intact(it, "owned-block drop");
    g_stress->untrack(it, "owned-block drop");
    pantry_free(obj);
    g_stress->mark_dropped(id, "owned-block drop");
  }

  // ---- freeing any item the matching way -------------------------------

  void release(const Item &it, std::uint64_t how, const char *where) {
    intact(it, where);
    untrack(it, where);
    switch (it.kind) {
    case Kind::Pool:
      pantry_pool_free(pools_[it.pool], it.p);
      return;
    case Kind::Layout:
      pantry_dealloc(it.p, pantry_layout_t{it.size, it.align});
      return;
    case Kind::Aligned:
      pantry_free(it.p);
      return;
    case Kind::Malloc:
    case Kind::Calloc:
      if (how % 3 == 0 && !it.resized)
        pantry_free_sized(it.p, it.size);
      else if (how % 7 == 1)
        pantry_free(pantry_realloc(it.p, 0)); // realloc to 0 frees, returns a unique block
      else
        pantry_free(it.p);
      return;
    default:
      problems_.add(std::string(where) + ": arena item in a free list");
    }
  }
};

/* Mostly small, some medium, a few large and huge. */
std::size_t random_size(Rng &rng) {
  std::size_t r = rng.range(0, 9999);
  if (r < 7000)
    return rng.range(0, 512);
  if (r < 9000)
    return rng.range(513, 8 * KiB);
  if (r < 9900)
    return rng.range(8 * KiB, 64 * KiB);
  if (r < 9990)
    return rng.range(64 * KiB, 512 * KiB);
  return rng.range(512 * KiB, 3 * MiB);
}

std::size_t random_align(Rng &rng) {
  std::size_t r = rng.range(0, 999);
  if (r < 900)
    return std::size_t(1) << rng.range(0, 12); // 1 .. 4096
  if (r < 995)
    return std::size_t(1) << rng.range(13, 16); // up to 64 KiB
  return std::size_t(1) << rng.range(17, 21);   // up to 2 MiB
}

/* One thread's life: a slot of the run, a generation of that slot. */
class Worker {
public:
  Worker(Stress &s, unsigned slot, std::uint64_t gen)
      : s_(s), slot_(slot), rng_(mix64((std::uint64_t(slot) << 32) ^ gen ^ 0x5eed)),
        tag_((std::uint64_t(slot) << 20) ^ (gen << 44)) {}

  void run(std::size_t ops) {
    adopt(32);
    for (std::size_t i = 0; i < ops; i++) {
      step();
      if ((i & 15) == 15)
        drain_mailbox();
    }
    drain_mailbox();
    leave();
    s_.ops_.fetch_add(ops);
    s_.lives_.fetch_add(1);
  }

private:
  static constexpr std::size_t kLiveMax = 48;
  Stress &s_;
  unsigned slot_;
  Rng rng_;
  std::uint64_t tag_, seq_ = 0;
  std::vector<Item> live_;
  pantry_arena_t *arena_ = nullptr; // this thread's private arena
  std::vector<Item> arena_items_, shared_items_;

  std::uint64_t next_seed() { return pattern_seed(tag_, seq_++); }

  void step() {
    std::size_t r = rng_.range(0, 99);
    if (r < 28)
      alloc_malloc_kind();
    else if (r < 44)
      free_one(false);
    else if (r < 54)
      free_one(true); // a cross-thread free
    else if (r < 60)
      realloc_one();
    else if (r < 72)
      alloc_pool();
    else if (r < 86)
      alloc_arena();
    else if (r < 89)
      reset_arena();
    else if (r < 92)
      adopt(4);
    else if (r < 94)
      check_all();
    else
      alloc_malloc_kind();
    if (live_.size() > kLiveMax)
      free_one(rng_.range(0, 3) == 0);
  }

  void alloc_malloc_kind() {
    std::size_t size = random_size(rng_);
    std::size_t r = rng_.range(0, 9);
    Item it{nullptr, size, 16, next_seed(), Kind::Malloc, 0};
    if (r < 5) {
      it.p = pantry_malloc(size);
    } else if (r < 6) {
      std::size_t n = rng_.range(1, 16);
      it.size = (size / n) * n;
      it.kind = Kind::Calloc;
      it.p = pantry_calloc(n, size / n);
      if (it.p != nullptr && check_bytes(it.p, it.size, 0) != it.size)
        s_.problems_.add("calloc block " + hex(it.p) + " not zeroed");
    } else if (r < 8) {
      it.align = random_align(rng_);
      it.kind = Kind::Aligned;
      it.p = pantry_aligned_alloc(it.align, size);
    } else {
      it.align = random_align(rng_);
      it.kind = Kind::Layout;
      it.p = pantry_alloc(pantry_layout_t{size, it.align});
    }
    if (it.p == nullptr) {
      s_.problems_.add(std::string(kind_name(it.kind)) + " of " + std::to_string(size) +
                       " bytes: NULL");
      return;
    }
    if ((reinterpret_cast<std::uintptr_t>(it.p) & (std::max<std::size_t>(it.align, 16) - 1)) != 0 &&
        it.kind != Kind::Malloc && it.kind != Kind::Calloc)
      s_.problems_.add(std::string(kind_name(it.kind)) + " " + hex(it.p) + " not aligned to " +
                       std::to_string(it.align));
    if ((reinterpret_cast<std::uintptr_t>(it.p) & 15) != 0)
      s_.problems_.add(std::string(kind_name(it.kind)) + " " + hex(it.p) + " not 16-aligned");
    std::size_t usable = pantry_usable_size(it.p);
    if (usable < it.size)
      s_.problems_.add("usable size " + std::to_string(usable) + " < " + std::to_string(it.size));
    // The shadow holds the usable size: no two usable ranges may meet.
    std::string err = s_.shadow_.insert(it.p, usable, kind_name(it.kind));
    if (!err.empty())
      s_.problems_.add(err);
    s_.fill(it);
    live_.push_back(it);
  }

  void alloc_pool() {
    unsigned pool = static_cast<unsigned>(rng_.range(0, kPoolCount - 1));
    void *p = pantry_pool_alloc(s_.pools_[pool]);
    if (p == nullptr) {
      s_.problems_.add("pool alloc: NULL");
      return;
    }
    if ((reinterpret_cast<std::uintptr_t>(p) & (kPools[pool].align - 1)) != 0)
      s_.problems_.add("pool object " + hex(p) + " misaligned");
    Item it{p, kPools[pool].size, kPools[pool].align, mix64(id_of(p)), Kind::Pool, pool};
    s_.track(it);
    s_.fill(it);
    live_.push_back(it);
  }

  void alloc_arena() {
    bool shared = rng_.range(0, 9) < 4;
    pantry_arena_t *arena;
    if (shared) {
      arena = s_.shared_arenas_[rng_.range(0, kSharedArenas - 1)];
      if (shared_items_.size() >= 32)
        return; // the shared arenas live until the end: keep them small
    } else {
      if (arena_ == nullptr) {
        pantry_arena_config_t cfg{};
        cfg.name = "private";
        cfg.chunk_size = rng_.range(0, 1) ? 0 : rng_.range(256, 64 * KiB);
        arena_ = pantry_arena_create(&cfg);
        if (arena_ == nullptr) {
          s_.problems_.add("arena create: NULL");
          return;
        }
      }
      arena = arena_;
    }
    std::vector<Item> &items = shared ? shared_items_ : arena_items_;
    std::size_t r = rng_.range(0, 9);
    std::size_t size = std::min<std::size_t>(random_size(rng_), shared ? 4 * KiB : 256 * KiB);
    if (r < 6) {
      std::size_t align = std::size_t(1) << rng_.range(0, 12);
      size = std::max<std::size_t>(size, 1);
      void *p = pantry_arena_alloc(arena, size, align);
      if (p == nullptr || (reinterpret_cast<std::uintptr_t>(p) & (align - 1)) != 0) {
        s_.problems_.add("arena alloc " + std::to_string(size) + "/" + std::to_string(align) +
                         ": " + (p ? "misaligned" : "NULL"));
        return;
      }
      Item it{p, size, align, next_seed(), Kind::Arena, 0};
      s_.track(it);
      s_.fill(it);
      items.push_back(it);
    } else if (r < 9) {
      size = std::max<std::size_t>(size, 16);
      std::size_t align = std::size_t(8) << rng_.range(0, 9);
      std::uint64_t id = s_.new_id();
      const pantry_layout_t layout = {size, align};
      void *p = pantry_arena_new(arena, layout, Stress::arena_object_drop,
                                 reinterpret_cast<void *>(static_cast<std::uintptr_t>(size)));
      if (p == nullptr) {
        s_.problems_.add("arena new: NULL");
        s_.mark_dropped(id, "arena new failed"); // keep the ledger whole
        return;
      }
      std::memcpy(p, &id, sizeof id);
      Item it{p, size, align, mix64(id), Kind::ArenaNew, 0};
      s_.track(it);
      s_.fill(it);
      items.push_back(it);
    } else {
      // A pantry_malloc block the arena owns: its drop frees it.
      size = std::max<std::size_t>(size, 16);
      void *p = pantry_malloc(size);
      if (p == nullptr) {
        s_.problems_.add("malloc for an owned block: NULL");
        return;
      }
      std::uint64_t id = s_.new_id();
      std::memcpy(p, &id, sizeof id);
      Item it{p, size, 16, mix64(id), Kind::Owned, 0};
      s_.track(it);
      s_.fill(it);
      if (pantry_arena_own(arena, p, Stress::owned_block_drop,
                           reinterpret_cast<void *>(static_cast<std::uintptr_t>(size))) != 0) {
        s_.problems_.add("arena own: failed");
        s_.untrack(it, "arena own failed");
        pantry_free(p);
        s_.mark_dropped(id, "arena own failed");
      }
      // Not in `items`: the drop checks and frees it.
    }
  }

  /* Check and forget the private arena's allocations, then reset it (which
   * runs its drops: owned blocks are untracked and freed there). */
  void reset_arena() {
    if (arena_ == nullptr)
      return;
    for (const Item &it : arena_items_) {
      s_.intact(it, "arena reset");
      s_.untrack(it, "arena reset");
    }
    arena_items_.clear();
    if (rng_.range(0, 3) == 0) {
      pantry_arena_destroy(arena_);
      arena_ = nullptr;
    } else {
      pantry_arena_reset(arena_);
    }
  }

  void realloc_one() {
    if (live_.empty())
      return;
    std::size_t i = rng_.range(0, live_.size() - 1);
    Item it = live_[i];
    if (it.kind != Kind::Malloc && it.kind != Kind::Calloc)
      return;
    s_.intact(it, "before realloc");
    s_.untrack(it, "realloc");
    std::size_t new_size = random_size(rng_);
    void *q = pantry_realloc(it.p, new_size);
    if (q == nullptr) {
      s_.problems_.add("realloc to " + std::to_string(new_size) + ": NULL");
      live_.erase(live_.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
    std::size_t keep = std::min(it.size, new_size);
    if (check_pattern(q, keep, it.seed) != keep)
      s_.problems_.add("realloc " + hex(it.p) + " -> " + hex(q) + " lost contents");
    it.p = q;
    it.size = new_size;
    it.kind = Kind::Malloc;
    it.resized = true;
    it.seed = next_seed();
    std::string err = s_.shadow_.insert(q, pantry_usable_size(q), "realloc'd block");
    if (!err.empty())
      s_.problems_.add(err);
    s_.fill(it);
    live_[i] = it;
  }

  void free_one(bool remote) {
    if (live_.empty())
      return;
    std::size_t i = rng_.range(0, live_.size() - 1);
    Item it = live_[i];
    live_[i] = live_.back();
    live_.pop_back();
    if (remote) {
      unsigned to = static_cast<unsigned>(rng_.range(0, s_.threads_ - 1));
      std::lock_guard<std::mutex> lock(s_.mailboxes_[to].m);
      s_.mailboxes_[to].items.push_back(it);
      return;
    }
    s_.release(it, rng_.next(), "local free");
  }

  void drain_mailbox() {
    std::vector<Item> got;
    {
      std::lock_guard<std::mutex> lock(s_.mailboxes_[slot_].m);
      got.swap(s_.mailboxes_[slot_].items);
    }
    for (const Item &it : got)
      s_.release(it, rng_.next(), "remote free");
    s_.remote_frees_.fetch_add(got.size());
  }

  /* Take over what exited threads left: free some, keep the rest. */
  void adopt(std::size_t n) {
    std::vector<Item> got;
    Stress::Orphan arena;
    {
      std::lock_guard<std::mutex> lock(s_.orphans_m_);
      while (n-- > 0 && !s_.orphan_items_.empty()) {
        got.push_back(s_.orphan_items_.back());
        s_.orphan_items_.pop_back();
      }
      if (arena_ == nullptr && !s_.orphan_arenas_.empty()) {
        arena = std::move(s_.orphan_arenas_.back());
        s_.orphan_arenas_.pop_back();
      }
    }
    for (const Item &it : got) {
      if (rng_.range(0, 1) == 0 && live_.size() < kLiveMax) {
        s_.intact(it, "adopted");
        live_.push_back(it);
      } else {
        s_.release(it, rng_.next(), "adopted free");
      }
    }
    if (arena.arena != nullptr) { // an arena made and used by an exited thread
      arena_ = arena.arena;
      arena_items_ = std::move(arena.arena_items);
    }
    s_.adopted_.fetch_add(got.size());
  }

  void check_all() {
    for (const Item &it : live_)
      s_.intact(it, "periodic check");
    for (const Item &it : arena_items_)
      s_.intact(it, "periodic check");
  }

  /* Exit with live blocks: they, and maybe the private arena, go to the
   * orphans; the shared arenas' allocations wait for the end. */
  void leave() {
    bool keep_arena = arena_ != nullptr && rng_.range(0, 1) == 0;
    if (arena_ != nullptr && !keep_arena) {
      reset_arena();
      if (arena_ != nullptr)
        pantry_arena_destroy(arena_);
      arena_ = nullptr;
    }
    std::lock_guard<std::mutex> lock(s_.orphans_m_);
    s_.orphan_items_.insert(s_.orphan_items_.end(), live_.begin(), live_.end());
    s_.shared_arena_items_.insert(s_.shared_arena_items_.end(), shared_items_.begin(),
                                  shared_items_.end());
    if (keep_arena) {
      Stress::Orphan o;
      o.arena = arena_;
      o.arena_items = std::move(arena_items_);
      s_.orphan_arenas_.push_back(std::move(o));
    }
  }
};

/* Polls (up to `timeout_s`) until the RSS is at most `limit`; returns the
 * last RSS seen. Each poll sleeps 10 ms and lets this thread's heap reach its
 * slow path once (a program that allocates, as a server does), so delayed
 * purges (PANTRY_PURGE_DELAY_MS) get their turn. */
std::size_t wait_for_rss(std::size_t limit, double timeout_s, double *waited) {
  double start = monotonic_seconds();
  std::size_t rss = rss_bytes();
  while (rss > limit && monotonic_seconds() - start < timeout_s) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, nullptr);
    for (std::size_t size : {48, 1000, 20000, 200000})
      pantry_free(pantry_malloc(size));
    malloc_trim(0);
    rss = rss_bytes();
  }
  *waited = monotonic_seconds() - start;
  return rss;
}

/* Where the RSS is: resident KiB summed by mapping length (pantry's
 * segments are 4 MiB mappings), for a failed RSS check. */
void print_rss_by_mapping_length() {
  std::FILE *f = std::fopen("/proc/self/smaps", "r");
  if (f == nullptr)
    return;
  char line[512];
  std::map<unsigned long, std::pair<unsigned long, unsigned long>> by_len; // (count, KiB)
  unsigned long len = 0;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo, hi, kb;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
      len = (hi - lo) / 1024;
    else if (std::sscanf(line, "Rss: %lu kB", &kb) == 1 && kb > 0) {
      by_len[len].first++;
      by_len[len].second += kb;
    }
  }
  std::fclose(f);
  for (const auto &e : by_len)
    if (e.second.second >= 512)
      std::printf("RSS in mappings of %lu KiB: %lu mappings, %lu KiB resident\n", e.first,
                  e.second.first, e.second.second);
}

} // namespace

TEST_CASE("stress: threads mix malloc blocks and pool objects and arena allocations with no "
          "overlap and every byte and drop and the RSS checked",
          "[stress]") {
  const unsigned threads = stress_threads();
  const std::size_t scale = test_scale();
  const unsigned generations = 4;
  const std::size_t ops_per_life = 250 * scale;

  malloc_trim(0);
  const std::size_t rss_start = rss_bytes();
  auto stress = std::make_unique<Stress>(threads, scale);
  g_stress = stress.get();
  for (unsigned i = 0; i < kPoolCount; i++)
    REQUIRE(stress->pools_[i] != nullptr);
  for (unsigned i = 0; i < kSharedArenas; i++)
    REQUIRE(stress->shared_arenas_[i] != nullptr);

  // Each slot runs `generations` threads one after another; the main thread
  // replaces a thread as soon as it exits, so threads are always being
  // created and exiting while the others run.
  const double t0 = monotonic_seconds();
  std::vector<std::thread> slots(threads);
  std::vector<unsigned> gen(threads, 0);
  std::unique_ptr<std::atomic<bool>[]> done(new std::atomic<bool>[threads]);
  auto start = [&](unsigned slot) {
    done[slot] = false;
    std::uint64_t g = gen[slot]++;
    std::size_t ops = ops_per_life / 2 + mix64(slot * 131 + g) % ops_per_life;
    slots[slot] = std::thread([&, slot, g, ops] {
      Worker(*stress, slot, g).run(ops);
      done[slot] = true;
    });
  };
  for (unsigned t = 0; t < threads; t++)
    start(t);
  for (unsigned running = threads; running > 0;) {
    bool any = false;
    for (unsigned t = 0; t < threads; t++) {
      if (!slots[t].joinable() || !done[t].load())
        continue;
      slots[t].join();
      any = true;
      if (gen[t] < generations)
        start(t);
      else
        running--;
    }
    if (!any) {
      struct timespec ts = {0, 1000 * 1000};
      nanosleep(&ts, nullptr);
    }
  }
  const double run_s = monotonic_seconds() - t0;

  // Everything left: mailboxes, orphans (items and arenas), shared arenas.
  Stress &s = *stress;
  std::size_t leftover_pool_objects = 0;
  std::vector<Item> keep_for_destroy; // objects of the last pool, dropped by destroy
  for (auto &mb : s.mailboxes_)
    for (const Item &it : mb.items)
      s.orphan_items_.push_back(it);
  for (const Item &it : s.orphan_items_) {
    if (it.kind == Kind::Pool && it.pool == kPoolCount - 1) {
      s.intact(it, "left for destroy");
      s.untrack(it, "left for destroy");
      keep_for_destroy.push_back(it);
      continue;
    }
    s.release(it, 0, "final free");
  }
  for (auto &o : s.orphan_arenas_) {
    for (const Item &it : o.arena_items) {
      s.intact(it, "orphan arena");
      s.untrack(it, "orphan arena");
    }
    pantry_arena_destroy(o.arena); // made and used by exited threads
  }
  for (const Item &it : s.shared_arena_items_) {
    s.intact(it, "shared arena");
    s.untrack(it, "shared arena");
  }
  for (pantry_arena_t *a : s.shared_arenas_)
    pantry_arena_destroy(a);
  leftover_pool_objects = keep_for_destroy.size();

  std::vector<std::size_t> live_counts;
  for (unsigned i = 0; i < kPoolCount; i++) {
    pantry_pool_stats_t st;
    pantry_pool_stats(s.pools_[i], &st);
    live_counts.push_back(st.live);
  }
  for (pantry_pool_t *p : s.pools_)
    pantry_pool_destroy(p);

  // Every object with a drop had it run exactly once.
  const std::uint64_t ids = s.ledger_.next.load();
  std::size_t never = 0, twice = 0;
  for (std::uint64_t id = 0; id < std::min<std::uint64_t>(ids, s.ledger_.cap); id++) {
    std::uint8_t n = s.ledger_.dropped[id].load();
    never += n == 0;
    twice += n > 1;
  }
  const std::size_t shadow_left = s.shadow_.size();
  const std::uint64_t ops = s.ops_.load(), remote = s.remote_frees_.load(), lives = s.lives_.load();
  INFO(s.problems_.text());
  CHECK(s.problems_.count.load() == 0);
  INFO("threads " << threads << ", thread lives " << lives << ", ops " << ops << ", remote frees "
                  << remote << ", objects with drops " << ids << ", run " << run_s << " s");
  CHECK(lives == std::uint64_t(threads) * generations);
  CHECK(never == 0);
  CHECK(twice == 0);
  CHECK(shadow_left == 0);
  for (unsigned i = 0; i + 1 < kPoolCount; i++) {
    INFO("pool " << i);
    CHECK(live_counts[i] == 0);
  }
  CHECK(live_counts[kPoolCount - 1] == leftover_pool_objects);

  // RSS: back within 32 MiB of the start once the purge delay has passed
  // (10 ms by default; a bounded poll of 10 s). The bound covers what is not
  // pantry's to give back: the resident part of the stacks glibc keeps
  // cached for new threads, and the test's own glibc heap (malloc_trim'd).
  // pantry segments are 4 MiB mappings: when the bound is passed, the RSS
  // by mapping length is printed. Sanitizer builds keep shadow memory and
  // (ASan) a quarantine, so there the RSS is only reported.
  stress.reset();
  g_stress = nullptr;
  const std::size_t bound = 32 * MiB;
  double waited = 0;
  const std::size_t rss_end =
      wait_for_rss(rss_start + bound, kUnderAsan || kUnderTsan ? 0.5 : 10.0, &waited);
  const double grew_mib = (static_cast<double>(rss_end) - static_cast<double>(rss_start)) / MiB;
  std::printf("stress: %u threads x %u lives, %" PRIu64 " ops, %" PRIu64 " remote frees, %" PRIu64
              " drops, %.1f s; RSS start %.1f MiB, end %.1f MiB "
              "(%+.1f MiB, after %.2f s)\n",
              threads, generations, ops, remote, ids, run_s, double(rss_start) / MiB,
              double(rss_end) / MiB, grew_mib, waited);
  INFO("RSS start " << rss_start / KiB << " KiB, end " << rss_end / KiB << " KiB");
  if (!kUnderAsan && !kUnderTsan && rss_end > rss_start + bound) {
    print_rss_by_mapping_length();
    // Not part of the check: how much an explicit pantry_collect gives back.
    pantry_collect(true);
    std::printf("stress: RSS after pantry_collect(true): %.1f MiB\n", double(rss_bytes()) / MiB);
  }
  if (kUnderAsan || kUnderTsan)
    WARN("RSS bound not checked under a sanitizer (shadow memory, quarantine): grew " << grew_mib
                                                                                      << " MiB");
  else
    CHECK(rss_end <= rss_start + bound);
}
