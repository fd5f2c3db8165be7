/* main.c - the consumer's program: uses the installed <pantry.h> and
 * libpantry (malloc API, a pool, an arena, statistics, an option) and
 * prints "consumer ok" when everything did what the header says. */
#include <pantry.h>
#include <stdio.h>
#include <string.h>

struct conn {
  int fd;
  char name[28];
};

static int dropped;
static void conn_drop(void *obj, void *ctx) {
  (void)obj;
  (void)ctx;
  dropped++;
}

int main(void) {
  char *s = pantry_malloc(64);
  if (s == NULL)
    return 1;
  strcpy(s, "hello");
  s = pantry_realloc(s, 4000);
  if (s == NULL || strcmp(s, "hello") != 0)
    return 2;
  pantry_free(s);

  pantry_pool_config_t cfg = {
      .name = "conn", .layout = PANTRY_LAYOUT_OF(struct conn), .drop = conn_drop};
  pantry_pool_t *pool = pantry_pool_create(&cfg);
  struct conn *c = pantry_pool_alloc(pool);
  if (c == NULL)
    return 3;
  pantry_pool_free(pool, c);
  pantry_pool_destroy(pool);
  if (dropped != 1)
    return 4;

  pantry_arena_t *arena = pantry_arena_create(NULL);
  char *path = pantry_arena_strdup(arena, "/index.html");
  if (path == NULL || strcmp(path, "/index.html") != 0)
    return 5;
  pantry_arena_destroy(arena);

  pantry_stats_t st;
  pantry_stats_get(&st);
  if (st.threads < 1)
    return 6;
  if (pantry_option_get("PANTRY_PURGE_DELAY_MS") < 0)
    return 7;
  pantry_collect(false);
  puts("consumer ok");
  return 0;
}
