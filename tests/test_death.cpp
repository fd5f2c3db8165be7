// test_death.cpp - misuse that C cannot report through a return value is
// diagnosed: pantry prints one line naming the function, the pointer and the
// mistake to stderr, then aborts (include/pantry.h, "Errors").
//
// Each mistake is made in a forked child whose stderr goes to a pipe; the
// parent checks that the child died of SIGABRT and that what it printed holds
// the function's name, the pointer as printf's %p prints it, and a word about
// the mistake. Note: this test binary uses glibc's malloc, so malloc() gives
// a pointer that pantry never handed out.
#include <catch2/catch.hpp>

#include <pantry.h>

#include "child_process.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using ChildResult = pantry_test::ChildOutcome;

/* Runs `mistake` in a forked child with stderr and stdout going to a pipe
 * (child_process.hpp). */
template <class F> ChildResult run_in_child(F mistake) { return pantry_test::run_child(mistake); }

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string pointer_text(const void *p) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

/* Words that may describe each kind of mistake (lower case). */
const std::vector<std::string> kForeign = {
    "not allocated", "not a pantry", "not from pantry", "not owned",  "never",
    "foreign",       "unknown",      "invalid",         "outside",    "not in",
    "bad pointer",   "wild",         "not pantry",      "no segment", "not a block"};
const std::vector<std::string> kDouble = {"double", "twice",  "already",       "freed",  "no block",
                                          "empty",  "unused", "not allocated", "invalid"};
const std::vector<std::string> kInterior = {"middle",    "interior",    "inside", "not the start",
                                            "start of",  "not a block", "offset", "misaligned",
                                            "unaligned", "invalid"};
const std::vector<std::string> kSize = {"size"};
const std::vector<std::string> kAlign = {"align"};

/* The child must die of SIGABRT after printing `function`, `p` (as %p) and
 * one of `words`. */
template <class F>
void require_diagnosed(F mistake, const void *p, const char *function,
                       const std::vector<std::string> &words) {
  ChildResult r = run_in_child(mistake);
  std::string ptr = pointer_text(p);
  std::string out = lower(r.output);
  INFO("child output: [" << r.output << "]");
  INFO("expected pointer " << ptr << " and function " << function);
  INFO("child " << (r.exited ? "exited with status " + std::to_string(r.exit_code)
                             : "killed by signal " + std::to_string(r.signal)));
  REQUIRE(r.signaled);
  REQUIRE(r.signal == SIGABRT);
  bool names_the_pointer = r.output.find(ptr) != std::string::npos;
  bool names_the_function = r.output.find(function) != std::string::npos;
  bool describes_the_mistake = std::any_of(words.begin(), words.end(), [&](const std::string &w) {
    return out.find(w) != std::string::npos;
  });
  CHECK(names_the_pointer);
  CHECK(names_the_function);
  CHECK(describes_the_mistake);
}

char g_static_buffer[256];

} // namespace

TEST_CASE("death: the child harness sees a correct program survive", "[death]") {
  ChildResult r = run_in_child([] {
    void *p = pantry_malloc(64);
    pantry_free(p);
  });
  INFO("child output: [" << r.output << "]");
  REQUIRE(r.exited);
  REQUIRE(r.exit_code == 0);
}

TEST_CASE("death: pantry_free of a stack address aborts", "[death][foreign]") {
  alignas(64) char stack_buffer[256] = {1};
  void *p = stack_buffer + 64;
  require_diagnosed([p] { pantry_free(p); }, p, "pantry_free", kForeign);
}

TEST_CASE("death: pantry_free of a static address aborts", "[death][foreign]") {
  void *p = g_static_buffer + 32;
  require_diagnosed([p] { pantry_free(p); }, p, "pantry_free", kForeign);
}

TEST_CASE("death: pantry_free of a glibc malloc block aborts", "[death][foreign]") {
  void *p = std::malloc(64); // glibc (or a sanitizer's) malloc: not pantry's
  REQUIRE(p != nullptr);
  require_diagnosed([p] { pantry_free(p); }, p, "pantry_free", kForeign);
  std::free(p);
}

