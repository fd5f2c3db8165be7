"""bench/server_sections.py - bench/run's "purge" and "httpd" sections and its
plots (PNG, with gnuplot). Imported by bench/run, which passes itself as `h`
for its helpers (start_bench, wait_bench, median, spread_pct, log,
repo_path, loadavg). Standard library only, like bench/run.

purge: bench_purge (a burst of N MiB freed, then the resident set sampled
    every millisecond) under each allocator's LD_PRELOAD; the RSS one and two
    purge delays after the last free, against the RSS before the burst.
httpd: examples/httpd.c loaded with wrk on loopback for a bounded time:
    pantry_httpd (a pool per connection, an arena per request) and
    pantry_httpd_malloc (malloc and free per object) under each allocator;
    requests per second, the server's CPU time per request and its peak RSS
    (VmHWM), with pantry's paired ratios to each variant.
plots: throughput against thread count per workload (the alloc section),
    RSS over time for the purge workload, server CPU per request and RSS for
    httpd.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# ---------------------------------------------------------------------------
# helpers


def find_program(h, args, name):
    """build/<name> next to pantry_bench (or as given), else build/bench/<name>."""
    dirs = []
    if getattr(args, "bench", None):
        dirs.append(os.path.dirname(os.path.abspath(args.bench)))
    dirs += [h.repo_path("build"), h.repo_path("build/bench"), h.repo_path("build/examples")]
    for d in dirs:
        cand = os.path.join(d, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return os.path.abspath(cand)
    return None


def run_json(h, cmd, preload, timeout, env=None):
    """Run cmd (LD_PRELOAD=preload); returns the dict of its last stdout line,
    with maxrss_kib, or {'error': ...}."""
    saved = dict(os.environ)
    try:
        if env:
            os.environ.update(env)
        with tempfile.TemporaryDirectory(prefix="pantry-bench-") as tmp:
            out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            status, ru = h.wait_bench(h.start_bench(cmd, preload, out_path, err_path), timeout)
            with open(out_path, errors="replace") as f:
                stdout = f.read()
            with open(err_path, errors="replace") as f:
                stderr = f.read()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if ru is None:
        return {"error": "could not wait4 the bench"}
    if status is None:
        return {"error": f"timed out after {timeout:.0f} s"}
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        return {"error": f"status {status}: {stderr.strip()[-300:]}"}
    try:
        res = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"no JSON: {stdout.strip()[-200:]!r} {stderr.strip()[-200:]!r}"}
    res["maxrss_kib"] = ru.ru_maxrss
    return res


def mib(kib):
    return None if kib is None or kib < 0 else kib / 1024.0


def fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


# ---------------------------------------------------------------------------
# purge: memory back to the OS after a burst

PURGE_CONFIGS = [  # (label, warm-up % of the burst made and freed before the start RSS)
    ("steady (a peak seen before)", 100),
    ("first peak", 0),
]


def run_purge_section(h, args, allocs, timeout):
    """Prints the purge section; returns (failed runs, timelines for the plot)."""
    bench = find_program(h, args, "bench_purge")
    print("\n## Memory back to the OS: burst and free, RSS over time\n")
    if bench is None:
        print("- skipped: no bench_purge next to pantry_bench or in build/ (build the "
              "bench_purge target)")
        return 0, {}
    mb = str(args.purge_mb)
    delay = int(os.environ.get("PANTRY_PURGE_DELAY_MS", "10") or 10)
    threads = "2"
    quiet = "300"
    print(f"- bench: {bench} (--mb {mb} --threads {threads}, {args.reps} reps, allocator order "
          "rotated each rep)")
    print(f"- workload: {threads} threads keep 1 MiB live, then together allocate {mb} MiB in "
          "blocks of 16..4096 bytes (log-uniform, every byte written) and free them all; no "
          f"allocator call for the next {quiet} ms while the RSS (/proc/self/statm) is sampled "
          "every 1 ms. 'steady': the same burst was made and freed once before the start RSS "
          "was taken (a server that has seen its peak before); 'first peak': only the 1 MiB "
          f"baseline. One purge delay = {delay} ms (pantry's PANTRY_PURGE_DELAY_MS and "
          "mimalloc's purge_delay default).", flush=True)
    results = []
    for rep in range(args.reps):
        k = rep % len(allocs)
        order = allocs[k:] + allocs[:k]
        for label, warm in PURGE_CONFIGS:
            for name, path, _ in order:
                cmd = [bench, "--mb", mb, "--threads", threads, "--quiet-ms", quiet,
                       "--sample-ms", "1", "--delay-ms", str(delay), "--warmup-pct", str(warm),
                       "--seed", str(args.seed + rep)]
                r = run_json(h, cmd, path, timeout)
                r.update({"rep": rep, "allocator": name, "config": label})
                results.append(r)
                if "error" in r:
                    h.log(f"purge rep {rep} {label} {name}: FAILED: {r['error']}")
        h.log(f"purge rep {rep + 1}/{args.reps} done")

    names = [a[0] for a in allocs]
    timelines = {}
    for label, _ in PURGE_CONFIGS:
        print(f"\n### {label}\n")
        print("| allocator | start MiB | peak MiB | right after the free | after 1 delay | "
              "after 2 delays | after 300 ms | 1 delay / start | first ≤ 1.1× start |")
        print("|---|---|---|---|---|---|---|---|---|")
        med_at = {}
        for name in names:
            ok = [r for r in results if r["allocator"] == name and r["config"] == label
                  and "error" not in r]
            if not ok:
                print(f"| {name} | FAILED | | | | | | | |")
                continue
            m = {key: h.median([r[key] for r in ok]) for key in
                 ("start_kib", "peak_kib", "after_free_kib", "at_delay_kib", "at_2delay_kib",
                  "end_kib")}
            ratios = [r["at_delay_kib"] / r["start_kib"] for r in ok if r["start_kib"] > 0]
            firsts = [r["first_within_1_1x_ms"] for r in ok]
            within = [f for f in firsts if f >= 0]
            first = (f"{h.median(within):.0f} ms ({len(within)}/{len(firsts)} runs)" if within
                     else f"never in {quiet} ms")
            med_at[name] = m["at_delay_kib"]
            print(f"| {name} | {fmt(mib(m['start_kib']))} | {fmt(mib(m['peak_kib']))} | "
                  f"{fmt(mib(m['after_free_kib']))} | {fmt(mib(m['at_delay_kib']))} | "
                  f"{fmt(mib(m['at_2delay_kib']))} | {fmt(mib(m['end_kib']))} | "
                  f"{h.median(ratios):.2f} (runs {min(ratios):.2f}..{max(ratios):.2f}) | {first} |")
            # the plot: the rep whose RSS after one delay is the median one
            best = sorted(ok, key=lambda r: r["at_delay_kib"])[len(ok) // 2]
            timelines[(label, name)] = {"samples": best["samples"], "start": best["start_kib"],
                                        "delay_ms": delay}
        p, mi = med_at.get("pantry"), med_at.get("mimalloc")
        p_ok = [r for r in results if r["allocator"] == "pantry" and r["config"] == label
                and "error" not in r]
        if p_ok:
            ratio = h.median([r["at_delay_kib"] / r["start_kib"] for r in p_ok])
            print(f"\nRequired: pantry's RSS one purge delay after the last free at most 1.1× "
                  f"the start: {ratio:.2f}× — {'met' if ratio <= 1.1 else 'NOT met'}"
                  + (f"; and no higher than mimalloc's: {mib(p):.1f} vs {mib(mi):.1f} MiB — "
                     f"{'met' if p <= mi else 'NOT met'}" if p and mi else "") + ".")
    print("\nMedians over reps of each run's samples; 'after N delays': the first sample at "
          "least N purge delays after the last free returned. The RSS is the whole process's "
          "(the bench's own arrays included).")
    if args.json:
        path = os.path.abspath(args.json)
        path = (path[:-5] if path.endswith(".json") else path) + "-purge.json"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"bench": bench, "mb": mb, "delay_ms": delay, "results": results}, f)
        h.log(f"raw purge results: {path}")
    return sum(1 for r in results if "error" in r), timelines


# ---------------------------------------------------------------------------
# httpd: the example server under wrk

INDEX_HTML_BYTES = 2048


def make_docroot(tmp):
    root = os.path.join(tmp, "www")
    os.makedirs(root)
    body = "<!doctype html><html><head><title>pantry</title></head><body>\n"
    i = 0
    while len(body) < INDEX_HTML_BYTES - 20:
        body += f"<p>line {i}: the quick brown fox jumps over the lazy dog</p>\n"
        i += 1
    body = body[:INDEX_HTML_BYTES - 15] + "</body></html>\n"
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write(body)
    return root


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, pid, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = 0
            if done:
                return False
            time.sleep(0.05)
    return False


WRK_HEADERS = ["User-Agent: wrk (pantry bench)", "Accept: text/html,application/xhtml+xml",
               "Accept-Language: en-US,en;q=0.5", "Accept-Encoding: identity",
               "Cookie: session=0123456789abcdef; theme=dark", "Cache-Control: no-cache"]


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid):
    """CPU time of process pid, all its threads (user + system), in seconds, or None.
    The process's CPU-time clock (clock_getcpuclockid's id: (~pid << 3) | 2,
    CPUCLOCK_SCHED): nanoseconds of run time; else utime + stime of
    /proc/PID/stat, in clock ticks (10 ms)."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9
    except (OSError, AttributeError, OverflowError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)
    except (OSError, IndexError, ValueError):
        return None


