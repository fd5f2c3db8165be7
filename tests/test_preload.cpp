// test_preload.cpp - real programs on libpantry-malloc.so through LD_PRELOAD:
// each script runs twice in a temporary directory, once on the system's
// malloc and once with LD_PRELOAD=<libpantry-malloc.so>, and both runs must
// exit 0 with the same output (compared by a 64-bit hash and the length).
// Programs that are not installed are skipped with a warning.
//
// Tagged [preload]: sanitizer builds skip these (ctest -LE preload), since
// preloading an allocator into a sanitized process makes no sense.
#include <catch2/catch.hpp>

#include "test_util.hpp"

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PANTRY_MALLOC_SO
#error "PANTRY_MALLOC_SO must name libpantry-malloc.so (tests/CMakeLists.txt defines it)"
#endif

using namespace pantry_test;

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

/* Returns true (after a warning) when this test must not run here. */
bool skip_preload() {
  if (kSanitized) {
    WARN("sanitizer build: LD_PRELOAD tests skipped");
    return true;
  }
  return false;
}

std::string shell_quote(const std::string &s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

bool have(const char *program) {
  std::string cmd = std::string("command -v ") + program + " >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

/* The absolute, resolved path of the override library. */
std::string preload_library() {
  char buf[PATH_MAX];
  if (realpath(PANTRY_MALLOC_SO, buf) == nullptr)
    return PANTRY_MALLOC_SO;
  return buf;
}

/* A fresh directory under /tmp, removed with its contents at the end. */
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/pantry-preload-XXXXXX";
    const char *p = mkdtemp(tmpl);
    path = p != nullptr ? p : "";
  }
  ~TempDir() {
    if (!path.empty() && path.rfind("/tmp/pantry-preload-", 0) == 0) {
      std::string cmd = "rm -rf " + shell_quote(path);
      if (std::system(cmd.c_str()) != 0) {
      }
    }
  }
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;
};

bool write_file(const std::string &path, const std::string &text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  return static_cast<bool>(f);
}

std::string read_head(const std::string &path, std::size_t max = 2000) {
  std::ifstream f(path, std::ios::binary);
  std::string s(max, '\0');
  f.read(&s[0], static_cast<std::streamsize>(max));
  s.resize(static_cast<std::size_t>(f.gcount()));
  return s;
}

/* FNV-1a over a whole file; `bytes` gets its length. */
std::uint64_t hash_file(const std::string &path, std::size_t &bytes) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  bytes = 0;
  std::FILE *f = std::fopen(path.c_str(), "rb");
  if (f == nullptr)
    return 0;
  static char buf[1 << 16];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    for (std::size_t i = 0; i < n; i++) {
      h ^= static_cast<unsigned char>(buf[i]);
      h *= 0x100000001b3ull;
    }
    bytes += n;
  }
  std::fclose(f);
  return h;
}

struct Run {
  int exit_code = -1; // -1: did not exit normally
  std::uint64_t hash = 0;
  std::size_t bytes = 0;
  std::string stdout_head;
  std::string stderr_head;
};

/* Runs `script` with /bin/sh in <dir>/<name>/ (created), with or without the
 * preload; stdout and stderr go to files in <dir>. */
Run run_script(const std::string &dir, const std::string &name, const std::string &script,
               bool preload) {
  Run r;
  std::string work = dir + "/" + name;
  mkdir(work.c_str(), 0755);
  std::string script_path = dir + "/" + name + ".sh";
  std::string header = "set -e\n"
                       "export LC_ALL=C TZ=UTC PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1\n"
                       "export DATA_DIR=" +
                       shell_quote(dir) + "\n";
  write_file(script_path, header + script);
  std::string out = dir + "/" + name + ".out", err = dir + "/" + name + ".err";
  std::string env =
      preload ? "env LD_PRELOAD=" + shell_quote(preload_library()) + " " : "env -u LD_PRELOAD ";
  std::string cmd = "cd " + shell_quote(work) + " && " + env + "/bin/sh " +
                    shell_quote(script_path) + " >" + shell_quote(out) + " 2>" + shell_quote(err);
  int status = std::system(cmd.c_str());
  if (status != -1 && WIFEXITED(status))
    r.exit_code = WEXITSTATUS(status);
  r.hash = hash_file(out, r.bytes);
  r.stdout_head = read_head(out, 1000);
  r.stderr_head = read_head(err, 2000);
  return r;
}

