// child_process.hpp - run a piece of a test in a forked child and collect how
// it ended (for test_death.cpp, test_misuse.cpp, test_oom.cpp, test_pool.cpp,
// test_stress.cpp).
//
// The child's stdout and stderr go to a pipe that the parent reads to the
// end; the parent waits at most `timeout_s` seconds, then kills the child
// (SIGKILL) and reports a timeout, so a hang is a failure and never a stuck
// suite. Before the kill, if gdb is installed, the stacks of every thread of
// the hung child are appended to its output, so that a hang seen once in CI
// says where it was. Catch2's fatal-signal handlers are reset in the child, so an abort
// there is the child's own death, not a Catch2 report.
#ifndef PANTRY_TEST_CHILD_PROCESS_HPP
#define PANTRY_TEST_CHILD_PROCESS_HPP

#include <catch2/catch.hpp>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <poll.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

namespace pantry_test {

struct ChildOutcome {
  bool started = false;
  bool signaled = false;
  int signal = 0;
  bool exited = false;
  int exit_code = 0;
  bool timed_out = false;
  std::string output; // the child's stdout and stderr

  std::string describe() const {
    if (!started)
      return "fork failed";
    if (timed_out)
      return "timed out (killed)";
    if (exited)
      return "exited with status " + std::to_string(exit_code);
    return "killed by signal " + std::to_string(signal);
  }
};

/* Appends the backtraces of every thread of process `pid` (gdb in batch
 * mode, attached; nothing if gdb is missing or cannot attach). */
inline std::string thread_stacks(pid_t pid) {
  std::string cmd = "gdb -p " + std::to_string(pid) +
                    " -batch -nx -ex 'set pagination off' -ex 'thread apply all bt 30' 2>&1";
  std::string out;
  FILE *f = popen(cmd.c_str(), "r");
  if (f == nullptr)
    return out;
  char line[1024];
  while (std::fgets(line, sizeof line, f) != nullptr)
    out += line;
  pclose(f);
  return out;
}

inline double monotonic_seconds() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

/* Runs `body` in a forked child; the child exits with status 0 when `body`
 * returns. */
template <class F> ChildOutcome run_child(F body, double timeout_s = 120.0) {
  ChildOutcome result;
  int fds[2];
  if (pipe(fds) != 0)
    return result;
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return result;
  }
  if (pid == 0) {
    for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE})
      std::signal(sig, SIG_DFL);
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    dup2(fds[1], STDOUT_FILENO);
    close(fds[1]);
    body();
    std::fflush(nullptr);
    _exit(0);
  }
  result.started = true;
  close(fds[1]);
  const double deadline = monotonic_seconds() + timeout_s;
  char buf[4096];
  for (;;) {
    double left = deadline - monotonic_seconds();
    if (left <= 0) {
      result.timed_out = true;
      result.output += "\n[the child hung; its threads' stacks follow]\n" + thread_stacks(pid);
      kill(pid, SIGKILL);
      break;
    }
    struct pollfd pfd = {fds[0], POLLIN, 0};
    int ready = poll(&pfd, 1, static_cast<int>(left * 1000) + 1);
    if (ready < 0 && errno == EINTR)
      continue;
    if (ready <= 0)
      continue; // the deadline check above ends the wait
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n > 0)
      result.output.append(buf, static_cast<std::size_t>(n));
    else if (n == 0 || errno != EINTR)
      break;
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.signaled = WIFSIGNALED(status);
  result.signal = result.signaled ? WTERMSIG(status) : 0;
  result.exited = WIFEXITED(status);
  result.exit_code = result.exited ? WEXITSTATUS(status) : 0;
  return result;
}

/* Threads that have entered their body. A test that forks while other
 * threads run waits (wait_for) until every one of them has started before
 * its first fork. A thread's start runs the sanitizer's own code, which
 * under AddressSanitizer allocates from the sanitizer's allocator
 * (pthread_getattr_np's buffers), and AddressSanitizer before LLVM 18 does
 * not lock that allocator around fork: a fork at that instant leaves the
 * child a lock held for good, and the child's next thread start (or any
 * allocation of that size class) hangs. Seen in CI and again here: a fork
 * child with every thread stuck in the sanitizer's GetFromAllocator; under
 * gdb, at the first fork, a busy thread of the test still inside the
 * sanitizer's ThreadStart, in calloc. That is the test's race, not
 * pantry's: pantry's own threads are parked by its fork handlers. */
class StartedThreads {
public:
  void started() { count_.fetch_add(1); }
  void wait_for(std::size_t threads) const {
    while (count_.load() < threads)
      std::this_thread::yield();
  }

private:
  std::atomic<std::size_t> count_{0};
};

/* Which sanitizer this test binary (and so the library) was built with. */
#if defined(__SANITIZE_THREAD__)
#define PANTRY_TEST_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PANTRY_TEST_UNDER_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define PANTRY_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PANTRY_TEST_UNDER_ASAN 1
#endif
#endif

#ifdef PANTRY_TEST_UNDER_TSAN
constexpr bool kUnderTsan = true;
#else
constexpr bool kUnderTsan = false;
#endif
#ifdef PANTRY_TEST_UNDER_ASAN
constexpr bool kUnderAsan = true;
#else
constexpr bool kUnderAsan = false;
#endif

/* Whether a forked child of this (multi-threaded) process may start threads:
 * ThreadSanitizer kills such a child unless TSAN_OPTIONS has
 * die_after_fork=0 (scripts/test.sh sets it: liburcu's fork handlers
 * restart its call_rcu thread in every child of a process that has one). */
inline bool children_may_start_threads() {
  if (!kUnderTsan)
    return true;
  const char *opts = std::getenv("TSAN_OPTIONS");
  return opts != nullptr && std::strstr(opts, "die_after_fork=0") != nullptr;
}

/* Whether libpantry is a debug build (PANTRY_DEBUG): tests/CMakeLists.txt
 * passes PANTRY_TEST_LIBRARY_DEBUG from the same CMake option. */
#ifndef PANTRY_TEST_LIBRARY_DEBUG
#define PANTRY_TEST_LIBRARY_DEBUG 0
#endif
constexpr bool kLibraryDebug = PANTRY_TEST_LIBRARY_DEBUG != 0;

/* Run `mistake` in a forked child, which must die of SIGABRT having printed
 * each of `needles` (Catch2 assertions, in the parent). */
template <class F> void require_aborts_with(F mistake, const std::vector<std::string> &needles) {
  ChildOutcome r = run_child(
      [&] {
        mistake();
        std::fprintf(stderr, "[child survived the mistake]\n");
      },
      60);
  INFO("child output: [" << r.output << "]");
  INFO("child " << r.describe());
  REQUIRE(r.signaled);
  REQUIRE(r.signal == SIGABRT);
  for (const std::string &n : needles) {
    INFO("expected: " << n);
    CHECK(r.output.find(n) != std::string::npos);
  }
}

} // namespace pantry_test

#endif