def proc_hwm_kib(pid):
    """VmHWM of process pid (its peak resident set), in KiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


def cpu_list(cpus):
    return ",".join(str(c) for c in cpus)


def run_httpd_once(h, server, preload, root, server_cpus, wrk_cpus, threads, wrk_args, timeout):
    """Start the server (on server_cpus, if any), load it with wrk (on wrk_cpus),
    stop it. Returns a result dict: rps, requests, the server's CPU time over
    the wrk run per request (cpu_ns_per_op), its peak RSS (VmHWM just before
    it stops, and ru_maxrss)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pantry-httpd-") as tmp:
        out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        cmd = [server, "--port", str(port), "--threads", str(threads), "--root", root]
        if server_cpus:
            cmd = ["taskset", "-c", cpu_list(server_cpus), *cmd]
        pid = h.start_bench(cmd, preload, out_path, err_path)
        res = {}
        try:
            if not wait_listening(port, pid):
                res["error"] = "the server did not listen"
            else:
                cmd = ["wrk", *wrk_args, "--latency"]
                for hd in WRK_HEADERS:
                    cmd += ["-H", hd]
                cmd.append(f"http://127.0.0.1:{port}/index.html")
                if wrk_cpus:
                    cmd = ["taskset", "-c", cpu_list(wrk_cpus), *cmd]
                cpu0 = proc_cpu_s(pid)
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
                cpu1 = proc_cpu_s(pid)
                hwm = proc_hwm_kib(pid)
                m = re.search(r"Requests/sec:\s+([\d.]+)", out)
                n = re.search(r"(\d+) requests in", out)
                if not m or not n:
                    res["error"] = f"no Requests/sec from wrk: {out[-300:]!r}"
                else:
                    res["rps"] = float(m.group(1))
                    res["requests"] = int(n.group(1))
                    if cpu0 is not None and cpu1 is not None and res["requests"] > 0:
                        res["server_cpu_s"] = cpu1 - cpu0
                        res["cpu_ns_per_op"] = (cpu1 - cpu0) * 1e9 / res["requests"]
                    if hwm is not None:
                        res["hwm_kib"] = hwm
                    for pct in ("50", "99"):
                        lm = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
                        if lm:
                            scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[lm.group(2)]
                            res[f"p{pct}_ms"] = float(lm.group(1)) * scale
                    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
                    sock = re.search(r"Socket errors:.*", out)
                    if errs:
                        res["error"] = f"{errs.group(1)} non-2xx responses"
                    if sock:
                        res["socket_errors"] = sock.group(0)
        except subprocess.TimeoutExpired:
            res["error"] = "wrk timed out"
        finally:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            status, ru = h.wait_bench(pid, 20)
        if ru is not None:
            res["maxrss_kib"] = ru.ru_maxrss
        if status is None and "error" not in res:
            res["error"] = "the server did not stop on SIGTERM"
        with open(err_path, errors="replace") as f:
            err = f.read().strip()
        if err and "error" in res:
            res["error"] += f" (server stderr: {err[-200:]})"
    return res


