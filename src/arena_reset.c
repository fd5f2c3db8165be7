/* arena_reset.c - reset and destroy of arenas, and their statistics.
 *
 * Layer: the top layer, beside alloc.c; uses arena.c (arena.h) and frees
 * through the thread heap. Reset and destroy are exclusive on their arena
 * (include/pantry.h); what other threads may touch meanwhile (their own
 * arenas' links in a parent, the xspare slots after reset returns) is listed
 * in arena.c's header comment.
 *
 * How they work: in rounds. A round detaches every serial arena's chunks,
 * leaving ptr == end == 0, so that any allocation falls into the slow path
 * (which diagnoses another thread racing with the reset), then runs the
 * detached cleanups, newest first per serial arena. A drop that allocates or
 * registers in the arena (on the resetting thread) fills fresh chunks, which
 * the next round detaches; rounds go on until one finds nothing. Reset then
 * keeps up to PN_ARENA_KEEP bytes of chunks (arena_keep); destroy hands its
 * memory to the thread's cache or the heap (pn_arena_thread_keep). The
 * common shape (one thread, one chunk, no children) takes a short path.
 */
#include "arena.h"

/* ------------------------------------------------------------------------ */
/* Reset and destroy                                                        */
/* ------------------------------------------------------------------------ */

/* Mark the arena busy (diagnosing a reset or destroy already running). The
 * CAS of debug builds also catches two threads entering at once; release
 * builds catch re-entry from a drop with a plain load and store. */
static void arena_busy_enter(pantry_arena_t *arena, const char *fn) {
  uintptr_t token = pn_arena_token(), idle = 0;
  bool ok;
  if (pn_debug) {
    ok = pn_atomic_cas_strong_acq_rel(&arena->xbusy, &idle, token);
  } else {
    ok = pn_atomic_load_relaxed(&arena->xbusy) == 0;
    pn_atomic_store_relaxed(&arena->xbusy, token);
  }
  if (PN_UNLIKELY(!ok))
    pn_fatal("%s(arena '%s' %p): the arena is already being reset or destroyed (from one of "
             "its own drops, or by another thread at the same time)",
             fn, arena->name, (void *)arena);
}

/* Take the chunks out of `s`, leaving it closed (ptr == end == 0). */
static bool arena_serial_detach(pn_arena_serial_t *s) {
  if (s->chunks == NULL)
    return false;
  s->chunks->top = s->bump.ptr_;
  s->chunks->cleanup = s->bump.end_;
  s->detached = s->chunks;
  s->chunks = NULL;
  s->bump.ptr_ = s->bump.end_ = 0;
  return true;
}

/* Run the detached cleanups of `s`, newest first, and move its detached
 * chunks to `*dead` (not freed yet: a serial arena lives in one of them). */
static void arena_serial_run(pn_arena_serial_t *s, pn_arena_chunk_t **dead) {
  pn_arena_chunk_t *c = s->detached;
  s->detached = NULL;
  while (c != NULL) {
    pn_arena_chunk_t *next = c->next;
    for (uintptr_t e = c->cleanup; e < pn_arena_chunk_end(c); e += sizeof(pn_arena_cleanup_t)) {
      pn_arena_cleanup_t *cl = (pn_arena_cleanup_t *)e;
      cl->drop(cl->obj, cl->ctx);
    }
    c->next = *dead;
    *dead = c;
    c = next;
  }
}

/* One round: detach every serial arena, then run the cleanups. Returns
 * whether anything was detached. */
static bool arena_round(pantry_arena_t *arena, pn_arena_chunk_t **dead_first,
                        pn_arena_chunk_t **dead_other) {
  /* Acquire: matches the release CAS in arena_serial_create. */
  pn_arena_serial_t *others = (pn_arena_serial_t *)pn_atomic_load_acquire(&arena->xserials);
  bool any = arena_serial_detach(&arena->first);
  for (pn_arena_serial_t *s = others; s != NULL; s = s->next)
    any |= arena_serial_detach(s);
  if (!any)
    return false;
  arena_serial_run(&arena->first, dead_first);
  for (pn_arena_serial_t *s = others; s != NULL; s = s->next)
    arena_serial_run(s, dead_other);
  return true;
}

