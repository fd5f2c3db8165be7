// main.cpp - the Catch2 runner of pantry_tests. Test cases live in
// tests/test_<capability>.cpp; tests/CMakeLists.txt picks them up by glob.
//
// No Catch2 signal handlers (CATCH_CONFIG_NO_POSIX_SIGNALS): a crash then
// reaches the sanitizer's own handler, whose report names the faulting
// access and its stack, or the default action (ctest: SEGFAULT and the test
// name). Catch2's handler printed its message into stdout's buffer, which
// the re-raised signal then threw away: a lock-freedom test that crashed
// once under AddressSanitizer in CI left no output at all. stdout is line
// buffered for the same reason.
#define CATCH_CONFIG_RUNNER
#define CATCH_CONFIG_NO_POSIX_SIGNALS
#include <catch2/catch.hpp>

#include <cstdio>

int main(int argc, char **argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  return Catch::Session().run(argc, argv);
}
