/* bench_driver.c - the command line, the clock and the JSON line shared by
 * every benchmark program in bench/ (see bench.h for the workload contract).
 *
 * It never allocates on a measured path; its own few allocations (none on
 * the heap today) would go to whatever malloc the process runs with.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Atomic uintptr_t bench_sink;

_Noreturn void bench_die(const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fputs("pantry_bench: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  abort();
}

void bench_thread_start(pthread_t *thread, void *(*fn)(void *), void *arg) {
  int err = pthread_create(thread, NULL, fn, arg);
  if (err != 0)
    bench_die("pthread_create: %s", strerror(err));
}

void bench_thread_join(pthread_t thread) {
  int err = pthread_join(thread, NULL);
  if (err != 0)
    bench_die("pthread_join: %s", strerror(err));
}

void bench_gate_wait(struct bench_run *run) {
  pthread_mutex_lock(&run->gate_lock);
  run->gate_ready++;
  pthread_cond_broadcast(&run->gate_cond);
  while (!run->gate_open)
    pthread_cond_wait(&run->gate_cond, &run->gate_lock);
  pthread_mutex_unlock(&run->gate_lock);
}

void bench_gate_open(struct bench_run *run, unsigned workers) {
  pthread_mutex_lock(&run->gate_lock);
  while (run->gate_ready < workers)
    pthread_cond_wait(&run->gate_cond, &run->gate_lock);
  run->start_ns = bench_now_ns();
  run->gate_open = true;
  pthread_cond_broadcast(&run->gate_cond);
  pthread_mutex_unlock(&run->gate_lock);

  if (run->args.ops != 0)
    return; /* --ops mode: the workers stop on their quotas */
  int64_t deadline = run->start_ns + (int64_t)(run->args.seconds * 1e9);
  struct timespec ts = {.tv_sec = deadline / 1000000000, .tv_nsec = deadline % 1000000000};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
    ;
  atomic_store_explicit(&run->xstop, true, memory_order_relaxed);
}

void bench_worker_done(struct bench_run *run, uint64_t ops) {
  int64_t now = bench_now_ns();
  atomic_fetch_add_explicit(&run->xops, ops, memory_order_relaxed);
  int64_t seen = atomic_load_explicit(&run->xend_ns, memory_order_relaxed);
  /* a max, not a sum: on failure `seen` is reloaded and compared again */
  while (seen < now && !atomic_compare_exchange_weak_explicit(
                           &run->xend_ns, &seen, now, memory_order_relaxed, memory_order_relaxed))
    ;
}

uint64_t bench_quota(const struct bench_run *run, unsigned index, unsigned parts) {
  if (run->args.ops == 0)
    return UINT64_MAX; /* --seconds mode: the stop flag ends the loop */
  uint64_t share = run->args.ops / parts;
  return share + (index < run->args.ops % parts ? 1 : 0);
}

void bench_counter(struct bench_run *run, const char *name, uint64_t value) {
  for (unsigned i = 0; i < run->counter_count; i++) {
    if (strcmp(run->counters[i].name, name) == 0) {
      run->counters[i].value = value;
      return;
    }
  }
  if (run->counter_count == BENCH_MAX_COUNTERS)
    bench_die("too many counters (raise BENCH_MAX_COUNTERS)");
  run->counters[run->counter_count].name = name;
  run->counters[run->counter_count].value = value;
  run->counter_count++;
}

void bench_note(struct bench_run *run, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(run->note, sizeof run->note, fmt, ap);
  va_end(ap);
}

/* ---- command line -------------------------------------------------------- */

/* A bad command line is the caller's mistake: exit 2, no abort. */
__attribute__((format(printf, 1, 2))) _Noreturn static void arg_die(const char *fmt, ...) {
  va_list ap;
  fputs("pantry_bench: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(2);
}

static void usage(FILE *out, const char *prog, const struct bench_workload *table, size_t count) {
  fprintf(out,
          "usage: %s <workload> [--threads N] [--seconds S | --ops N] [--seed X]\n"
          "       %s --list\n"
          "Prints one line of JSON: workload, threads, ops, seconds, mops, ns_per_op.\n"
          "  --threads N   worker threads (default 1)\n"
          "  --seconds S   time bound (default 0.5)\n"
          "  --ops N       op bound instead, total over all threads\n"
          "  --seed X      random seed (default 1)\n"
          "workloads:\n",
          prog, prog);
  for (size_t i = 0; i < count; i++)
    fprintf(out, "  %-10s %s\n", table[i].name, table[i].summary);
}

static uint64_t parse_u64(const char *opt, const char *text) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(text, &end, 0);
  if (errno != 0 || end == text || *end != '\0' || text[0] == '-')
    arg_die("%s: not a non-negative integer: '%s'", opt, text);
  return (uint64_t)v;
}

static double parse_seconds(const char *text) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (errno != 0 || end == text || *end != '\0' || !(v > 0) || v > 86400)
    arg_die("--seconds: not a positive number of seconds: '%s'", text);
  return v;
}