/* Runs `script` without and with the preload and requires the same output. */
void require_same_output(const std::string &dir, const std::string &name,
                         const std::string &script) {
  Run plain = run_script(dir, name + "-plain", script, false);
  INFO("script " << name << ":\n" << script);
  INFO("plain run: exit " << plain.exit_code << ", " << plain.bytes
                          << " bytes; stderr: " << plain.stderr_head);
  REQUIRE(plain.exit_code == 0);
  Run pre = run_script(dir, name + "-preload", script, true);
  INFO("preloaded run: exit " << pre.exit_code << ", " << pre.bytes
                              << " bytes; stderr: " << pre.stderr_head);
  INFO("plain stdout starts: " << plain.stdout_head.substr(0, 300));
  INFO("preloaded stdout starts: " << pre.stdout_head.substr(0, 300));
  CHECK(pre.stderr_head.find("cannot be preloaded") == std::string::npos);
  REQUIRE(pre.exit_code == 0);
  REQUIRE(pre.bytes == plain.bytes);
  REQUIRE(pre.hash == plain.hash);
}

/* ~`megabytes` MB of random lines (fixed seed) in <dir>/lines.txt. */
void generate_lines(const std::string &dir, std::size_t megabytes) {
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
  std::FILE *f = std::fopen((dir + "/lines.txt").c_str(), "wb");
  REQUIRE(f != nullptr);
  Rng rng(12345);
  std::string line;
  std::size_t written = 0;
  while (written < megabytes * 1000 * 1000) {
    line.clear();
    std::size_t len = rng.range(1, 100);
    for (std::size_t i = 0; i < len; i++)
      line += alphabet[rng.range(0, sizeof(alphabet) - 2)];
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), f);
    written += line.size();
  }
  REQUIRE(std::fclose(f) == 0);
}

/* A tree of `dirs` directories with `files` files each (fixed seed) in
 * <dir>/tree. */
void generate_tree(const std::string &dir, int dirs, int files) {
  Rng rng(777);
  std::string root = dir + "/tree";
  REQUIRE(mkdir(root.c_str(), 0755) == 0);
  std::string content;
  for (int d = 0; d < dirs; d++) {
    std::string sub = root + "/dir" + std::to_string(d);
    REQUIRE(mkdir(sub.c_str(), 0755) == 0);
    for (int i = 0; i < files; i++) {
      std::size_t size = rng.range(0, 9) == 0 ? rng.range(0, 256 * 1024) : rng.range(0, 4096);
      content.resize(size);
      for (std::size_t k = 0; k < size; k++)
        content[k] = static_cast<char>("abcdefgh\n0123456789"[rng.range(0, 18)]);
      REQUIRE(write_file(sub + "/file" + std::to_string(i) + ".txt", content));
    }
  }
}

bool skip_without(const char *program) {
  if (have(program))
    return false;
  WARN(program << " is not installed: skipped");
  return true;
}

} // namespace

