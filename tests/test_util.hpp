// test_util.hpp - helpers shared by the test files: the stress-test knobs read
// from the environment, a deterministic random generator, byte patterns that
// tell every block apart, the process's resident set size, and its threads
// as /proc shows them.
//
// Catch2 assertions are not thread-safe: worker threads use only what is here
// (no REQUIRE/CHECK) and report into atomics that the main thread asserts.
#ifndef PANTRY_TEST_UTIL_HPP
#define PANTRY_TEST_UTIL_HPP

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include <dirent.h>
#include <unistd.h>

namespace pantry_test {

/* What worker threads found wrong: a count and the first description, for
 * the main thread to assert (Catch2 is not thread-safe). */
struct Problems {
  std::atomic<std::size_t> count{0};
  std::mutex m;
  std::string first;
  void add(const std::string &what) {
    if (count.fetch_add(1) == 0) {
      std::lock_guard<std::mutex> lock(m);
      first = what;
    }
  }
  std::string text() {
    std::lock_guard<std::mutex> lock(m);
    return std::to_string(count.load()) + " problem(s); first: " + first;
  }
};

/* The value of the environment variable `name` as an unsigned number, or
 * `fallback` when it is unset, empty or not a positive number. */
inline std::size_t env_size(const char *name, std::size_t fallback) {
  const char *s = std::getenv(name);
  if (s == nullptr || *s == '\0')
    return fallback;
  char *end = nullptr;
  unsigned long long v = std::strtoull(s, &end, 10);
  if (end == s || *end != '\0' || v == 0)
    return fallback;
  return static_cast<std::size_t>(v);
}

/* PANTRY_TEST_THREADS: threads in the stress tests (default 8, at least 2). */
inline unsigned test_threads() {
  std::size_t n = env_size("PANTRY_TEST_THREADS", 8);
  if (n < 2)
    n = 2;
  if (n > 1024)
    n = 1024;
  return static_cast<unsigned>(n);
}

/* PANTRY_TEST_SCALE: multiplies the work of the stress tests (default 1,
 * sized for CI on 2 cores; 10 or more for a long local run). */
inline std::size_t test_scale() { return env_size("PANTRY_TEST_SCALE", 1); }

inline std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* splitmix64: small, fast, deterministic for a given seed. */
struct Rng {
  std::uint64_t state;
  explicit Rng(std::uint64_t seed) : state(seed) {}
  std::uint64_t next() {
    state += 0x9e3779b97f4a7c15ull;
    return mix64(state);
  }
  /* uniform in [lo, hi] */
  std::size_t range(std::size_t lo, std::size_t hi) {
    return lo + static_cast<std::size_t>(next() % (hi - lo + 1));
  }
};

/* The seed of a pattern for block `index` of thread `thread` (of stage `stage`). */
inline std::uint64_t pattern_seed(std::uint64_t thread, std::uint64_t index,
                                  std::uint64_t stage = 0) {
  return mix64((thread << 40) ^ (stage << 56) ^ index);
}

/* Byte `i` of the pattern `seed`: every 8 bytes come from one mix64, so a
 * block moved by the wrong offset, or another block's bytes, do not match. */
inline unsigned char pattern_byte(std::uint64_t seed, std::size_t i) {
  std::uint64_t w = mix64(seed ^ (static_cast<std::uint64_t>(i / 8) * 0xd6e8feb86659fd93ull));
  return static_cast<unsigned char>(w >> (8 * (i % 8)));
}

inline void fill_pattern(void *p, std::size_t n, std::uint64_t seed) {
  unsigned char *b = static_cast<unsigned char *>(p);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w = mix64(seed ^ (static_cast<std::uint64_t>(i / 8) * 0xd6e8feb86659fd93ull));
    std::memcpy(b + i, &w, 8); // little- or big-endian: check_pattern reads it back the same way
  }
  for (; i < n; i++)
    b[i] = pattern_byte(seed, i);
}

/* The index of the first byte of p[0..n) that differs from the pattern, or n. */
inline std::size_t check_pattern(const void *p, std::size_t n, std::uint64_t seed) {
  const unsigned char *b = static_cast<const unsigned char *>(p);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w = mix64(seed ^ (static_cast<std::uint64_t>(i / 8) * 0xd6e8feb86659fd93ull));
    if (std::memcmp(b + i, &w, 8) != 0) {
      for (std::size_t j = 0; j < 8; j++)
        if (b[i + j] != reinterpret_cast<const unsigned char *>(&w)[j])
          return i + j;
    }
  }
  for (; i < n; i++)
    if (b[i] != pattern_byte(seed, i))
      return i;
  return n;
}

/* The index of the first byte of p[0..n) that is not `value`, or n. */
inline std::size_t check_bytes(const void *p, std::size_t n, unsigned char value) {
  const unsigned char *b = static_cast<const unsigned char *>(p);
  for (std::size_t i = 0; i < n; i++)
    if (b[i] != value)
      return i;
  return n;
}

/* The resident set size of this process in bytes (0 if /proc is missing). */
inline std::size_t rss_bytes() {
  std::FILE *f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr)
    return 0;
  unsigned long size = 0, resident = 0;
  int got = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  if (got != 2)
    return 0;
  long page = sysconf(_SC_PAGESIZE);
  return static_cast<std::size_t>(resident) * static_cast<std::size_t>(page > 0 ? page : 4096);
}

/* The blocked-signal mask of thread `tid` of this process (SigBlk in
 * /proc), or false when the thread is gone. */
inline bool blocked_signals(long tid, unsigned long long *mask) {
  std::string path = "/proc/self/task/" + std::to_string(tid) + "/status";
  FILE *f = std::fopen(path.c_str(), "r");
  if (f == nullptr)
    return false;
  char line[256];
  bool found = false;
  while (!found && std::fgets(line, sizeof line, f) != nullptr)
    found = std::sscanf(line, "SigBlk: %llx", mask) == 1;
  std::fclose(f);
  return found;
}

inline bool blocks_signal(unsigned long long mask, int sig) { return (mask >> (sig - 1)) & 1; }

/* The kernel id of this process's thread named `name` (pantry's threads
 * name themselves first thing in their body: "pantry-purge",
 * "pantry-deferred"), or 0. */
inline long thread_named(const char *name) {
  DIR *dir = opendir("/proc/self/task");
  long tid = 0;
  if (dir == nullptr)
    return 0;
  const std::size_t len = std::strlen(name);
  while (struct dirent *e = readdir(dir)) {
    std::string comm = std::string("/proc/self/task/") + e->d_name + "/comm";
    FILE *f = std::fopen(comm.c_str(), "r");
    if (f == nullptr)
      continue;
    char buf[32] = {};
    if (std::fgets(buf, sizeof buf, f) != nullptr && std::strncmp(buf, name, len) == 0 &&
        buf[len] == '\n')
      tid = std::atol(e->d_name);
    std::fclose(f);
  }
  closedir(dir);
  return tid;
}

} // namespace pantry_test

#endif
