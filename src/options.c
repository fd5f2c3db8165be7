/* options.c - the PANTRY_* options: one table, read from the environment
 * once at process initialisation, read and changed later with
 * pantry_option_get and pantry_option_set.
 *
 * Reading the environment never allocates (getenv, a walk of `environ`,
 * number parsing by hand, messages formatted on the stack by error.c), so
 * it is safe from pn_process_init, which may run inside the first malloc of
 * the process, before main and before libc has finished starting.
 *
 * Layer: beside everything; sets the variables the other layers read
 * (pn_option_x*, pn_purge_xdelay_ns) and reports through error.c.
 * Shared state: every option value is an atomic, written relaxed (by the
 * initialising thread, then by pantry_option_set from any thread) and read
 * relaxed: a value is a setting, nothing is published with it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "internal.h"
#include "pantry.h"

pn_atomic_uintptr_t pn_option_xverbose;
pn_atomic_uintptr_t pn_option_xshow_stats;
pn_atomic_uintptr_t pn_option_xpurge_thread = 1;
static pn_atomic_uintptr_t option_xpurge_delay_ms = 10;
static pn_atomic_uintptr_t option_xleak_report;
static pn_atomic_uintptr_t option_xsecure = PANTRY_SECURE_BUILD;

typedef enum option_kind { OPTION_BOOL, OPTION_NUMBER } option_kind_t;
typedef enum option_fixed {
  OPTION_SETTABLE,
  OPTION_FIXED_AT_START,
  OPTION_FIXED_AT_BUILD
} option_fixed_t;

typedef struct option {
  const char *name;       /* the environment variable */
  const char *short_name; /* also accepted by pantry_option_set and _get, in any case */
  option_kind_t kind;
  uintptr_t max;      /* values are 0..max */
  uintptr_t fallback; /* the default */
  const char *unit;   /* for messages about numbers */
  option_fixed_t fixed;
  pn_atomic_uintptr_t *value;
} option_t;

/* The one table: README.md's table of options and the comment in
 * include/pantry.h say the same. */
static const option_t options[] = {
    {"PANTRY_VERBOSE", "verbose", OPTION_NUMBER, 2, 0, "level", OPTION_SETTABLE,
     &pn_option_xverbose},
    {"PANTRY_PURGE_DELAY_MS", "purge_delay_ms", OPTION_NUMBER, 3600000, 10, "milliseconds",
     OPTION_SETTABLE, &option_xpurge_delay_ms},
    {"PANTRY_PURGE_THREAD", "purge_thread", OPTION_BOOL, 1, 1, NULL, OPTION_SETTABLE,
     &pn_option_xpurge_thread},
    {"PANTRY_SHOW_STATS", "show_stats", OPTION_BOOL, 1, 0, NULL, OPTION_SETTABLE,
     &pn_option_xshow_stats},
    {"PANTRY_LEAK_REPORT", "leak_report", OPTION_BOOL, 1, 0, NULL, OPTION_FIXED_AT_START,
     &option_xleak_report},
    {"PANTRY_SECURE", "secure", OPTION_BOOL, 1, PANTRY_SECURE_BUILD, NULL, OPTION_FIXED_AT_BUILD,
     &option_xsecure},
};
#define OPTION_COUNT (sizeof options / sizeof options[0])

/* Variables of pantry's own scripts and tests, which share the prefix and
 * are no options of the library: never warned about. */
static const char *const option_tool_prefixes[] = {
    "PANTRY_TEST_",      "PANTRY_BENCH_",       "PANTRY_ASAN_",
    "PANTRY_TSAN_",      "PANTRY_FUZZ_",        "PANTRY_BUILD_DIR",
    "PANTRY_CMAKE_ARGS", "PANTRY_SKIP_INSTALL", "PANTRY_SETUP_ONLY_INSTALL",
    "PANTRY_MALLOC_SO",  "PANTRY_VALGRIND",
};

/* ------------------------------------------------------------------------ */
/* Parsing                                                                  */
/* ------------------------------------------------------------------------ */

/* `s` as a value of `o`: true and *out set, or false. */
static bool option_parse(const option_t *o, const char *s, uintptr_t *out) {
  if (o->kind == OPTION_BOOL) {
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
      if (strcasecmp(s, yes[i]) == 0)
        return *out = 1, true;
      if (strcasecmp(s, no[i]) == 0)
        return *out = 0, true;
    }
    return false;
  }
  if (*s == '\0')
    return false;
  uintptr_t v = 0;
  for (; *s != '\0'; s++) {
    if (*s < '0' || *s > '9')
      return false;
    v = v * 10 + (uintptr_t)(*s - '0');
    if (v > o->max)
      return false; /* also stops an overflow */
  }
  *out = v;
  return true;
}

static const option_t *option_find(const char *name) {
  if (name == NULL)
    return NULL;
  for (size_t i = 0; i < OPTION_COUNT; i++)
    if (strcasecmp(name, options[i].name) == 0 || strcasecmp(name, options[i].short_name) == 0)
      return &options[i];
  return NULL;
}

