// main.cpp - the Catch2 runner of pantry_tests. Test cases live in
// tests/test_<capability>.cpp; tests/CMakeLists.txt picks them up by glob.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