def httpd_placement(args, ncpu):
    """(server CPUs, wrk CPUs, server threads, wrk threads) for --httpd-pin."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(
        range(ncpu))
    if args.httpd_pin and len(cpus) >= 2 and shutil.which("taskset"):
        half = len(cpus) // 2
        server_cpus, wrk_cpus = cpus[:half], cpus[half:]
        return server_cpus, wrk_cpus, args.httpd_threads or len(server_cpus), len(wrk_cpus)
    return None, None, args.httpd_threads or ncpu, max(1, ncpu // 2)


def ratio_cell(h, xs):
    """'1.05× (0.97..1.10)': the median of paired ratios and their range."""
    if not xs:
        return "–"
    return f"{h.median(xs):.2f}× ({min(xs):.2f}..{max(xs):.2f})"


HTTPD_PANTRY = "pantry: pool + arena"


def http_get_fixed(port, n, conns):
    """Send n GET /index.html requests over `conns` keep-alive connections, one
    request in flight at a time (so the server's work per request does not
    depend on timing); True if every answer was a complete 200."""
    req = ("GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           + "".join(hd + "\r\n" for hd in WRK_HEADERS) + "\r\n").encode()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(conns)]
    bufs = [b""] * conns
    try:
        for i in range(n):
            k = i % conns
            socks[k].sendall(req)
            buf = bufs[k]
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    head = buf[:end].decode("latin-1")
                    m = re.search(r"(?im)^content-length:\s*(\d+)", head)
                    if m and len(buf) >= end + 4 + int(m.group(1)):
                        if not head.startswith("HTTP/1.1 200"):
                            return False
                        buf = buf[end + 4 + int(m.group(1)):]
                        break
                chunk = socks[k].recv(65536)
                if not chunk:
                    return False
                buf += chunk
            bufs[k] = buf
    finally:
        for sk in socks:
            sk.close()
    return True


def callgrind_ir(h, server, preload, root, n, tmp):
    """Instructions (callgrind's Ir, user space, every thread) the server runs
    from its start to its exit when it serves n requests; None on failure."""
    port = free_port()
    out = os.path.join(tmp, f"callgrind.{n}.out")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", server, "--port",
           str(port), "--threads", "1", "--root", root]
    pid = h.start_bench(cmd, preload, os.path.join(tmp, "cg-stdout"), os.path.join(tmp, "cg-err"))
    ok = False
    try:
        ok = wait_listening(port, pid, 60.0) and http_get_fixed(port, n, 8)
    except OSError:
        ok = False
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        h.wait_bench(pid, 120)
    try:
        with open(out) as f:
            for line in f:
                if line.startswith("totals:"):
                    return int(line.split()[1]) if ok else None
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_httpd_callgrind(h, variants, root, n):
    """{label: Ir per request}: (Ir serving 5n) - (Ir serving n), over 4n:
    what one more request costs, start-up and exit taken out. Deterministic:
    the same figure on a busy machine as on an idle one (user space only; the
    kernel's share, about nine tenths of this server's CPU, is not in it)."""
    figures = {}
    with tempfile.TemporaryDirectory(prefix="pantry-callgrind-") as tmp:
        for label, server, preload in variants:
            small = callgrind_ir(h, server, preload, root, n, tmp)
            large = callgrind_ir(h, server, preload, root, 5 * n, tmp)
            if small is None or large is None:
                h.log(f"httpd callgrind {label}: FAILED")
                continue
            figures[label] = (large - small) / (4 * n)
            h.log(f"httpd callgrind {label}: {figures[label]:.0f} Ir per request")
    return figures



def run_httpd_section(h, args, allocs, timeout):
    """Prints the httpd section; returns (failed runs, summary for the plot)."""
    print("\n## The example server (examples/httpd.c) under wrk\n")
    wrk = shutil.which("wrk")
    pantry_server = find_program(h, args, "pantry_httpd")
    malloc_server = find_program(h, args, "pantry_httpd_malloc")
    if wrk is None:
        print("- skipped: wrk is not installed (Debian: apt-get install wrk)")
        return 0, {}
    if pantry_server is None or malloc_server is None:
        print("- skipped: no pantry_httpd / pantry_httpd_malloc in build/ (build the examples)")
        return 0, {}
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    server_cpus, wrk_cpus, threads, wrk_threads = httpd_placement(args, ncpu)
    conns = args.httpd_connections
    secs = args.httpd_seconds
    wrk_args = ["-t", str(wrk_threads), "-c", str(conns), "-d", f"{secs}s"]
    variants = [(HTTPD_PANTRY, pantry_server, None)]
    for name, path, _ in allocs:
        variants.append((f"malloc build, {name}", malloc_server, path))
    where = (f"server pinned to CPU {cpu_list(server_cpus)}, wrk to CPU {cpu_list(wrk_cpus)} "
             "(taskset)" if server_cpus else "server and wrk not pinned: they share every CPU")
    print(f"- server: {pantry_server} and {malloc_server}, {threads} threads (one per core "
          f"it may use), loopback; GET /index.html ({INDEX_HTML_BYTES} bytes) with "
          f"{len(WRK_HEADERS) + 1} request headers; each request: an arena (pantry) or "
          "malloc'd objects (malloc build) for the parsed request line and headers, the path, "
          "a response buffer and the file's descriptor (closed by an arena drop, or by hand)")
    print(f"- load: {wrk} {' '.join(wrk_args)} (keep-alive), on the same machine; {where}; "
          f"{args.reps} reps, variant order rotated each rep", flush=True)
    print("- server CPU per request: the server process's CPU time (user + system, its "
          "CPU-time clock) over the wrk run divided by the requests wrk counted: less hurt "
          "than requests/s by other load; "
          "peak RSS: the server's VmHWM just before it is stopped", flush=True)
    with tempfile.TemporaryDirectory(prefix="pantry-www-") as tmp:
        root = make_docroot(tmp)
        results = []
        for rep in range(args.reps):
            k = rep % len(variants)
            for label, server, preload in variants[k:] + variants[:k]:
                r = run_httpd_once(h, server, preload, root, server_cpus, wrk_cpus, threads,
                                   wrk_args, secs + 60)
                r.update({"rep": rep, "variant": label})
                results.append(r)
                if "error" in r:
                    h.log(f"httpd rep {rep} {label}: FAILED: {r['error']}")
            h.log(f"httpd rep {rep + 1}/{args.reps} done")

        ir = {}
        if args.httpd_callgrind > 0:
            if shutil.which("valgrind") is None:
                h.log("httpd callgrind skipped: valgrind is not installed")
            else:
                ir = run_httpd_callgrind(h, variants, root, args.httpd_callgrind)

    def ok(label):
        return [r for r in results if r["variant"] == label and "error" not in r]

    def paired(label, key, invert=False):
        """Per rep: pantry's figure over the variant's (its inverse with invert)."""
        mine = {r["rep"]: r for r in ok(HTTPD_PANTRY) if key in r}
        out = []
        for r in ok(label):
            p = mine.get(r["rep"])
            if p is not None and key in r and r[key] > 0 and p[key] > 0:
                out.append(r[key] / p[key] if invert else p[key] / r[key])
        return out

    print("\n| server | requests/s | server CPU µs/request | p50 ms | p99 ms | peak RSS MiB | "
          "pantry's requests/s ratio | pantry's CPU/request ratio |")
    print("|---|---|---|---|---|---|---|---|")
    summary = {}
    for label, _, _ in variants:
        good = ok(label)
        if not good:
            print(f"| {label} | FAILED | | | | | | |")
            continue
        rps = [r["rps"] for r in good]
        cpu = [r["cpu_ns_per_op"] / 1e3 for r in good if "cpu_ns_per_op" in r]
        rss = h.median([r.get("hwm_kib", r["maxrss_kib"]) for r in good]) / 1024.0
        p50 = h.median([r.get("p50_ms", 0) for r in good])
        p99 = h.median([r.get("p99_ms", 0) for r in good])
        summary[label] = {"rps": h.median(rps), "rss_mib": rss,
                          "cpu_us_per_request": h.median(cpu) if cpu else None,
                          "rps_ratio": paired(label, "rps"),
                          "cpu_ratio": paired(label, "cpu_ns_per_op", invert=True)}
        mine = label == HTTPD_PANTRY
        cpu_cell = f"{h.median(cpu):.2f} ±{h.spread_pct(cpu):.0f}%" if cpu else "–"
        print(f"| {label} | {h.median(rps):.0f} ±{h.spread_pct(rps):.0f}% | {cpu_cell} | "
              f"{p50:.2f} | {p99:.2f} | {rss:.2f} | "
              f"{'–' if mine else ratio_cell(h, summary[label]['rps_ratio'])} | "
              f"{'–' if mine else ratio_cell(h, summary[label]['cpu_ratio'])} |")
    def verdict(xs):
        """met / NOT met by the median of paired ratios, and whether every
        rep agreed (the range on one side of 1) or the noise hides it."""
        if not xs:
            return "no figures"
        m = h.median(xs)
        agreed = min(xs) >= 1 or max(xs) < 1
        return (("met" if m >= 1 else "NOT met") + (", in every rep" if agreed else
                " by the median; the reps' range crosses 1"))

    p, mi = summary.get(HTTPD_PANTRY), summary.get("malloc build, mimalloc")
    if p and mi:
        print(f"\nRequired: pantry's requests/s at least the malloc build's under mimalloc: "
              f"{p['rps']:.0f} vs {mi['rps']:.0f}, paired ratio {ratio_cell(h, mi['rps_ratio'])}"
              f" — {verdict(mi['rps_ratio'])} (server CPU per request, mimalloc's over "
              f"pantry's: {ratio_cell(h, mi['cpu_ratio'])} — {verdict(mi['cpu_ratio'])}"
              + (f"; user-space instructions per request: {ir['malloc build, mimalloc']:.0f} vs "
                 f"{ir[HTTPD_PANTRY]:.0f}" if HTTPD_PANTRY in ir and "malloc build, mimalloc" in ir
                 else "") + "); with lower peak RSS: "
              f"{p['rss_mib']:.2f} vs {mi['rss_mib']:.2f} MiB — "
              f"{'met' if p['rss_mib'] < mi['rss_mib'] else 'NOT met'}.")
    if ir:
        n = args.httpd_callgrind
        print(f"\nUser-space instructions per request (callgrind's Ir; the server alone, one "
              f"thread, serving {n} and then {5 * n} requests over 8 keep-alive connections, "
              f"one request in flight; the difference over {4 * n}): deterministic, so a busy "
              "machine does not move it, but it leaves out the kernel (most of this server's "
              "CPU) and cache misses.\n")
        print("| server | Ir per request | pantry's ratio (the variant's over pantry's) |")
        print("|---|---|---|")
        mine = ir.get(HTTPD_PANTRY)
        for label, _, _ in variants:
            if label in ir:
                cell = "–" if label == HTTPD_PANTRY or not mine else f"{ir[label] / mine:.3f}×"
                print(f"| {label} | {ir[label]:.0f} | {cell} |")
    print("\nMedians over reps; ±: half the min..max range. Ratios: pantry's figure over the "
          "variant's in the same rep (the runs next to each other in time), then the median "
          "and range of those ratios; > 1 means pantry is faster (its CPU/request ratio is "
          "the variant's CPU per request over pantry's). wrk and the server share the machine, "
          "so the figures compare variants, not machines.")
    if args.json:
        path = os.path.abspath(args.json)
        path = (path[:-5] if path.endswith(".json") else path) + "-httpd.json"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"wrk": wrk_args, "threads": threads, "server_cpus": server_cpus,
                       "wrk_cpus": wrk_cpus, "results": results,
                       "callgrind_requests": args.httpd_callgrind,
                       "callgrind_ir_per_request": ir}, f, indent=1)
        h.log(f"raw httpd results: {path}")
    return sum(1 for r in results if "error" in r), summary


# ---------------------------------------------------------------------------
# plots

COLORS = {"pantry": "#d62728", "glibc": "#7f7f7f", "jemalloc": "#1f77b4",
          "tcmalloc": "#2ca02c", "mimalloc": "#ff7f0e"}


def gnuplot(h, script, outdir):
    exe = shutil.which("gnuplot")
    if exe is None:
        h.log("plots skipped: gnuplot not found (Debian: gnuplot-nox)")
        return False
    r = subprocess.run([exe], input=script, text=True, capture_output=True, cwd=outdir)
    if r.returncode != 0:
        h.log(f"gnuplot failed: {r.stderr.strip()[-500:]}")
        return False
    return True


def plot_all(h, outdir, alloc_table, allocs, timelines, httpd):
    """Write the PNGs into outdir; returns the list of files written."""
    os.makedirs(outdir, exist_ok=True)
    written = []
    names = [a[0] for a in allocs]
    # throughput against thread count, one PNG per workload
    workloads = sorted({w for (w, _) in (alloc_table or {})})
    for w in workloads:
        points = sorted(t for (ww, t) in alloc_table if ww == w)
        dat = os.path.join(outdir, f"throughput-{w}.dat")
        with open(dat, "w") as f:
            f.write("# threads " + " ".join(names) + "\n")
            for t in points:
                row = alloc_table[(w, t)]
                f.write(f"{t} " + " ".join(
                    "NaN" if row.get(n, {}).get("mops") is None else f"{row[n]['mops']:.3f}"
                    for n in names) + "\n")
        plots = ", ".join(
            f"'{os.path.basename(dat)}' using 1:{i + 2} with linespoints lw 2 pt 7 "
            f"lc rgb '{COLORS.get(n, '#000000')}' title '{n}'" for i, n in enumerate(names))
        png = f"throughput-{w}.png"
        script = (f"set terminal pngcairo size 720,440 font 'sans,10'\nset output '{png}'\n"
                  f"set title 'pantry\\_bench {w}: throughput against threads'\n"
                  "set xlabel 'threads'\nset ylabel 'Mops/s (median)'\nset key top left\n"
                  "set grid\nset yrange [0:*]\n"
                  f"set xtics ({', '.join(str(t) for t in points)})\n"
                  f"set xrange [{min(points) - 0.5}:{max(points) + 0.5}]\n"
                  f"plot {plots}\n")
        if gnuplot(h, script, outdir):
            written.append(os.path.join(outdir, png))
    # RSS over time after the burst
    for label, _ in PURGE_CONFIGS:
        series = [(n, timelines[(label, n)]) for n in names if (label, n) in timelines]
        if not series:
            continue
        slug = "steady" if label.startswith("steady") else "first"
        plots = []
        for n, tl in series:
            dat = f"purge-rss-{slug}-{n}.dat"
            with open(os.path.join(outdir, dat), "w") as f:
                f.write("# ms RSS_MiB (start: %.1f MiB)\n" % (tl["start"] / 1024.0))
                for t, kib in tl["samples"]:
                    f.write(f"{t} {kib / 1024.0:.2f}\n")
            plots.append(f"'{dat}' using 1:2 with lines lw 2 lc rgb '{COLORS.get(n, '#000')}' "
                         f"title '{n}'")
        ref = dict(series).get("pantry", series[0][1])
        start, delay = ref["start"] / 1024.0, ref["delay_ms"]
        png = f"purge-rss-{slug}.png"
        script = (f"set terminal pngcairo size 720,440 font 'sans,10'\nset output '{png}'\n"
                  f"set title 'RSS after a burst is freed ({label}); dashed: 1.1x pantry''s "
                  f"start; dotted: one purge delay'\n"
                  "set xlabel 'ms after the last free'\nset ylabel 'RSS MiB'\n"
                  "set key outside right\nset grid\nset yrange [0:*]\n"
                  f"set xrange [0:{8 * delay}]\nset arrow from {delay}, graph 0 to {delay}, "
                  "graph 1 nohead dt 3 lc rgb '#555555'\n"
                  f"plot {', '.join(plots)}, {start * 1.1:.2f} with lines dt 2 lc rgb '#d62728' "
                  "notitle\n")
        if gnuplot(h, script, outdir):
            written.append(os.path.join(outdir, png))
    # httpd: the server's CPU per request (steadier than requests/s here) and RSS
    if httpd:
        dat = os.path.join(outdir, "httpd.dat")
        with open(dat, "w") as f:
            f.write("# variant rps rss_mib cpu_us_per_request\n")
            for label, v in httpd.items():
                cpu = v.get("cpu_us_per_request")
                f.write(f"\"{label}\" {v['rps']:.0f} {v['rss_mib']:.2f} "
                        f"{'NaN' if cpu is None else f'{cpu:.3f}'}\n")
        png = "httpd.png"
        script = (f"set terminal pngcairo size 820,440 font 'sans,10'\nset output '{png}'\n"
                  "set title 'examples/httpd.c under wrk: server CPU per request (bars, lower is "
                  "better) and peak RSS'\n"
                  "set style data histograms\nset style fill solid 0.8\nset boxwidth 0.8\n"
                  "set ylabel 'server CPU µs per request (median)'\nset y2label 'peak RSS MiB'\n"
                  "set y2tics\nset ytics nomirror\nset yrange [0:*]\nset y2range [0:*]\n"
                  "set grid y\nset xtics rotate by -20 scale 0\nset key above\n"
                  "plot 'httpd.dat' using 4:xtic(1) lc rgb '#1f77b4' title 'CPU µs/request', "
                  "'' using 0:3 axes x1y2 with points pt 7 ps 1.5 lc rgb '#d62728' "
                  "title 'peak RSS'\n")
        if gnuplot(h, script, outdir):
            written.append(os.path.join(outdir, png))
    return written
