/* error.c - diagnostics: one line naming the function, the pointer and the
 * mistake, formatted on the stack (no allocation, safe inside the
 * allocator) and handed to the program's error handler
 * (pantry_set_error_handler) or, by default, written to stderr with
 * write(2); then abort() for fatal errors, whatever the handler did.
 *
 * Layer: beside everything; calls only libc's formatting, write(2) and the
 * program's handler.
 * Shared state: error_xhandler and error_xctx (atomic: written by
 * pantry_set_error_handler, ctx first, handler last with release; read by
 * any thread reporting, handler first with acquire). error_in_handler is
 * per thread.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "pantry.h"

static pn_atomic_uintptr_t error_xhandler; /* pantry_error_fn, 0 = stderr */
static pn_atomic_uintptr_t error_xctx;
static _Thread_local bool error_in_handler; /* a report from inside the handler goes to stderr */

void pantry_set_error_handler(pantry_error_fn handler, void *ctx) {
  pn_atomic_store_relaxed(&error_xctx, (uintptr_t)ctx);
  /* Release: the ctx above before a reporter's acquire load of the handler. */
  pn_atomic_store_release(&error_xhandler, (uintptr_t)handler);
}

static void error_write(const char *prefix, const char *text, size_t n) {
  char buf[600];
  size_t p = strlen(prefix);
  if (n > sizeof buf - p - 1)
    n = sizeof buf - p - 1;
  memcpy(buf, prefix, p);
  memcpy(buf + p, text, n);
  buf[p + n] = '\n';
  size_t left = p + n + 1;
  const char *out = buf;
  while (left > 0) {
    ssize_t w = write(STDERR_FILENO, out, left);
    if (w <= 0)
      break;
    out += w;
    left -= (size_t)w;
  }
}

static void error_report(pantry_severity_t severity, const char *fmt, va_list ap) {
  static const char *const prefixes[] = {"pantry: info: ", "pantry: warning: ", "pantry: error: "};
  char text[512];
  int m = vsnprintf(text, sizeof text, fmt, ap);
  size_t n = m < 0 ? 0 : ((size_t)m < sizeof text ? (size_t)m : sizeof text - 1);
  text[n] = '\0';
  pantry_error_fn handler = (pantry_error_fn)pn_atomic_load_acquire(&error_xhandler);
  if (handler != NULL && !error_in_handler) {
    error_in_handler = true;
    handler(severity, text, (void *)pn_atomic_load_relaxed(&error_xctx));
    error_in_handler = false;
    return;
  }
  error_write(prefixes[severity], text, n);
}

void pn_fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_report(PANTRY_SEVERITY_FATAL, fmt, ap);
  va_end(ap);
  abort();
}

void pn_warning(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_report(PANTRY_SEVERITY_WARNING, fmt, ap);
  va_end(ap);
}

void pn_verbose(const char *fmt, ...) {
  if (pn_atomic_load_relaxed(&pn_option_xverbose) == 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  error_report(PANTRY_SEVERITY_INFO, fmt, ap);
  va_end(ap);
}
