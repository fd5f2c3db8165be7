// header_cxx.cpp - proves include/pantry.h compiles as C++17 with -pedantic
// -Wall -Wextra -Werror (built as an object library by tests/CMakeLists.txt;
// building it is the test), and that its declarations have C linkage.
#include <pantry.h>
#include <pantry.h> // the include guard works

#include <cstddef>
#include <type_traits>

namespace {
struct alignas(32) header_cxx_conn {
  int fd;
  double when;
};
} // namespace

// pantry_malloc and pantry_alloc carry __attribute__((malloc)), which
// decltype comparisons would drop with a warning: check them by conversion.
static void *(*const header_cxx_malloc)(std::size_t) = pantry_malloc;
static void *(*const header_cxx_alloc)(pantry_layout_t) = pantry_alloc;
static_assert(std::is_same<decltype(&pantry_dealloc), void (*)(void *, pantry_layout_t)>::value,
              "pantry_dealloc takes a pointer and a layout");
static_assert(std::is_same<decltype(&pantry_usable_size), std::size_t (*)(const void *)>::value,
              "pantry_usable_size takes a const pointer");
static_assert(std::is_standard_layout<pantry_layout_t>::value, "pantry_layout_t is plain data");

extern "C" void pantry_header_cxx_use();

extern "C" void pantry_header_cxx_use() {
  constexpr pantry_layout_t layout = PANTRY_LAYOUT_OF(header_cxx_conn);
  static_assert(layout.size == sizeof(header_cxx_conn) && layout.align == 32,
                "PANTRY_LAYOUT_OF is a constant expression in C++");
  void *p = pantry_malloc(16);
  void *q = pantry_calloc(4, 4);
  void *r = pantry_aligned_alloc(64, 100);
  void *s = pantry_alloc(layout);
  std::size_t n = pantry_usable_size(p);
  p = pantry_realloc(p, n + 1);
  pantry_free(p);
  pantry_free_sized(q, 16);
  pantry_free(r);
  pantry_dealloc(s, layout);
  static_cast<void>(PANTRY_VERSION);
  static_cast<void>(header_cxx_malloc);
  static_cast<void>(header_cxx_alloc);
}
