// test_options.cpp - the PANTRY_* options: read from the environment at
// start (warnings for a bad value or an unknown name), read and changed with
// pantry_option_get and pantry_option_set. Public API only; the environment
// cases run tests/leak_child.c (a small program on libpantry) in a child.
#include <catch2/catch.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <unistd.h>

#include "child_process.hpp"
#include "pantry.h"

namespace {

// Run the child program with `name=value` set; its output (stdout+stderr).
std::string run_with_env(std::initializer_list<std::pair<const char *, const char *>> env) {
  pantry_test::ChildOutcome r = pantry_test::run_child([&] {
    for (auto &kv : env)
      setenv(kv.first, kv.second, 1);
    execl(PANTRY_LEAK_CHILD, PANTRY_LEAK_CHILD, static_cast<char *>(nullptr));
    std::fprintf(stderr, "[exec failed]\n");
  });
  INFO("child " << r.describe() << ": [" << r.output << "]");
  CHECK(r.exited);
  CHECK(r.exit_code == 0);
  return r.output;
}

bool has(const std::string &s, const char *needle) { return s.find(needle) != std::string::npos; }

} // namespace

TEST_CASE("options: every option has a value - read by either of its names", "[options]") {
  for (const char *name : {"PANTRY_VERBOSE", "PANTRY_PURGE_DELAY_MS", "PANTRY_PURGE_THREAD",
                           "PANTRY_SHOW_STATS", "PANTRY_LEAK_REPORT", "PANTRY_SECURE"}) {
    INFO(name);
    long v = pantry_option_get(name);
    CHECK(v >= 0);
    CHECK(pantry_option_get(name + 7) == v); // "PURGE_DELAY_MS"
  }
  CHECK(pantry_option_get("purge_delay_ms") == pantry_option_get("PANTRY_PURGE_DELAY_MS"));
  if (std::getenv("PANTRY_PURGE_DELAY_MS") == nullptr)
    CHECK(pantry_option_get("PANTRY_PURGE_DELAY_MS") == 10);
  long secure = pantry_option_get("PANTRY_SECURE");
  CHECK((secure == 0 || secure == 1));
}

TEST_CASE("options: pantry_option_set changes a value - bad ones are refused", "[options]") {
  long delay = pantry_option_get("PANTRY_PURGE_DELAY_MS");
  CHECK(pantry_option_set("PANTRY_PURGE_DELAY_MS", "25") == 0);
  CHECK(pantry_option_get("PANTRY_PURGE_DELAY_MS") == 25);
  CHECK(pantry_option_set("purge_delay_ms", "0") == 0);
  CHECK(pantry_option_get("PANTRY_PURGE_DELAY_MS") == 0);
  CHECK(pantry_option_set("PANTRY_PURGE_DELAY_MS", "3600000") == 0);
  for (const char *bad : {"", "abc", "-1", "10ms", " 10", "3600001", "99999999999999999999999"}) {
    INFO("value '" << bad << "'");
    CHECK(pantry_option_set("PANTRY_PURGE_DELAY_MS", bad) == EINVAL);
  }
  CHECK(pantry_option_get("PANTRY_PURGE_DELAY_MS") == 3600000);
  CHECK(pantry_option_set("PANTRY_PURGE_DELAY_MS", std::to_string(delay).c_str()) == 0);

  long show = pantry_option_get("PANTRY_SHOW_STATS");
  for (auto [text, value] : {std::pair{"yes", 1}, {"OFF", 0}, {"True", 1}, {"0", 0}, {"on", 1}}) {
    INFO(text);
    CHECK(pantry_option_set("PANTRY_SHOW_STATS", text) == 0);
    CHECK(pantry_option_get("PANTRY_SHOW_STATS") == value);
  }
  CHECK(pantry_option_set("PANTRY_SHOW_STATS", "2") == EINVAL);
  CHECK(pantry_option_set("PANTRY_SHOW_STATS", "maybe") == EINVAL);
  CHECK(pantry_option_set("PANTRY_SHOW_STATS", show ? "1" : "0") == 0);

  CHECK(pantry_option_set("PANTRY_VERBOSE", "3") == EINVAL);
  CHECK(pantry_option_set("PANTRY_NO_SUCH_OPTION", "1") == EINVAL);
  CHECK(pantry_option_set(nullptr, "1") == EINVAL);
  CHECK(pantry_option_set("PANTRY_VERBOSE", nullptr) == EINVAL);
  CHECK(pantry_option_set("PANTRY_SECURE", "1") == EPERM);
  CHECK(pantry_option_set("PANTRY_LEAK_REPORT", "1") == EPERM);
  errno = 0;
  CHECK(pantry_option_get("PANTRY_NO_SUCH_OPTION") == -1);
  CHECK(errno == EINVAL);
}

TEST_CASE("options: the environment is read at start", "[options]") {
  std::string out = run_with_env({{"PANTRY_VERBOSE", "1"}, {"PANTRY_PURGE_DELAY_MS", "250"}});
  INFO(out);
  CHECK(has(out, "pantry: info: options:"));
  CHECK(has(out, "PANTRY_PURGE_DELAY_MS=250"));
  CHECK(has(out, "PANTRY_VERBOSE=1"));
  CHECK(has(out, "done"));
}

TEST_CASE("options: a bad value gets a clear message and the default", "[options]") {
  std::string out = run_with_env(
      {{"PANTRY_PURGE_DELAY_MS", "ten"}, {"PANTRY_SHOW_STATS", "maybe"}, {"PANTRY_VERBOSE", "1"}});
  INFO(out);
  CHECK(has(out, "pantry: warning: PANTRY_PURGE_DELAY_MS=\"ten\": not a whole number of "
                 "milliseconds from 0 to 3600000; using the default, 10"));
  CHECK(has(out, "pantry: warning: PANTRY_SHOW_STATS=\"maybe\": not a boolean"));
  CHECK(has(out, "PANTRY_PURGE_DELAY_MS=10"));
  CHECK(!has(out, "pantry: statistics"));
}

TEST_CASE("options: an unknown PANTRY_* name gets a warning - with the nearest name", "[options]") {
  std::string out = run_with_env({{"PANTRY_PURGE_DELAY", "5"},
                                  {"PANTRY_COMPLETELY_UNRELATED", "1"},
                                  {"PANTRY_TEST_THREADS", "4"}, // the test scripts' own
                                  {"PANTRYX", "1"}});
  INFO(out);
  CHECK(has(out, "pantry: warning: PANTRY_PURGE_DELAY: no such option (did you mean "
                 "PANTRY_PURGE_DELAY_MS?)"));
  CHECK(has(out, "pantry: warning: PANTRY_COMPLETELY_UNRELATED: no such option (the options "
                 "are PANTRY_VERBOSE"));
  CHECK(!has(out, "PANTRY_TEST_THREADS"));
  CHECK(!has(out, "PANTRYX"));
}

TEST_CASE("options: PANTRY_SECURE reports the build and cannot change it", "[options]") {
  long secure = pantry_option_get("PANTRY_SECURE");
  std::string out = run_with_env({{"PANTRY_SECURE", secure ? "0" : "1"}});
  INFO(out);
  CHECK(has(out, secure ? "built with secure mode, which cannot be turned off"
                        : "built without secure mode (configure with -DPANTRY_SECURE=ON"));
  CHECK(!has(run_with_env({{"PANTRY_SECURE", secure ? "1" : "0"}}), "warning"));
}