/* Store `v` into `o` and tell the layers that cache it. */
static void option_apply(const option_t *o, uintptr_t v) {
  pn_atomic_store_relaxed(o->value, v);
  if (o->value == &option_xpurge_delay_ms) {
    pn_atomic_store_relaxed(&pn_purge_xdelay_ns, v * 1000000u);
    pn_purge_delay_changed();
  } else if (o->value == &pn_option_xpurge_thread) {
    pn_purge_delay_changed(); /* the thread looks at it again */
  }
}

/* The edit distance between a and b (both at most 63 characters looked at),
 * for "did you mean". On the stack: no allocation. */
static size_t option_distance(const char *a, const char *b) {
  size_t la = strnlen(a, 63), lb = strnlen(b, 63);
  size_t row[64];
  for (size_t j = 0; j <= lb; j++)
    row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best)
        best = up + 1;
      if (row[j - 1] + 1 < best)
        best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

/* `entry` ("PANTRY_X=value") names no option: warn, with the nearest name. */
static void option_warn_unknown(const char *entry) {
  size_t len = strcspn(entry, "=");
  char name[64];
  if (len >= sizeof name)
    len = sizeof name - 1;
  memcpy(name, entry, len);
  name[len] = '\0';
  for (size_t i = 0; i < sizeof option_tool_prefixes / sizeof option_tool_prefixes[0]; i++)
    if (strncmp(name, option_tool_prefixes[i], strlen(option_tool_prefixes[i])) == 0)
      return;
  for (size_t i = 0; i < OPTION_COUNT; i++)
    if (strcmp(name, options[i].name) == 0)
      return;
  size_t best = 0, best_distance = (size_t)-1;
  for (size_t i = 0; i < OPTION_COUNT; i++) {
    size_t d = option_distance(name, options[i].name);
    if (d < best_distance)
      best = i, best_distance = d;
  }
  if (best_distance <= 4)
    pn_warning("%s: no such option (did you mean %s?); ignored", name, options[best].name);
  else
    pn_warning("%s: no such option (the options are PANTRY_VERBOSE, PANTRY_PURGE_DELAY_MS, "
               "PANTRY_PURGE_THREAD, PANTRY_SHOW_STATS, PANTRY_LEAK_REPORT, PANTRY_SECURE); "
               "ignored",
               name);
}

/* ------------------------------------------------------------------------ */
/* Process initialisation                                                   */
/* ------------------------------------------------------------------------ */

void pn_options_init(void) {
  for (size_t i = 0; i < OPTION_COUNT; i++) {
    const option_t *o = &options[i];
    const char *s = getenv(o->name);
    if (s == NULL)
      continue;
    uintptr_t v;
    if (!option_parse(o, s, &v)) {
      if (o->kind == OPTION_BOOL)
        pn_warning("%s=\"%s\": not a boolean (0, 1, true, false, yes, no, on, off); using the "
                   "default, %lu",
                   o->name, s, (unsigned long)o->fallback);
      else
        pn_warning("%s=\"%s\": not a whole number of %s from 0 to %lu; using the default, %lu",
                   o->name, s, o->unit, (unsigned long)o->max, (unsigned long)o->fallback);
      continue;
    }
    if (o->fixed == OPTION_FIXED_AT_BUILD) {
      if (v != o->fallback && v != 0)
        pn_warning("%s=%s: this library was built without secure mode (configure with "
                   "-DPANTRY_SECURE=ON for it); the option only reports it",
                   o->name, s);
      else if (v != o->fallback)
        pn_warning("%s=%s: this library was built with secure mode, which cannot be turned "
                   "off at run time",
                   o->name, s);
      continue;
    }
    option_apply(o, v);
  }
  pn_leak_tracking = pn_atomic_load_relaxed(&option_xleak_report) != 0; /* leak.c */
  extern char **environ;
  for (char **e = environ; e != NULL && *e != NULL; e++)
    if (strncmp(*e, "PANTRY_", 7) == 0)
      option_warn_unknown(*e);
  if (pn_atomic_load_relaxed(&pn_option_xverbose) != 0) {
    char line[256];
    size_t n = 0;
    for (size_t i = 0; i < OPTION_COUNT && n < sizeof line; i++) {
      int m = snprintf(line + n, sizeof line - n, "%s%s=%lu", i ? " " : "", options[i].name,
                       (unsigned long)pn_atomic_load_relaxed(options[i].value));
      if (m > 0)
        n += (size_t)m;
    }
    pn_verbose("options: %s", line);
  }
}

/* ------------------------------------------------------------------------ */
/* The public functions                                                     */
/* ------------------------------------------------------------------------ */

int pantry_option_set(const char *name, const char *value) {
  const option_t *o = option_find(name);
  uintptr_t v;
  if (o == NULL || value == NULL || !option_parse(o, value, &v))
    return EINVAL;
  if (o->fixed != OPTION_SETTABLE)
    return EPERM;
  option_apply(o, v);
  return 0;
}

long pantry_option_get(const char *name) {
  const option_t *o = option_find(name);
  if (o == NULL) {
    errno = EINVAL;
    return -1;
  }
  return (long)pn_atomic_load_relaxed(o->value);
}
