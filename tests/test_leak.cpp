// test_leak.cpp - PANTRY_LEAK_REPORT=1 prints, at exit, live blocks by size
// class, live pool objects by pool and arenas never destroyed.
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

namespace {
std::string run_capture(const std::string &command) {
  std::string out;
  FILE *p = popen(command.c_str(), "r");
  if (p == nullptr)
    return out;
  char buf[512];
  while (fgets(buf, sizeof buf, p) != nullptr)
    out += buf;
  pclose(p);
  return out;
}
} // namespace

TEST_CASE("leak report: live blocks - pool objects and arenas at exit", "[leak]") {
  std::string quiet = run_capture(std::string(PANTRY_LEAK_CHILD) + " 2>&1");
  CHECK(quiet.find("leak report") == std::string::npos); // off unless asked
  std::string out = run_capture(std::string("PANTRY_LEAK_REPORT=1 ") + PANTRY_LEAK_CHILD + " 2>&1");
  INFO(out);
  CHECK(out.find("leak report") != std::string::npos);
  CHECK(out.find("size class     112 bytes: 10 blocks") != std::string::npos);
  CHECK(out.find("huge blocks: 1") != std::string::npos);
  CHECK(out.find("pool \"leaky-conn\": 5 objects live") != std::string::npos);
  CHECK(out.find("arenas never destroyed: 1") != std::string::npos);
}
