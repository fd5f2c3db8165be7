/* error.c - diagnostics: one line naming the function, the pointer and the
 * mistake, written to stderr with write(2) (no allocation, safe inside the
 * allocator), then abort() for fatal errors.
 *
 * Layer: beside everything; calls only libc's formatting and write(2).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static void error_write(const char *prefix, const char *fmt, va_list ap) {
  char buf[512];
  size_t n = (size_t)snprintf(buf, sizeof buf, "%s", prefix);
  int m = vsnprintf(buf + n, sizeof buf - n - 1, fmt, ap);
  if (m > 0) n += ((size_t)m < sizeof buf - n - 1) ? (size_t)m : sizeof buf - n - 2;
  buf[n++] = '\n';
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(STDERR_FILENO, p, n);
    if (w <= 0) break;
    p += w;
    n -= (size_t)w;
  }
}

void pn_fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_write("pantry: error: ", fmt, ap);
  va_end(ap);
  abort();
}

void pn_warning(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_write("pantry: warning: ", fmt, ap);
  va_end(ap);
}