static void arena_destroy_internal(pantry_arena_t *arena, bool by_parent);

/* Destroy every child (those that drops create too). Returns whether any. */
static bool arena_children_destroy(pantry_arena_t *arena) {
  if (pn_atomic_load_relaxed(&arena->xchildren) == 0)
    return false; /* no RMW when none */
  /* Acquire: matches the release CAS of the pushes in pantry_arena_create. */
  pn_arena_link_t *l = (pn_arena_link_t *)pn_atomic_exchange_acquire(&arena->xchildren, 0);
  bool any = l != NULL;
  while (l != NULL) {
    pn_arena_link_t *next = l->next;
    pantry_arena_t *child = (pantry_arena_t *)pn_atomic_load_acquire(&l->xchild);
    if (child != NULL)
      arena_destroy_internal(child, true);
    pn_arena_block_free(l, "pantry_arena_destroy");
    l = next;
  }
  pn_atomic_store_relaxed(&arena->xdead, 0);
  return any;
}

/* Reset every live child and free the dead links (nothing else runs). */
static void arena_children_reset(pantry_arena_t *arena) {
  pn_arena_link_t *l = (pn_arena_link_t *)pn_atomic_load_acquire(&arena->xchildren);
  if (l == NULL)
    return;
  pn_arena_link_t *keep = NULL, **tail = &keep;
  while (l != NULL) {
    pn_arena_link_t *next = l->next;
    pantry_arena_t *child = (pantry_arena_t *)pn_atomic_load_acquire(&l->xchild);
    if (child != NULL) {
      pantry_arena_reset(child);
      *tail = l;
      tail = &l->next;
    } else {
      pn_arena_block_free(l, "pantry_arena_reset");
    }
    l = next;
  }
  *tail = NULL;
  pn_atomic_store_relaxed(&arena->xchildren, (uintptr_t)keep);
  pn_atomic_store_relaxed(&arena->xdead, 0);
}

static void arena_rounds(pantry_arena_t *arena, bool destroy, pn_arena_chunk_t **dead_first,
                         pn_arena_chunk_t **dead_other) {
  for (unsigned round = 0;; round++) {
    bool any = destroy && arena_children_destroy(arena);
    any |= arena_round(arena, dead_first, dead_other);
    if (!any)
      return;
    if (round == PN_ARENA_ROUNDS_MAX)
      pn_fatal("%s(arena '%s' %p): drops kept registering new drops for %u rounds",
               destroy ? "pantry_arena_destroy" : "pantry_arena_reset", arena->name, (void *)arena,
               round);
  }
}

static void arena_destroy_internal(pantry_arena_t *arena, bool by_parent) {
  arena_busy_enter(arena, "pantry_arena_destroy");
  if (PN_UNLIKELY(pn_leak_tracking))
    pn_leak_arena_destroyed();
  pn_arena_chunk_t *dead_first = NULL, *dead_other = NULL;
  pn_arena_serial_t *first = &arena->first;
  /* The common shape, as in reset: one thread, no children, no spares but
   * the initial chunk. */
  if (pn_atomic_load_relaxed(&arena->xchildren) == 0 &&
      pn_atomic_load_relaxed(&arena->xserials) == 0 && arena->shared_spares == 0 &&
      (first->spare == NULL || (first->spare == arena->initial && first->spare->next == NULL))) {
    arena_serial_detach(first);
    arena_serial_run(first, &dead_first);
    if (first->chunks == NULL && pn_atomic_load_relaxed(&arena->xserials) == 0 &&
        pn_atomic_load_relaxed(&arena->xchildren) == 0) {
      if (arena->parent != NULL && !by_parent)
        pn_arena_unlink(arena);
      pn_arena_thread_keep(arena, dead_first);
      return;
    }
  }
  arena_rounds(arena, true, &dead_first, &dead_other);
  /* Everything into one list: the thread's cache takes what it can. */
  pn_arena_chunk_t *all = dead_other, *lists[2] = {dead_first, first->spare};
  for (unsigned i = 0; i < arena->shared_spares; i++) { /* slots past it were never filled */
    pn_arena_chunk_t *c = (pn_arena_chunk_t *)pn_atomic_load_relaxed(&arena->xspare[i]);
    if (c != NULL) {
      c->next = all;
      all = c;
    }
  }
  for (int i = 0; i < 2; i++) {
    for (pn_arena_chunk_t *c = lists[i], *next; c != NULL; c = next) {
      next = c->next;
      c->next = all;
      all = c;
    }
  }
  if (arena->parent != NULL && !by_parent)
    pn_arena_unlink(arena);
  pn_arena_thread_keep(arena, all);
}