TEST_CASE("preload: the library is mapped and every allocation symbol resolves into it",
          "[preload]") {
  if (skip_preload())
    return;
  const std::string so = preload_library();
  INFO("override library: " << so);
  struct stat st;
  REQUIRE(stat(so.c_str(), &st) == 0);

  TempDir tmp;
  REQUIRE(!tmp.path.empty());
  Run maps = run_script(tmp.path, "maps", "cat /proc/self/maps\n", true);
  INFO("stderr: " << maps.stderr_head);
  REQUIRE(maps.exit_code == 0);
  std::ifstream f(tmp.path + "/maps.out");
  std::stringstream text;
  text << f.rdbuf();
  REQUIRE(text.str().find(so) != std::string::npos);

  if (skip_without("python3"))
    return;
  // Which object does each symbol resolve to in a preloaded process? (the
  // dynamic linker's global lookup, as every library in the process sees it)
  const std::string script = R"PY(python3 - <<'EOF'
import ctypes
names = ["malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign",
         "aligned_alloc", "memalign", "valloc", "pvalloc", "malloc_usable_size"]
libc = ctypes.CDLL(None)
maps = []
for line in open("/proc/self/maps"):
    parts = line.split()
    lo, hi = (int(x, 16) for x in parts[0].split("-"))
    maps.append((lo, hi, parts[5] if len(parts) > 5 else "?"))
for name in names:
    addr = ctypes.cast(getattr(libc, name), ctypes.c_void_p).value
    where = [m[2] for m in maps if m[0] <= addr < m[1]]
    print(name, where[0] if where else "?")
EOF
)PY";
  Run syms = run_script(tmp.path, "symbols", script, true);
  INFO("stderr: " << syms.stderr_head);
  REQUIRE(syms.exit_code == 0);
  std::ifstream g(tmp.path + "/symbols.out");
  std::string name, where;
  int count = 0;
  while (g >> name >> where) {
    INFO(name << " resolves to " << where);
    CHECK(where == so);
    count++;
  }
  REQUIRE(count == 11);
}

TEST_CASE("preload: every exported allocation function behaves like glibc's", "[preload]") {
  if (skip_preload() || skip_without("python3"))
    return;
  TempDir tmp;
  // The same script under glibc and under pantry must print the same lines.
  const std::string script = R"PY(python3 - <<'EOF'
import ctypes, ctypes.util
libc = ctypes.CDLL(None, use_errno=True)
vp, sz = ctypes.c_void_p, ctypes.c_size_t
for n, res, args in [("malloc", vp, [sz]), ("calloc", vp, [sz, sz]), ("realloc", vp, [vp, sz]),
                     ("reallocarray", vp, [vp, sz, sz]), ("aligned_alloc", vp, [sz, sz]),
                     ("memalign", vp, [sz, sz]), ("valloc", vp, [sz]), ("pvalloc", vp, [sz]),
                     ("malloc_usable_size", sz, [vp]), ("free", None, [vp]),
                     ("posix_memalign", ctypes.c_int, [ctypes.POINTER(vp), sz, sz])]:
    f = getattr(libc, n); f.restype = res; f.argtypes = args
page = 4096
def check(name, cond): print(name, "ok" if cond else "WRONG")
p = libc.malloc(100); check("malloc", p and libc.malloc_usable_size(p) >= 100)
ctypes.memset(p, 0x41, 100)
q = libc.realloc(p, 100000); check("realloc keeps", q and ctypes.string_at(q, 100) == b"A" * 100)
libc.free(q)
c = libc.calloc(1000, 10); check("calloc zero", c and ctypes.string_at(c, 10000) == bytes(10000))
libc.free(c)
check("calloc overflow", libc.calloc(2**63, 4) is None and ctypes.get_errno() == 12)
r = libc.reallocarray(None, 10, 10); check("reallocarray", r is not None)
check("reallocarray overflow", libc.reallocarray(r, 2**63, 4) is None)
libc.free(r)
for align in [8, 16, 64, 4096, 65536, 1 << 21]:
    a = libc.aligned_alloc(align, align * 3); check("aligned_alloc %d" % align, a and a % align == 0)
    libc.free(a)
    m = libc.memalign(align, 100); check("memalign %d" % align, m and m % align == 0)
    libc.free(m)
    out = vp(); rc = libc.posix_memalign(ctypes.byref(out), align, 1000)
    check("posix_memalign %d" % align, rc == 0 and out.value % align == 0)
    libc.free(out)
out = vp(); check("posix_memalign EINVAL", libc.posix_memalign(ctypes.byref(out), 24, 100) == 22)
v = libc.valloc(100); check("valloc", v and v % page == 0); libc.free(v)
pv = libc.pvalloc(100); check("pvalloc", pv and pv % page == 0 and libc.malloc_usable_size(pv) >= page); libc.free(pv)
check("malloc_usable_size(NULL)", libc.malloc_usable_size(None) == 0)
libc.free(None)
z = libc.malloc(0); check("malloc(0)", z is not None); libc.free(z)
check("malloc huge", libc.malloc(2**63) is None and ctypes.get_errno() == 12)
EOF
)PY";
  require_same_output(tmp.path, "api", script);
}

