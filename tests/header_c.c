/* header_c.c - proves include/pantry.h compiles as C11 with -pedantic -Wall
 * -Wextra -Werror (built as an object library by tests/CMakeLists.txt;
 * building it is the test). It names every public function and macro. */
#include <pantry.h>
#include <pantry.h> /* the include guard works */

#include <stddef.h>

struct header_c_conn {
  int fd;
  double when;
  char name[13];
};

void pantry_header_c_use(void);

void pantry_header_c_use(void) {
  pantry_layout_t layout = PANTRY_LAYOUT_OF(struct header_c_conn);
  pantry_layout_t explicit_layout = {64, 64};
  void *p = pantry_malloc(16);
  void *q = pantry_calloc(4, 4);
  void *r = pantry_aligned_alloc(64, 100);
  void *s = pantry_alloc(layout);
  void *t = pantry_alloc(explicit_layout);
  size_t n = pantry_usable_size(p);
  p = pantry_realloc(p, n + 1);
  pantry_free(p);
  pantry_free_sized(q, 16);
  pantry_free(r);
  pantry_dealloc(s, layout);
  pantry_dealloc(t, explicit_layout);
  (void)PANTRY_VERSION;
}
