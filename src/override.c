/* override.c - malloc, free and the rest of the C allocation API, for
 * libpantry-malloc.so (LD_PRELOAD, or linked in). Each is a direct jump into
 * pantry's own functions; errno and return conventions are those of glibc.
 *
 * Layer: the top, beside alloc.c. Built only into libpantry-malloc
 * (PANTRY_OVERRIDE), whose TLS model is initial-exec.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "pantry.h"

#define PN_EXPORT __attribute__((visibility("default")))

PN_EXPORT void *malloc(size_t size) { return pn_malloc_inline(size); }

PN_EXPORT void free(void *p) { pn_free_inline(p, "free"); }

PN_EXPORT void *calloc(size_t count, size_t size) { return pantry_calloc(count, size); }

PN_EXPORT void *realloc(void *p, size_t size) { return pantry_realloc(p, size); }

PN_EXPORT void *reallocarray(void *p, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return pantry_realloc(p, total);
}

PN_EXPORT int posix_memalign(void **out, size_t align, size_t size) {
  if (align < sizeof(void *) || (align & (align - 1)) != 0)
    return EINVAL;
  int saved = errno;
  void *p = pantry_aligned_alloc(align, size);
  if (p == NULL) {
    int err = errno;
    errno = saved;
    return err;
  }
  *out = p;
  return 0;
}

PN_EXPORT void *aligned_alloc(size_t align, size_t size) {
  return pantry_aligned_alloc(align, size);
}

PN_EXPORT void *memalign(size_t align, size_t size) { return pantry_aligned_alloc(align, size); }

PN_EXPORT void *valloc(size_t size) { return pantry_aligned_alloc(PN_OS_PAGE_SIZE, size); }

PN_EXPORT void *pvalloc(size_t size) {
  size_t rounded = (size + PN_OS_PAGE_SIZE - 1) & ~(PN_OS_PAGE_SIZE - 1);
  if (rounded < size) {
    errno = ENOMEM;
    return NULL;
  }
  return pantry_aligned_alloc(PN_OS_PAGE_SIZE, rounded ? rounded : PN_OS_PAGE_SIZE);
}

PN_EXPORT size_t malloc_usable_size(void *p) { return pantry_usable_size(p); }

PN_EXPORT void cfree(void *p) { pn_free_inline(p, "cfree"); }