void pantry_arena_destroy(pantry_arena_t *arena) {
  if (arena != NULL)
    arena_destroy_internal(arena, false);
}

/* Keep chunks for reuse, up to PN_ARENA_KEEP bytes besides the initial chunk,
 * which is always kept: the first serial arena's own chunks stay with it
 * (the largest becomes its current chunk, so a request like the last one
 * needs no chunk switch; the others go to its private spare list), the other
 * threads' chunks go to the xspare slots; the rest is freed. Returns the
 * first serial arena's new current chunk (NULL: none). */
static pn_arena_chunk_t *arena_keep(pantry_arena_t *arena, pn_arena_chunk_t *dead_first,
                                    pn_arena_chunk_t *dead_other) {
  size_t budget = PN_ARENA_KEEP, freed = 0;
  pn_arena_chunk_t *lists[2] = {arena->first.spare, dead_first};
  pn_arena_chunk_t *current = NULL;
  for (int i = 0; i < 2; i++)
    for (pn_arena_chunk_t *c = lists[i]; c != NULL; c = c->next)
      if ((c == arena->initial || c->size <= budget) &&
          (current == NULL || c->size > current->size))
        current = c;
  if (current != NULL && current != arena->initial)
    budget -= current->size;
  pn_arena_chunk_t *keep = NULL, **tail = &keep;
  for (int i = 0; i < 2; i++) {
    for (pn_arena_chunk_t *c = lists[i], *next; c != NULL; c = next) {
      next = c->next;
      if (c == current)
        continue;
      if (c == arena->initial || c->size <= budget) {
        if (c != arena->initial)
          budget -= c->size;
        *tail = c;
        tail = &c->next;
      } else {
        freed += c->size;
        pn_arena_block_free(c, "pantry_arena_reset");
      }
    }
  }
  *tail = NULL;
  arena->first.spare = keep;

  pn_arena_uncharge(arena, freed);
  if (dead_other == NULL && arena->shared_spares == 0)
    return current; /* one thread: done */
  pn_arena_chunk_t *shared = dead_other;
  for (int i = 0; i < PN_ARENA_SPARES; i++) {
    pn_arena_chunk_t *c = (pn_arena_chunk_t *)pn_atomic_load_relaxed(&arena->xspare[i]);
    if (c != NULL) {
      c->next = shared;
      shared = c;
    }
  }
  unsigned slot = 0;
  freed = 0;
  for (pn_arena_chunk_t *c = shared, *next; c != NULL; c = next) {
    next = c->next;
    if (slot < PN_ARENA_SPARES && c->size <= budget) {
      budget -= c->size;
      c->next = NULL;
      /* Release: matches the acquire exchange in arena_spare_take_shared. */
      pn_atomic_store_release(&arena->xspare[slot++], (uintptr_t)c);
    } else {
      freed += c->size;
      pn_arena_block_free(c, "pantry_arena_reset");
    }
  }
  arena->shared_spares = slot;
  for (; slot < PN_ARENA_SPARES; slot++)
    pn_atomic_store_relaxed(&arena->xspare[slot], 0);
  pn_arena_uncharge(arena, freed);
  return current;
}

/* Make `c` the first serial arena's current and only chunk, empty. */
static void arena_first_install(pantry_arena_t *arena, pn_arena_chunk_t *c) {
  pn_arena_serial_t *first = &arena->first;
  if (c == NULL)
    return;
  c->next = NULL;
  first->chunks = c;
  first->bump.ptr_ = pn_arena_chunk_data(c);
  first->bump.end_ = pn_arena_chunk_end(c);
}