TEST_CASE("preload: sort of a generated 50 MB file", "[preload]") {
  if (skip_preload() || skip_without("sort"))
    return;
  TempDir tmp;
  generate_lines(tmp.path, 50);
  require_same_output(tmp.path, "sort", "sort \"$DATA_DIR/lines.txt\"\n");
  require_same_output(
      tmp.path, "sort-unique",
      "sort -u -r -k2 \"$DATA_DIR/lines.txt\" | uniq -c | sort -n | tail -n 1000\n");
}

TEST_CASE("preload: python3 builds and drops a large dict", "[preload]") {
  if (skip_preload() || skip_without("python3"))
    return;
  TempDir tmp;
  // PYTHONMALLOC=malloc: every object goes through malloc, not pymalloc's arenas.
  const std::string script = R"PY(PYTHONMALLOC=malloc python3 - <<'EOF'
import hashlib
h = hashlib.sha256()
for rnd in range(2):
    d = {}
    for i in range(1500000):
        d["k%d" % i] = ("v" * (i % 37)) + str(i * 7 + rnd)
    total = sum(len(k) + len(v) for k, v in d.items())
    h.update(str(total).encode())
    for k in list(d)[::997]:
        h.update(d[k].encode())
    del d
print(h.hexdigest())
EOF
)PY";
  require_same_output(tmp.path, "python-dict", script);
}

TEST_CASE("preload: tar creates and lists an archive of a generated tree", "[preload]") {
  if (skip_preload() || skip_without("tar"))
    return;
  TempDir tmp;
  generate_tree(tmp.path, 40, 40);
  const std::string script =
      "TAROPTS='--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner'\n"
      "tar $TAROPTS -C \"$DATA_DIR\" -cf tree.tar tree\n"
      "cksum < tree.tar\n"
      "tar -tvf tree.tar\n"
      "mkdir x && tar -xf tree.tar -C x && diff -r \"$DATA_DIR/tree\" x/tree && echo same\n";
  require_same_output(tmp.path, "tar", script);
  if (have("gzip"))
    require_same_output(tmp.path, "tar-gzip",
                        "tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner "
                        "-C \"$DATA_DIR\" -czf tree.tgz tree\n"
                        "tar -tzf tree.tgz | cksum\n"
                        "mkdir x && tar -xzf tree.tgz -C x && diff -r \"$DATA_DIR/tree\" x/tree "
                        "&& echo same\n");
}

TEST_CASE("preload: git init and add and commit and gc on a generated tree", "[preload]") {
  if (skip_preload() || skip_without("git"))
    return;
  TempDir tmp;
  generate_tree(tmp.path, 20, 30);
  const std::string script =
      "export HOME=\"$PWD\" GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=pantry "
      "GIT_AUTHOR_EMAIL=pantry@example.com GIT_COMMITTER_NAME=pantry "
      "GIT_COMMITTER_EMAIL=pantry@example.com GIT_AUTHOR_DATE='2000-01-01T00:00:00+0000' "
      "GIT_COMMITTER_DATE='2000-01-01T00:00:00+0000'\n"
      "cp -r \"$DATA_DIR/tree\" repo && cd repo\n"
      "git init -q .\n"
      "git add -A\n"
      "git commit -q -m initial\n"
      "git rev-parse HEAD\n"
      "for f in dir1/file1.txt dir2/file3.txt dir5/file7.txt; do echo changed >> $f; done\n"
      "git rm -q -r dir9\n"
      "git commit -q -a -m second\n"
      "git log --stat --format='%H %s'\n"
      "git -c pack.threads=2 gc -q --aggressive\n"
      "git fsck --full --no-progress\n"
      "git rev-list --all --objects | sort\n"
      "git diff --stat HEAD~1 HEAD\n";
  require_same_output(tmp.path, "git", script);
}

