/* malloc_main.c - a program that only calls malloc and free, linked with
 * libpantry-malloc: its blocks must come from pantry (pantry_usable_size
 * recognises them) and it prints "consumer malloc ok". */
#include <pantry.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  void *p = malloc(100);
  if (p == NULL)
    return 1;
  if (pantry_usable_size(p) != 112)
    return 2; /* pantry's size class for 100 bytes */
  free(p);
  puts("consumer malloc ok");
  return 0;
}