TEST_CASE("death: pantry_usable_size and pantry_realloc of a foreign pointer abort",
          "[death][foreign]") {
  void *p = std::malloc(64);
  REQUIRE(p != nullptr);
  SECTION("pantry_usable_size") {
    require_diagnosed([p] { std::printf("%zu\n", pantry_usable_size(p)); }, p, "pantry_usable_size",
                      kForeign);
  }
  SECTION("pantry_realloc") {
    require_diagnosed([p] { std::printf("%p\n", pantry_realloc(p, 128)); }, p, "pantry_realloc",
                      kForeign);
  }
  std::free(p);
}

TEST_CASE("death: double free of the only block of its page aborts", "[death][double-free]") {
  // The page holds no blocks after the first free: always detected.
  void *p = pantry_malloc(3000);
  REQUIRE(p != nullptr);
  require_diagnosed(
      [p] {
        pantry_free(p);
        pantry_free(p);
      },
      p, "pantry_free", kDouble);
  pantry_free(p);
}

TEST_CASE("death: double free of a 64-byte block aborts", "[death][double-free]") {
  void *p = pantry_malloc(64);
  REQUIRE(p != nullptr);
  require_diagnosed(
      [p] {
        pantry_free(p);
        pantry_free(p);
      },
      p, "pantry_free", kDouble);
  pantry_free(p);
}

TEST_CASE("death: double free of a block whose page holds other live blocks aborts",
          "[death][double-free]") {
  // Release builds promise this only for pages left empty; debug builds
  // (PANTRY_DEBUG) promise full double-free detection.
  std::vector<void *> others;
  for (int i = 0; i < 16; i++)
    others.push_back(pantry_malloc(64));
  void *p = others[8];
  require_diagnosed(
      [p] {
        pantry_free(p);
        pantry_free(p);
      },
      p, "pantry_free", kDouble);
  for (void *q : others)
    pantry_free(q);
}

TEST_CASE("death: realloc of a freed block aborts", "[death][double-free]") {
  void *p = pantry_malloc(3000);
  REQUIRE(p != nullptr);
  require_diagnosed(
      [p] {
        pantry_free(p);
        std::printf("%p\n", pantry_realloc(p, 100));
      },
      p, "pantry_realloc", kDouble);
  pantry_free(p);
}

TEST_CASE("death: pantry_free of the middle of a block aborts", "[death][interior]") {
  char *p = static_cast<char *>(pantry_malloc(64));
  REQUIRE(p != nullptr);
  void *middle = p + 8;
  require_diagnosed([middle] { pantry_free(middle); }, middle, "pantry_free", kInterior);
  pantry_free(p);
}

TEST_CASE("death: pantry_free_sized with the wrong size class aborts", "[death][sized]") {
  void *p = pantry_malloc(64);
  REQUIRE(p != nullptr);
  require_diagnosed([p] { pantry_free_sized(p, 4096); }, p, "pantry_free_sized", kSize);
  pantry_free(p);
}

TEST_CASE("death: pantry_dealloc with a wrong layout aborts", "[death][layout]") {
  const pantry_layout_t layout = {64, 16};
  void *p = pantry_alloc(layout);
  REQUIRE(p != nullptr);
  SECTION("an alignment the block's address does not have") {
    std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p);
    std::size_t lowest = static_cast<std::size_t>(a & (~a + 1)); // the address's alignment
    pantry_layout_t wrong = {64, lowest * 2};
    CAPTURE(lowest);
    require_diagnosed([p, wrong] { pantry_dealloc(p, wrong); }, p, "pantry_dealloc", kAlign);
  }
  SECTION("a size of another size class") {
    pantry_layout_t wrong = {4096, 16};
    require_diagnosed([p, wrong] { pantry_dealloc(p, wrong); }, p, "pantry_dealloc", kSize);
  }
  pantry_dealloc(p, layout);
}