TEST_CASE("preload: programs that start threads", "[preload][threads]") {
  if (skip_preload())
    return;
  TempDir tmp;
  if (have("sort")) {
    generate_lines(tmp.path, 20);
    require_same_output(tmp.path, "sort-parallel",
                        "sort --parallel=4 -S 64M \"$DATA_DIR/lines.txt\" | cksum\n"
                        "sort --parallel=4 -S 1M -T . \"$DATA_DIR/lines.txt\" | cksum\n");
  } else {
    WARN("sort is not installed: skipped");
  }
  if (skip_without("python3"))
    return;
  // Producers allocate lists that consumers free on other threads (remote
  // frees), threads end while their objects live on.
  const std::string script = R"PY(PYTHONMALLOC=malloc python3 - <<'EOF'
import threading, queue, hashlib
q = queue.Queue(maxsize=1000)
results = {}
lock = threading.Lock()
def produce(i):
    for j in range(30000):
        q.put([i, j, "x" * (j % 200), list(range(j % 50))])
def consume(i):
    total = 0
    while True:
        item = q.get()
        if item is None:
            break
        total += item[1] + len(item[2]) + len(item[3])
    with lock:
        results[i] = total
def churn(i):
    d = {}
    for j in range(100000):
        d[(i, j)] = str(j) * (j % 5)
    with lock:
        results["churn%d" % i] = sum(len(v) for v in d.values())
producers = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
consumers = [threading.Thread(target=consume, args=(i,)) for i in range(4)]
churners = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
for t in producers + consumers + churners: t.start()
for t in producers: t.join()
for _ in consumers: q.put(None)
for t in consumers + churners: t.join()
print(sum(v for k, v in results.items() if isinstance(k, int)))
print(sorted((k, v) for k, v in results.items() if isinstance(k, str)))
EOF
)PY";
  require_same_output(tmp.path, "python-threads", script);
}

TEST_CASE("preload: programs that fork", "[preload][fork]") {
  if (skip_preload())
    return;
  TempDir tmp;
  // A shell pipeline: every stage is a fork and exec on pantry.
  require_same_output(tmp.path, "pipeline",
                      "seq 1 300000 | awk '{ print ($1 * 7919) % 100003, $1 }' | sort -n -k1,1 "
                      "-k2,2 | uniq -c -w3 | tail -n 50\n"
                      "for i in 1 2 3 4 5 6 7 8; do (seq 1 20000 | sort -r | head -n 3) & done; "
                      "wait\n");
  if (skip_without("python3"))
    return;
  // fork with live blocks (the child frees and allocates), fork while other
  // threads allocate, and subprocess.
  const std::string script = R"PY(PYTHONMALLOC=malloc python3 - <<'EOF'
import os, subprocess, hashlib, threading, sys
data = [str(i) * 3 for i in range(200000)]
pid = os.fork()
if pid == 0:
    s = sum(len(x) for x in data)
    extra = {i: str(i) for i in range(100000)}
    del data[::2]
    os._exit(0 if s > 0 and len(extra) == 100000 else 3)
_, st = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(st))
out = subprocess.run(["sort", "-r"], input="\n".join(data[:50000]).encode(),
                     capture_output=True, check=True).stdout
print(hashlib.sha256(out).hexdigest())
stop = False
def spin():
    while not stop:
        x = [str(i) for i in range(100)]
threads = [threading.Thread(target=spin) for _ in range(3)]
for t in threads: t.start()
codes = []
for k in range(20):
    pid = os.fork()
    if pid == 0:
        y = [str(i) * 2 for i in range(20000)]
        t = threading.Thread(target=lambda: [str(i) for i in range(10000)])
        t.start(); t.join()
        os._exit(0 if len(y) == 20000 else 4)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
stop = True
for t in threads: t.join()
print("forks", codes)
EOF
)PY";
  require_same_output(tmp.path, "python-fork", script);
}
