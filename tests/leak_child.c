/* leak_child.c - a program that leaks on purpose, for the leak report test
 * (tests/test_leak.cpp runs it with PANTRY_LEAK_REPORT=1). */
#include <pantry.h>
#include <stdio.h>

static void *volatile keep[32];

int main(void) {
  for (int i = 0; i < 10; i++)
    keep[i] = pantry_malloc(100);
  keep[10] = pantry_malloc(3 << 20);
  pantry_pool_t *pool =
      pantry_pool_create(&(pantry_pool_config_t){.name = "leaky-conn", .layout = {64, 8}});
  for (int i = 0; i < 5; i++)
    keep[11 + i] = pantry_pool_alloc(pool);
  keep[20] = pantry_arena_create(NULL);
  puts("done");
  return 0;
}