void pantry_arena_reset(pantry_arena_t *arena) {
  if (arena == NULL)
    return;
  arena_busy_enter(arena, "pantry_arena_reset");
  pn_arena_chunk_t *dead_first = NULL, *dead_other = NULL;
  pn_arena_serial_t *first = &arena->first;
  /* The common shape: one thread, one chunk, no children. Run its cleanups
   * and keep the chunk as it is, unless a drop allocated (then on below). */
  if (pn_atomic_load_relaxed(&arena->xchildren) == 0 &&
      pn_atomic_load_relaxed(&arena->xserials) == 0 && first->chunks != NULL &&
      first->chunks->next == NULL) {
    pn_arena_chunk_t *c = first->chunks;
    arena_serial_detach(first);
    arena_serial_run(first, &dead_first);
    if (first->chunks == NULL && pn_atomic_load_relaxed(&arena->xserials) == 0 &&
        pn_atomic_load_relaxed(&arena->xchildren) == 0) {
      arena_first_install(arena, c);
      pn_atomic_store_release(&arena->xbusy, 0);
      return;
    }
  }
  arena_children_reset(arena);
  arena_rounds(arena, false, &dead_first, &dead_other);
  arena_first_install(arena, arena_keep(arena, dead_first, dead_other));
  /* Other threads' serial arenas lived in the chunks just kept or freed:
   * forget them and take a new id, so every thread's cache is stale. With
   * none, the id and the first serial arena's owner stay valid. */
  if (pn_atomic_load_relaxed(&arena->xserials) != 0) {
    pn_atomic_store_relaxed(&arena->xserials, 0);
    pn_atomic_store_relaxed(&first->xowner, 0);
    arena->head.id_ = pn_arena_id_take();
  }
  pn_atomic_store_release(&arena->xbusy, 0);
}

/* ------------------------------------------------------------------------ */
/* Statistics                                                               */
/* ------------------------------------------------------------------------ */

static void arena_stats_serial(const pn_arena_serial_t *s, pantry_arena_stats_t *st) {
  for (const pn_arena_chunk_t *c = s->chunks; c != NULL; c = c->next) {
    uintptr_t top = c == s->chunks ? s->bump.ptr_ : c->top;
    uintptr_t cleanup = c == s->chunks ? s->bump.end_ : c->cleanup;
    st->bytes_held += c->size;
    st->chunks++;
    st->bytes_used += (top - pn_arena_chunk_data(c)) + (pn_arena_chunk_end(c) - cleanup);
    st->owned += (pn_arena_chunk_end(c) - cleanup) / sizeof(pn_arena_cleanup_t);
  }
  for (const pn_arena_chunk_t *c = s->spare; c != NULL; c = c->next) {
    st->bytes_held += c->size;
    st->chunks++;
  }
}

void pantry_arena_stats(const pantry_arena_t *arena, pantry_arena_stats_t *stats) {
  pantry_arena_t *a = (pantry_arena_t *)arena; /* the atomics take non-const pointers */
  pantry_arena_stats_t st = {0};
  arena_stats_serial(&a->first, &st);
  st.serial_arenas = pn_atomic_load_relaxed(&a->first.xowner) != 0;
  for (pn_arena_serial_t *s = (pn_arena_serial_t *)pn_atomic_load_acquire(&a->xserials); s != NULL;
       s = s->next) {
    arena_stats_serial(s, &st);
    st.serial_arenas++;
  }
  for (int i = 0; i < PN_ARENA_SPARES; i++) {
    pn_arena_chunk_t *c = (pn_arena_chunk_t *)pn_atomic_load_acquire(&a->xspare[i]);
    if (c != NULL) {
      st.bytes_held += c->size;
      st.chunks++;
    }
  }
  for (pn_arena_link_t *l = (pn_arena_link_t *)pn_atomic_load_acquire(&a->xchildren); l != NULL;
       l = l->next)
    st.children += pn_atomic_load_acquire(&l->xchild) != 0;
  *stats = st;
}

const char *pantry_arena_name(const pantry_arena_t *arena) { return arena->name; }
