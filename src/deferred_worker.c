/* deferred_worker.c - pantry's worker thread for deferred frees: it issues
 * the call_rcu of every batch handed over, hands over the batches that sat
 * unchanged for a tick (the time bound), frees returned blocks that their
 * thread left for a tick, serves the barrier's tickets, and is parked
 * around fork. See deferred.c for the whole design.
 *
 * Layer: the top, beside deferred.c (whose slots, handover stack and
 * flavor it reads); calls liburcu: the flavor's register/unregister,
 * online/offline, call_rcu and fork functions.
 *
 * The worker is the only thread pantry registers with the readers' flavor.
 * It is offline (QSBR) except around its call_rcus, so it never holds a
 * grace period back.
 *
 * Shared state and who writes it:
 *   deferred_xlife      LIFE_*: the thread that starts or stops the worker
 *                       (CAS), the fork child handler. LIFE_STARTING lasts
 *                       from the starter's CAS to its store of the outcome;
 *                       the worker may already run in between, so fork
 *                       waits it out (pn_deferred_fork_prepare).
 *   deferred_xwake      futex word, WAKE_*: the worker says how it sleeps;
 *                       a kicker CASes it back to RUNNING and wakes it.
 *   deferred_xcommand   futex word, COMMAND_*: fork and exit ask the worker
 *                       to park or stop; deferred_xack is its answer. A
 *                       pause carries the fork's sequence number
 *                       (COMMAND_PAUSE | seq << 2) and the worker answers
 *                       with that word, so an answer to an earlier fork
 *                       never passes for this one.
 *   deferred_xasked /   barrier tickets: a waiter takes a ticket (fetch_add);
 *   deferred_xdone      the worker publishes the last ticket it served
 *                       (futex word), after the call_rcus it owed.
 * Sleep protocol (Dekker): the worker stores its sleep state, fences, then
 * looks for work; a kicker publishes its work, fences, then reads the
 * state. One of the two sees the other, so no wake-up is lost.
 */
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "deferred.h"

/* The worker's tick. A partial batch seen unchanged at two ticks is handed
 * over: no pointer waits more than about two ticks before its call_rcu. */
#define DEFERRED_TICK_NS ((int64_t)10 * 1000 * 1000)
/* After a look that found batches handed over, the worker looks again this
 * soon by itself (WAKE_POLLING), and a full batch does not wake it: a
 * thread that defers all the time makes no system call per batch, and its
 * batches wait at most this long for their call_rcu. */
#define DEFERRED_POLL_NS ((int64_t)1000 * 1000)

/* Worker life (deferred_xlife) and sleep states (deferred_xwake). */
enum { LIFE_NONE, LIFE_STARTING, LIFE_STARTED, LIFE_SHUTDOWN };
enum { WAKE_RUNNING, WAKE_NAPPING, WAKE_IDLE, WAKE_POLLING };
/* Commands to the worker (deferred_xcommand), acknowledged in deferred_xack. */
enum { COMMAND_NONE, COMMAND_PAUSE, COMMAND_STOP };

static pn_atomic_uint32_t deferred_xlife;    /* atomic acq/rel: LIFE_* */
static pn_atomic_uint32_t deferred_xforking; /* atomic: 1 from the prepare handler to the parent's
                                              * or child's; written by the forking thread */
static pn_atomic_uint32_t deferred_xwake;    /* atomic, futex: WAKE_* */
static pn_atomic_uint32_t deferred_xcommand; /* atomic, futex: COMMAND_* */
static pn_atomic_uint32_t deferred_xack;     /* atomic, futex: the command the worker obeys */
static pn_atomic_uintptr_t deferred_xasked;  /* atomic acq/rel: barrier tickets taken */
static pn_atomic_uint32_t deferred_xdone; /* atomic, futex: low 32 bits of the last ticket served */
static pthread_t deferred_worker;         /* written by the thread that starts it */
static _Thread_local bool deferred_tls_starting; /* this thread holds LIFE_STARTING */

/* fork: what the prepare handler did, for the parent and child handlers.
 * Written and read by the forking thread only. */
static const pn_deferred_flavor_t *deferred_fork_flavor;
static const struct rcu_flavor_struct *deferred_fork_online; /* the flavor it went offline in */
static bool deferred_fork_paused;
static uint32_t deferred_fork_seq; /* pauses asked (glibc runs fork handlers one fork at a time) */

/* ------------------------------------------------------------------------ */
/* Futexes and the clock                                                    */
/* ------------------------------------------------------------------------ */