/* `--name value` or `--name=value`; advances *i past what it used. */
static const char *option_value(int argc, char **argv, int *i, const char *name) {
  size_t n = strlen(name);
  if (strncmp(argv[*i], name, n) != 0)
    return NULL;
  if (argv[*i][n] == '=')
    return argv[*i] + n + 1;
  if (argv[*i][n] != '\0')
    return NULL;
  if (*i + 1 >= argc)
    arg_die("%s needs a value", name);
  return argv[++*i];
}

static void parse_args(int argc, char **argv, struct bench_args *args,
                       const struct bench_workload *table, size_t count) {
  bool seconds_given = false;
  *args = (struct bench_args){.threads = 1, .seconds = 0.5, .seed = 1};
  for (int i = 1; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout, argv[0], table, count);
      exit(0);
    } else if (strcmp(argv[i], "--list") == 0) {
      for (size_t w = 0; w < count; w++)
        printf("%s\n", table[w].name);
      exit(0);
    } else if ((v = option_value(argc, argv, &i, "--threads")) != NULL) {
      uint64_t t = parse_u64("--threads", v);
      if (t < 1 || t > 1024)
        arg_die("--threads: want 1..1024, got %s", v);
      args->threads = (unsigned)t;
    } else if ((v = option_value(argc, argv, &i, "--seconds")) != NULL) {
      args->seconds = parse_seconds(v);
      seconds_given = true;
    } else if ((v = option_value(argc, argv, &i, "--ops")) != NULL) {
      args->ops = parse_u64("--ops", v);
      if (args->ops == 0)
        arg_die("--ops: want at least 1");
    } else if ((v = option_value(argc, argv, &i, "--seed")) != NULL) {
      args->seed = parse_u64("--seed", v);
    } else if (argv[i][0] == '-') {
      usage(stderr, argv[0], table, count);
      arg_die("unknown option '%s'", argv[i]);
    } else if (args->workload == NULL) {
      args->workload = argv[i];
    } else {
      arg_die("more than one workload given ('%s', '%s')", args->workload, argv[i]);
    }
  }
  if (args->workload == NULL) {
    usage(stderr, argv[0], table, count);
    exit(2);
  }
  if (seconds_given && args->ops != 0)
    arg_die("give --seconds or --ops, not both");
  if (args->ops != 0)
    args->seconds = 0;
}

/* ---- output -------------------------------------------------------------- */

static void json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      printf("\\%c", c);
    else if (c < 0x20)
      printf("\\u%04x", c);
    else
      putchar(c);
  }
  putchar('"');
}

static void report(const struct bench_run *run) {
  uint64_t ops = atomic_load_explicit(&((struct bench_run *)run)->xops, memory_order_relaxed);
  int64_t end = atomic_load_explicit(&((struct bench_run *)run)->xend_ns, memory_order_relaxed);
  double seconds = (double)(end - run->start_ns) / 1e9;
  if (end == 0 || seconds <= 0 || ops == 0)
    bench_die("%s: no ops were measured", run->args.workload);
  printf("{\"workload\":");
  json_string(run->args.workload);
  printf(",\"threads\":%u,\"ops\":%" PRIu64 ",\"seconds\":%.6f,\"mops\":%.4f,\"ns_per_op\":%.3f",
         run->threads, ops, seconds, (double)ops / 1e6 / seconds, seconds * 1e9 / (double)ops);
  printf(",\"bound\":\"%s\",\"seed\":%" PRIu64, run->args.ops ? "ops" : "seconds", run->args.seed);
  if (run->threads != run->args.threads)
    printf(",\"threads_requested\":%u", run->args.threads);
  for (unsigned i = 0; i < run->counter_count; i++)
    printf(",\"%s\":%" PRIu64, run->counters[i].name, run->counters[i].value);
  const char *preload = getenv("LD_PRELOAD");
  printf(",\"preload\":");
  json_string(preload ? preload : "");
  if (run->note[0] != '\0') {
    printf(",\"note\":");
    json_string(run->note);
  }
  printf("}\n");
  fflush(stdout);
}

int bench_main(int argc, char **argv, const struct bench_workload *table, size_t count) {
  static struct bench_run run; /* static: large, and zeroed */
  parse_args(argc, argv, &run.args, table, count);

  const struct bench_workload *w = NULL;
  for (size_t i = 0; i < count; i++)
    if (strcmp(table[i].name, run.args.workload) == 0)
      w = &table[i];
  if (w == NULL) {
    usage(stderr, argv[0], table, count);
    fprintf(stderr, "pantry_bench: unknown workload '%s'\n", run.args.workload);
    return 2;
  }

  pthread_mutex_init(&run.gate_lock, NULL);
  pthread_cond_init(&run.gate_cond, NULL);
  run.threads = run.args.threads;
  if (w->run(&run) != 0) {
    fprintf(stderr, "pantry_bench: workload '%s' failed\n", w->name);
    return 1;
  }
  report(&run);
  return 0;
}