/* Sleep while *word == value, at most `ns` nanoseconds (< 0: no bound). */
static void deferred_futex_wait(pn_atomic_uint32_t *word, uint32_t value, int64_t ns) {
  struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, value, ns < 0 ? NULL : &ts, NULL, 0);
}

static void deferred_futex_wake(pn_atomic_uint32_t *word, int count) {
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

static int64_t deferred_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* The worker                                                               */
/* ------------------------------------------------------------------------ */

/* Wake the worker if it sleeps as lightly as `kick` says (deferred.h). The
 * caller has published its reason (a ticket, a command, a new batch); the
 * fence orders that store before our read of the sleep state, as the
 * worker's fence orders its state store before its read of our reason. */
void pn_deferred_worker_kick(pn_deferred_kick_t kick) {
  pn_atomic_fence_seq_cst();
  uint32_t state = pn_atomic_load_acquire32(&deferred_xwake);
  if (state == WAKE_RUNNING || (kick == PN_DEFERRED_KICK_IDLE && state != WAKE_IDLE) ||
      (kick == PN_DEFERRED_KICK_HANDOVER && state == WAKE_POLLING))
    return;
  if (pn_atomic_cas_strong_acq_rel32(&deferred_xwake, &state, WAKE_RUNNING))
    deferred_futex_wake(&deferred_xwake, 1);
}

/* Call call_rcu for every batch on the handover stack. Returns whether
 * there was any. */
static bool deferred_worker_drain(const pn_deferred_flavor_t *flavor) {
  /* Relaxed peek: the caller's acquire of the barrier's ticket already
   * orders the pushes the ticket covers before this load. */
  if (pn_atomic_load_relaxed(&pn_deferred_xhandover) == 0)
    return false;
  /* Acquire: matches the release CAS of every push (deferred_handover), so
   * each batch's items and link are seen. The worker is the only taker. */
  pn_deferred_batch_t *list =
      (pn_deferred_batch_t *)pn_atomic_exchange_acquire(&pn_deferred_xhandover, 0);
  /* Newest first: reverse, so call_rcus go out in handover order. */
  pn_deferred_batch_t *fifo = NULL;
  while (list != NULL) {
    pn_deferred_batch_t *next = list->handover_next;
    list->handover_next = fifo;
    fifo = list;
    list = next;
  }
  flavor->rcu->thread_online();
  while (fifo != NULL) {
    pn_deferred_batch_t *next =
        fifo->handover_next; /* the callback owns the batch after call_rcu */
    pn_deferred_batch_call_rcu(flavor, fifo);
    fifo = next;
  }
  flavor->rcu->thread_offline();
  return true;
}

/* The time bound: steal every open batch that has not changed since the
 * last tick (its thread defers slowly, or not at all any more), and free the
 * returned blocks of every thread that has not taken them for a tick. A
 * batch freed and reallocated at the same address in between is handed
 * over a tick early: harmless. */
static void deferred_worker_age(const pn_deferred_flavor_t *flavor) {
  bool online = false;
  for (pn_deferred_slot_t *slot = (pn_deferred_slot_t *)pn_atomic_load_acquire(&pn_deferred_xslots);
       slot != NULL; slot = slot->next) {
    uintptr_t done = pn_atomic_load_relaxed(&slot->xdone);
    if (done != 0 && done == slot->worker_seen_done) {
      pn_deferred_done_take(slot, UINT_MAX);
      done = 0;
    }
    slot->worker_seen_done = done;
    uintptr_t seen = pn_atomic_load_relaxed(&slot->xbatch);
    if (seen == 0 || seen != slot->worker_seen) {
      slot->worker_seen = seen;
      continue;
    }
    slot->worker_seen = 0;
    /* Acquire: matches the owner's release store, so its appends are seen. */
    uintptr_t batch = pn_atomic_exchange_acquire(&slot->xbatch, 0);
    if (batch == 0)
      continue;
    if (!online)
      flavor->rcu->thread_online();
    online = true;
    pn_deferred_batch_call_rcu(flavor, (pn_deferred_batch_t *)batch);
  }
  if (online)
    flavor->rcu->thread_offline();
}

/* Obey a pause (fork): leave the flavor's registry, answer this very
 * pause, and wait while the command word stays the same. The parent's
 * resume changes it, and so does the next fork's pause (a new sequence
 * number), which may come before this thread saw the resume: the caller's
 * loop then answers that one. (An answer that was the constant
 * COMMAND_PAUSE, reset by the worker as it left, could pass for the next
 * fork's while the worker was already leaving.) */
static void deferred_worker_pause(const struct rcu_flavor_struct **registered, uint32_t command) {
  if (*registered != NULL)
    (*registered)->unregister_thread();
  *registered = NULL;
  pn_atomic_store_release32(&deferred_xack, command);
  deferred_futex_wake(&deferred_xack, INT_MAX);
  while (pn_atomic_load_acquire32(&deferred_xcommand) == command)
    deferred_futex_wait(&deferred_xcommand, command, -1);
}

/* Sleep until the next tick while batches are pending (at most
 * DEFERRED_POLL_NS when `poll`: the last look found batches handed over),
 * or until kicked when none is. Returns at once when there is work. */
static void deferred_worker_sleep(int64_t next_tick, bool poll) {
  bool pending = pn_atomic_load_acquire(&pn_deferred_xbatches) != 0;
  uint32_t state = !pending ? WAKE_IDLE : poll ? WAKE_POLLING : WAKE_NAPPING;
  pn_atomic_store_release32(&deferred_xwake, state);
  /* Partner of the fence in pn_deferred_worker_kick. */
  pn_atomic_fence_seq_cst();
  bool work = pn_atomic_load_acquire32(&deferred_xcommand) != COMMAND_NONE ||
              (uint32_t)pn_atomic_load_acquire(&deferred_xasked) !=
                  pn_atomic_load_acquire32(&deferred_xdone) ||
              (!pending && pn_atomic_load_acquire(&pn_deferred_xbatches) != 0) ||
              pn_atomic_load_acquire(&pn_deferred_xhandover) != 0;
  if (!work) {
    int64_t ns = -1;
    if (pending) {
      ns = next_tick - deferred_now_ns();
      if (ns < 0)
        ns = 0;
      if (poll && ns > DEFERRED_POLL_NS)
        ns = DEFERRED_POLL_NS;
    }
    if (ns != 0)
      deferred_futex_wait(&deferred_xwake, state, ns);
  }
  pn_atomic_store_release32(&deferred_xwake, WAKE_RUNNING);
}

static void *deferred_worker_main(void *arg) {
  (void)arg;
  pthread_setname_np(pthread_self(), "pantry-deferred");
  const struct rcu_flavor_struct *registered = NULL;
  int64_t next_tick = deferred_now_ns() + DEFERRED_TICK_NS;
  for (;;) {
    uint32_t command = pn_atomic_load_acquire32(&deferred_xcommand);
    if (command == COMMAND_STOP)
      break;
    if ((command & 3u) == COMMAND_PAUSE) {
      deferred_worker_pause(&registered, command);
      continue;
    }
    const pn_deferred_flavor_t *flavor = pn_deferred_flavor();
    if (flavor->rcu != registered) {
      if (registered != NULL)
        registered->unregister_thread();
      registered = flavor->rcu;
      registered->register_thread();
      registered->thread_offline(); /* QSBR: online only around call_rcu */
    }
    /* Acquire: matches the barrier's ticket; the batches it pushed before
     * taking the ticket are on the stack we drain next. */
    uintptr_t asked = pn_atomic_load_acquire(&deferred_xasked);
    bool drained = deferred_worker_drain(flavor);
    int64_t now = deferred_now_ns();
    if (now >= next_tick) {
      deferred_worker_age(flavor);
      next_tick = now + DEFERRED_TICK_NS;
    }
    if ((uint32_t)asked != pn_atomic_load_acquire32(&deferred_xdone)) {
      /* Release: every call_rcu above happens before the barrier's wake. */
      pn_atomic_store_release32(&deferred_xdone, (uint32_t)asked);
      deferred_futex_wake(&deferred_xdone, INT_MAX);
    }
    deferred_worker_sleep(next_tick, drained);
  }
  if (registered != NULL)
    registered->unregister_thread();
  pn_atomic_store_release32(&deferred_xack, COMMAND_STOP);
  return NULL;
}

/* Start the worker if it is not running. A thread that finds another one
 * starting it does not wait: its batches just wait on the handover stack. */
void pn_deferred_worker_ensure(void) {
  if (PN_LIKELY(pn_atomic_load_acquire32(&deferred_xlife) != LIFE_NONE))
    return;
  uint32_t expected = LIFE_NONE;
  if (!pn_atomic_cas_strong_acq_rel32(&deferred_xlife, &expected, LIFE_STARTING))
    return;
  /* The fork gate (Dekker with pn_deferred_fork_prepare, which stores the
   * gate, fences, then reads deferred_xlife; we store LIFE_STARTING,
   * fence, then read the gate): either the prepare handler sees
   * LIFE_STARTING and waits for the outcome, or we see the gate and start
   * no thread during the fork. Its batches wait on the handover stack; the
   * next batch or barrier starts the worker. */
  pn_atomic_fence_seq_cst();
  if (pn_atomic_load_acquire32(&deferred_xforking) != 0) {
    pn_atomic_store_release32(&deferred_xlife, LIFE_NONE);
    return;
  }
  deferred_tls_starting = true;
  sigset_t old;
  pn_os_block_signals(&old); /* the worker takes no signals but its own faults */
  int err = pthread_create(&deferred_worker, NULL, deferred_worker_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err != 0) {
    pn_warning("pantry_free_deferred: cannot start the worker thread (%s); deferred frees wait "
               "until a later call starts it",
               strerror(err));
    pn_atomic_store_release32(&deferred_xlife, LIFE_NONE);
    deferred_tls_starting = false;
    return;
  }
  pn_atomic_store_release32(&deferred_xlife, LIFE_STARTED);
  deferred_tls_starting = false;
}

/* Stop and join the worker (library unload, process exit). */
void pn_deferred_worker_stop(void) {
  uint32_t life = pn_atomic_load_acquire32(&deferred_xlife);
  while (!pn_atomic_cas_strong_acq_rel32(&deferred_xlife, &life, LIFE_SHUTDOWN)) {
  }
  if (life != LIFE_STARTED)
    return;
  pn_atomic_store_release32(&deferred_xcommand, COMMAND_STOP);
  deferred_futex_wake(&deferred_xcommand, INT_MAX);
  pn_deferred_worker_kick(PN_DEFERRED_KICK_ALL);
  pthread_join(deferred_worker, NULL);
}

/* Take a ticket and wait until the worker serves it: every batch queued
 * before the call then has its call_rcu. */
bool pn_deferred_worker_serve(void) {
  pn_deferred_worker_ensure();
  /* Release: the caller's pushes happen before the worker's acquire of
   * the ticket, so the drain that serves it sees them. */
  uintptr_t ticket = pn_atomic_fetch_add_acq_rel(&deferred_xasked, 1) + 1;
  pn_deferred_worker_kick(PN_DEFERRED_KICK_ALL);
  for (;;) {
    /* Acquire: matches the worker's release store after its call_rcus. */
    uint32_t done = pn_atomic_load_acquire32(&deferred_xdone);
    if ((int32_t)(done - (uint32_t)ticket) >= 0)
      return true;
    uint32_t life = pn_atomic_load_acquire32(&deferred_xlife);
    if (life == LIFE_NONE && pn_atomic_load_acquire32(&deferred_xforking) != 0) {
      sched_yield(); /* another thread forks: start the worker after it */
      pn_deferred_worker_ensure();
      continue;
    }
    if (life == LIFE_NONE || life == LIFE_SHUTDOWN)
      return false; /* no worker: it could not start, or the library is going */
    deferred_futex_wait(&deferred_xdone, done, DEFERRED_TICK_NS);
  }
}

/* ------------------------------------------------------------------------ */
/* fork                                                                     */
/* ------------------------------------------------------------------------ */

/* Before fork. What the child inherits from the other threads is what they
 * were doing at the instant of the fork, frozen for good. So, before it:
 *
 *   1. Wait out LIFE_STARTING. A worker that its starter has created but
 *      not yet published as LIFE_STARTED already runs: it registers with
 *      the flavor and issues call_rcus (each inside the flavor's read-side
 *      section, and the first creates liburcu's call_rcu thread, which then
 *      runs synchronize_rcu). Unpaused, it can be frozen inside one of
 *      those: then the child's grace periods wait forever for a reader that
 *      does not exist, or for the registry lock it held (seen as the
 *      child's call_rcu thread stuck in synchronize_rcu and the child's
 *      barrier waiting for it). The starter only runs pthread_create, which
 *      never waits for the forking thread, so the wait is short; a thread
 *      that forks from inside its own start (a signal handler) does not
 *      wait for itself.
 *   2. Park the worker (LIFE_STARTED): it leaves the flavor's registry at
 *      the top of its loop, outside every liburcu call, and acknowledges.
 *   3. The flavor's call_rcu_before_fork, whatever the worker's state: it
 *      takes liburcu's call_rcu lock and parks every call_rcu thread of the
 *      flavor between grace periods (unregistered). A process that ever
 *      deferred has such a thread even with no worker: a fork child (whose
 *      worker starts on demand) has the one after_fork_child made.
 *
 * Invariant at the fork: no thread of this process is inside a liburcu
 * call of the readers' flavor on pantry's behalf (the worker is parked,
 * the flavor's call_rcu threads are paused and unregistered; the only
 * other users of that call_rcu are barriers, which hold the call_rcu lock
 * that step 3 holds), and pantry's handover stack is whole (a CAS push).
 *
 * None of it waits on an allocation: pantry's frees take no lock, so a
 * callback that frees during the handshake cannot deadlock with it. The
 * handlers of the depot (urcu-bp) were registered first, so they run after
 * this one, and a callback that releases a segment while we wait for
 * liburcu's call_rcu thread finds urcu-bp not yet locked. */
void pn_deferred_fork_prepare(void) {
  deferred_fork_flavor = NULL;
  deferred_fork_online = NULL;
  deferred_fork_paused = false;
  /* The gate: no worker start begins from here to the parent's or child's
   * handler (pn_deferred_worker_ensure). Partner of the CAS there. */
  pn_atomic_store_release32(&deferred_xforking, 1);
  pn_atomic_fence_seq_cst();
  uint32_t life = pn_atomic_load_acquire32(&deferred_xlife);
  /* Step 1. Acquire: matches the starter's release store of the outcome. */
  while (life == LIFE_STARTING && !deferred_tls_starting) {
    sched_yield();
    life = pn_atomic_load_acquire32(&deferred_xlife);
  }
  const pn_deferred_flavor_t *flavor = pn_deferred_flavor();
  /* A QSBR thread that forks while online would stall the grace period
   * that liburcu's before_fork waits for. */
  if (flavor->rcu->read_ongoing()) {
    flavor->rcu->thread_offline();
    deferred_fork_online = flavor->rcu;
  }
  if (life == LIFE_STARTED) { /* step 2 */
    uint32_t pause = COMMAND_PAUSE | (++deferred_fork_seq << 2);
    pn_atomic_store_release32(&deferred_xcommand, pause);
    deferred_futex_wake(&deferred_xcommand, INT_MAX);
    pn_deferred_worker_kick(PN_DEFERRED_KICK_ALL);
    for (uint32_t ack; (ack = pn_atomic_load_acquire32(&deferred_xack)) != pause;)
      deferred_futex_wait(&deferred_xack, ack, -1);
    deferred_fork_paused = true;
  }
  if (flavor->before_fork != NULL) { /* step 3 */
    flavor->before_fork();
    deferred_fork_flavor = flavor;
  }
}

void pn_deferred_fork_parent(void) {
  if (deferred_fork_flavor != NULL)
    deferred_fork_flavor->after_fork_parent();
  if (deferred_fork_paused) {
    pn_atomic_store_release32(&deferred_xcommand, COMMAND_NONE);
    deferred_futex_wake(&deferred_xcommand, INT_MAX);
  }
  if (deferred_fork_online != NULL)
    deferred_fork_online->thread_online();
  pn_atomic_store_release32(&deferred_xforking, 0);
}

/* In the child only this thread lives: no worker (a new one starts on
 * demand), other threads' slots are free for reuse (their batches stay and
 * are handed over by the next tick or barrier), and batches on the
 * handover stack stay there for the new worker. A batch that a thread of
 * the parent held outside its slot at the fork (mid-append, or between
 * steal and push) is lost to the child: its blocks leak there. */
void pn_deferred_fork_child(void) {
  if (deferred_fork_flavor != NULL)
    deferred_fork_flavor->after_fork_child();
  if (pn_atomic_load_acquire32(&deferred_xlife) != LIFE_SHUTDOWN)
    pn_atomic_store_release32(&deferred_xlife, LIFE_NONE);
  deferred_tls_starting = false;
  pn_atomic_store_release32(&deferred_xcommand, COMMAND_NONE);
  pn_atomic_store_release32(&deferred_xack, COMMAND_NONE);
  pn_atomic_store_release32(&deferred_xwake, WAKE_RUNNING);
  pn_atomic_store_release32(&deferred_xdone, (uint32_t)pn_atomic_load_acquire(&deferred_xasked));
  for (pn_deferred_slot_t *slot = (pn_deferred_slot_t *)pn_atomic_load_acquire(&pn_deferred_xslots);
       slot != NULL; slot = slot->next) {
    /* Threads that were taking a slot's returned batches are gone: their
     * frees never finish here (those blocks leak in the child). */
    pn_atomic_store_relaxed(&slot->xtaking, 0);
    if (slot != pn_deferred_slot_mine())
      pn_atomic_store_relaxed(&slot->xin_use, 0);
  }
  if (deferred_fork_online != NULL)
    deferred_fork_online->thread_online();
  pn_atomic_store_release32(&deferred_xforking, 0);
}
