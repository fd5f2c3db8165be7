/* httpd.c - a small multi-threaded HTTP/1.1 static file server on pantry.
 *
 *   pantry_httpd [--port N] [--threads N] [--root DIR] [--address A]
 *
 * One thread per core, each with its own epoll set and its own listening
 * socket (SO_REUSEPORT: the kernel spreads new connections over the
 * threads), so a connection lives on one thread from accept to close.
 * GET and HEAD of files under --root (default "."), keep-alive, pipelining;
 * anything else gets 400, 404, 405 or 414.
 *
 * Memory, the point of the example:
 *   - connection state lives in a pantry pool ("conn"), whose drop closes
 *     the socket and frees what the connection still owns;
 *   - each request gets an arena: its parsed request line and headers, the
 *     path, the response buffer and the file's descriptor (registered with
 *     a drop that closes it) all belong to the request and are dropped in
 *     one pantry_arena_destroy when the response is written.
 * Built with -DHTTPD_MALLOC (the pantry_httpd_malloc target), the same
 * server uses malloc and free for each of those objects and closes the
 * descriptors itself: run it under LD_PRELOAD to compare allocators.
 *
 * Threads: the pool is shared by all threads (pantry pools are thread-safe
 * and lock-free); a request's arena is used by one thread only. SIGINT or
 * SIGTERM stops the threads; the main thread then destroys the pool (which
 * closes every connection left) and, with pantry, PANTRY_SHOW_STATS=1
 * prints the allocator's statistics at exit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef HTTPD_MALLOC
#include <pantry.h>
#endif

#define CONN_BUFFER 4096 /* a request line and its headers must fit */
#define MAX_HEADERS 32
#define MAX_PATH 1024

static const char *root = ".";
static atomic_bool stopping;
static _Thread_local unsigned long served; /* requests this thread answered */

/* ------------------------------------------------------------------------ */
/* Connections (a pool) and requests (an arena), or malloc and free         */
/* ------------------------------------------------------------------------ */

typedef struct conn {
  int fd;
  size_t in_len; /* bytes in `in` */
  char *out;     /* the part of a response not written yet (owned), or NULL */
  size_t out_off, out_len;
  bool close_after; /* "Connection: close", or HTTP/1.0 without keep-alive */
  char in[CONN_BUFFER];
} conn_t;

typedef struct header {
  const char *name, *value;
} header_t;

/* What a request parsed: everything points into memory the request owns. */
typedef struct request {
  const char *method, *path, *version;
  header_t *headers;
  int header_count;
} request_t;

#ifndef HTTPD_MALLOC

static pantry_pool_t *conn_pool;

/* The pool's drop: runs exactly once per connection, when it is freed or
 * when the pool is destroyed with the connection still open. */
static void conn_drop(void *obj, void *ctx) {
  (void)ctx;
  conn_t *c = obj;
  if (c->fd >= 0)
    close(c->fd);
  pantry_free(c->out);
}

static void conns_init(void) {
  pantry_pool_config_t cfg = {
      .name = "conn", .layout = PANTRY_LAYOUT_OF(conn_t), .drop = conn_drop};
  conn_pool = pantry_pool_create(&cfg);
  if (conn_pool == NULL) {
    perror("pantry_pool_create");
    exit(1);
  }
}
static void conns_fini(void) { pantry_pool_destroy(conn_pool); }
static conn_t *conn_new(void) { return pantry_pool_alloc(conn_pool); }
static void conn_free(conn_t *c) { pantry_pool_free(conn_pool, c); } /* drop closes */
static void *out_alloc(size_t n) { return pantry_malloc(n); }
static void out_free(void *p) { pantry_free(p); }

/* A request's scope: an arena. */
typedef struct scope {
  pantry_arena_t *arena;
} scope_t;

static void close_fd_drop(void *obj, void *ctx) {
  (void)ctx;
  close(*(int *)obj);
}

static bool scope_begin(scope_t *s) {
  s->arena = pantry_arena_create(&(pantry_arena_config_t){.name = "request"});
  return s->arena != NULL;
}
static void *scope_alloc(scope_t *s, size_t n) { return pantry_arena_alloc(s->arena, n, 16); }
/* The n bytes at p and a NUL, copied as the malloc build copies them (a NUL
 * inside the head only shortens the string, so no strnlen first, as
 * pantry_arena_strndup has); pantry_arena_alloc is the header's inline bump. */
static char *scope_strndup(scope_t *s, const char *p, size_t n) {
  char *q = pantry_arena_alloc(s->arena, n + 1, 1);
  if (q != NULL) {
    memcpy(q, p, n);
    q[n] = '\0';
  }
  return q;
}
/* The arena owns `fd` from now on: its drop closes it. */
static bool scope_own_fd(scope_t *s, int fd) {
  int *slot = pantry_arena_new(s->arena, PANTRY_LAYOUT_OF(int), close_fd_drop, NULL);
  if (slot == NULL) {
    close(fd);
    return false;
  }
  *slot = fd;
  return true;
}
static void scope_end(scope_t *s) { pantry_arena_destroy(s->arena); } /* drops, then frees */

#else /* HTTPD_MALLOC: the same objects with malloc and free */

static void conns_init(void) {}
static void conns_fini(void) {}
static conn_t *conn_new(void) { return malloc(sizeof(conn_t)); }
static void conn_free(conn_t *c) {
  if (c->fd >= 0)
    close(c->fd);
  free(c->out);
  free(c);
}
static void *out_alloc(size_t n) { return malloc(n); }
static void out_free(void *p) { free(p); }

/* A request's scope: every object malloc'd on its own and freed at the end,
 * and the descriptors it opened, closed at the end. */
typedef struct scope {
  void **blocks;
  int count, cap;
  int fds[4];
  int nfds;
} scope_t;

static bool scope_begin(scope_t *s) {
  s->cap = 16;
  s->count = 0;
  s->nfds = 0;
  s->blocks = malloc(sizeof(void *) * (size_t)s->cap);
  return s->blocks != NULL;
}
static void *scope_alloc(scope_t *s, size_t n) {
  if (s->count == s->cap) {
    void **grown = realloc(s->blocks, sizeof(void *) * (size_t)s->cap * 2);
    if (grown == NULL)
      return NULL;
    s->blocks = grown;
    s->cap *= 2;
  }
  void *p = malloc(n);
  if (p != NULL)
    s->blocks[s->count++] = p;
  return p;
}
static char *scope_strndup(scope_t *s, const char *p, size_t n) {
  char *q = scope_alloc(s, n + 1);
  if (q != NULL) {
    memcpy(q, p, n);
    q[n] = '\0';
  }
  return q;
}
static bool scope_own_fd(scope_t *s, int fd) {
  if (s->nfds == 4) {
    close(fd);
    return false;
  }
  s->fds[s->nfds++] = fd;
  return true;
}
static void scope_end(scope_t *s) {
  for (int i = 0; i < s->nfds; i++)
    close(s->fds[i]);
  for (int i = 0; i < s->count; i++)
    free(s->blocks[i]);
  free(s->blocks);
}

#endif /* HTTPD_MALLOC */

/* ------------------------------------------------------------------------ */
/* HTTP                                                                     */
/* ------------------------------------------------------------------------ */

/* Parse the request head in [p, p + n) (ending with the blank line) into
 * `req`, copying every piece into the request's scope. */
static bool parse_request(scope_t *s, const char *p, size_t n, request_t *req) {
  const char *end = p + n;
  const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
  if (eol == NULL)
    return false;
  const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
  const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
  if (sp1 == NULL || sp2 == NULL)
    return false;
  req->method = scope_strndup(s, p, (size_t)(sp1 - p));
  req->path = scope_strndup(s, sp1 + 1, (size_t)(sp2 - sp1 - 1));
  req->version = scope_strndup(s, sp2 + 1, (size_t)(eol - sp2 - 1));
  req->headers = scope_alloc(s, sizeof(header_t) * MAX_HEADERS);
  req->header_count = 0;
  if (!req->method || !req->path || !req->version || !req->headers)
    return false;
  for (p = eol + 2; p < end;) {
    eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    if (eol == NULL || eol == p)
      break; /* the blank line */
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (colon == NULL)
      return false;
    const char *v = colon + 1;
    while (v < eol && (*v == ' ' || *v == '\t'))
      v++;
    if (req->header_count < MAX_HEADERS) {
      header_t *h = &req->headers[req->header_count++];
      h->name = scope_strndup(s, p, (size_t)(colon - p));
      h->value = scope_strndup(s, v, (size_t)(eol - v));
      if (!h->name || !h->value)
        return false;
    }
    p = eol + 2;
  }
  return true;
}

static const char *header_get(const request_t *req, const char *name) {
  for (int i = 0; i < req->header_count; i++)
    if (strcasecmp(req->headers[i].name, name) == 0)
      return req->headers[i].value;
  return NULL;
}

static const char *content_type(const char *path) {
  const char *dot = strrchr(path, '.');
  if (dot == NULL)
    return "application/octet-stream";
  if (strcmp(dot, ".html") == 0)
    return "text/html; charset=utf-8";
  if (strcmp(dot, ".css") == 0)
    return "text/css";
  if (strcmp(dot, ".js") == 0)
    return "text/javascript";
  if (strcmp(dot, ".json") == 0)
    return "application/json";
  if (strcmp(dot, ".txt") == 0)
    return "text/plain; charset=utf-8";
  return "application/octet-stream";
}

/* Send what is left of c->out; false when the connection failed. */
static bool conn_flush(conn_t *c) {
  while (c->out_off < c->out_len) {
    ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && errno == EAGAIN)
      return true;
    if (w <= 0)
      return false;
    c->out_off += (size_t)w;
  }
  out_free(c->out);
  c->out = NULL;
  c->out_off = c->out_len = 0;
  return true;
}

/* Write `n` bytes of the response; what the socket does not take now is
 * copied into memory the connection owns (the request's dies with it). */
static bool conn_send(conn_t *c, const char *p, size_t n) {
  if (c->out == NULL) {
    while (n > 0) {
      ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR)
        continue;
      if (w < 0 && errno == EAGAIN)
        break;
      if (w <= 0)
        return false;
      p += w;
      n -= (size_t)w;
    }
    if (n == 0)
      return true;
    c->out = out_alloc(n);
    if (c->out == NULL)
      return false;
    memcpy(c->out, p, n);
    c->out_off = 0;
    c->out_len = n;
    return true;
  }
  char *grown = out_alloc(c->out_len - c->out_off + n);
  if (grown == NULL)
    return false;
  memcpy(grown, c->out + c->out_off, c->out_len - c->out_off);
  memcpy(grown + c->out_len - c->out_off, p, n);
  c->out_len = c->out_len - c->out_off + n;
  c->out_off = 0;
  out_free(c->out);
  c->out = grown;
  return true;
}

static bool send_status(conn_t *c, scope_t *s, int code, const char *reason) {
  size_t cap = 256;
  char *buf = scope_alloc(s, cap);
  if (buf == NULL)
    return false;
  int n = snprintf(
      buf, cap, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n%s\n",
      code, reason, strlen(reason) + 1, c->close_after ? "Connection: close\r\n" : "", reason);
  return conn_send(c, buf, (size_t)n);
}

/* Serve one request whose head is [p, p + n). The request's memory and the
 * file's descriptor are dropped when this returns (scope_end). */
static bool serve(conn_t *c, const char *p, size_t n) {
  scope_t scope;
  if (!scope_begin(&scope))
    return false;
  request_t req;
  bool ok;
  if (!parse_request(&scope, p, n, &req)) {
    c->close_after = true;
    ok = send_status(c, &scope, 400, "Bad Request");
    scope_end(&scope);
    return ok;
  }
  const char *connection = header_get(&req, "Connection");
  bool http10 = strcmp(req.version, "HTTP/1.0") == 0;
  c->close_after = connection ? strcasecmp(connection, "close") == 0
                              : http10; /* 1.0 closes unless asked not to */
  if (http10 && connection && strcasecmp(connection, "keep-alive") == 0)
    c->close_after = false;
  bool head = strcmp(req.method, "HEAD") == 0;
  if (!head && strcmp(req.method, "GET") != 0) {
    ok = send_status(c, &scope, 405, "Method Not Allowed");
  } else if (strlen(req.path) > MAX_PATH) {
    ok = send_status(c, &scope, 414, "URI Too Long");
  } else if (req.path[0] != '/' || strstr(req.path, "..") != NULL) {
    ok = send_status(c, &scope, 400, "Bad Request");
  } else {
    const char *q = strchr(req.path, '?');
    size_t plen = q ? (size_t)(q - req.path) : strlen(req.path);
    bool dir = req.path[plen - 1] == '/';
    size_t cap = strlen(root) + plen + 16;
    char *file = scope_alloc(&scope, cap);
    int fd = -1;
    struct stat st;
    if (file != NULL) {
      snprintf(file, cap, "%s%.*s%s", root, (int)plen, req.path, dir ? "index.html" : "");
      fd = open(file, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0 || !scope_own_fd(&scope, fd) || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ok = send_status(c, &scope, 404, "Not Found");
    } else {
      size_t size = (size_t)st.st_size;
      size_t head_cap = 256;
      char *resp = scope_alloc(&scope, head_cap + (head ? 0 : size));
      if (resp == NULL) {
        ok = false;
      } else {
        int hn = snprintf(resp, head_cap,
                          "HTTP/1.1 200 OK\r\nServer: pantry-httpd\r\nContent-Type: %s\r\n"
                          "Content-Length: %zu\r\n%s\r\n",
                          content_type(file), size, c->close_after ? "Connection: close\r\n" : "");
        size_t body = 0;
        while (!head && body < size) {
          ssize_t r = pread(fd, resp + hn + body, size - body, (off_t)body);
          if (r <= 0)
            break;
          body += (size_t)r;
        }
        ok = (head || body == size) && conn_send(c, resp, (size_t)hn + body);
      }
    }
  }
  scope_end(&scope);
  served++;
  return ok;
}

/* Serve every complete request in c->in. False: close the connection. */
static bool conn_readable(conn_t *c) {
  for (;;) {
    ssize_t r = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0 && errno == EAGAIN)
      break;
    if (r <= 0)
      return false;
    c->in_len += (size_t)r;
    for (;;) {
      char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
      if (end == NULL)
        break;
      size_t n = (size_t)(end + 4 - c->in);
      if (!serve(c, c->in, n))
        return false;
      memmove(c->in, c->in + n, c->in_len - n);
      c->in_len -= n;
      if (c->close_after)
        return c->out != NULL; /* close once written */
    }
    if (c->in_len == sizeof c->in) { /* a head larger than the buffer */
      c->close_after = true;
      scope_t s;
      if (scope_begin(&s)) {
        send_status(c, &s, 431, "Request Header Fields Too Large");
        scope_end(&s);
      }
      return false;
    }
  }
  return true;
}

/* ------------------------------------------------------------------------ */
/* Threads                                                                  */
/* ------------------------------------------------------------------------ */

struct worker {
  pthread_t thread;
  int listen_fd;
  unsigned long requests; /* read after join */
};

static int listen_on(const char *address, int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, address, &addr.sin_addr) != 1 ||
      bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 1024) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void conn_close(int ep, conn_t *c) {
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  conn_free(c); /* closes the socket */
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, w->listen_fd, &ev);
  struct epoll_event events[64];
  while (!atomic_load_explicit(&stopping, memory_order_relaxed)) {
    int n = epoll_wait(ep, events, 64, 100);
    for (int i = 0; i < n; i++) {
      conn_t *c = events[i].data.ptr;
      if (c == NULL) { /* the listening socket */
        for (;;) {
          int fd = accept4(w->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0)
            break;
          int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          conn_t *nc = conn_new();
          if (nc == NULL) {
            close(fd);
            continue;
          }
          nc->fd = fd;
          nc->in_len = 0;
          nc->out = NULL;
          nc->out_off = nc->out_len = 0;
          nc->close_after = false;
          struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP,
                                    .data.ptr = nc};
          if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) != 0)
            conn_free(nc);
        }
        continue;
      }
      bool alive = true;
      if (events[i].events & (EPOLLERR | EPOLLHUP))
        alive = false;
      if (alive && (events[i].events & EPOLLOUT) && c->out != NULL)
        alive = conn_flush(c);
      if (alive && (events[i].events & (EPOLLIN | EPOLLRDHUP)))
        alive = conn_readable(c);
      if (alive && c->close_after && c->out == NULL)
        alive = false;
      if (!alive)
        conn_close(ep, c);
    }
  }
  w->requests = served;
  close(ep); /* connections left open are closed when the pool is destroyed */
  return NULL;
}

static void on_signal(int sig) {
  (void)sig;
  atomic_store(&stopping, true);
}

static int cpu_count(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

int main(int argc, char **argv) {
  int port = 8080, threads = cpu_count();
  const char *address = "127.0.0.1";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
      port = atoi(argv[++i]);
    else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
      threads = atoi(argv[++i]);
    else if (strcmp(argv[i], "--root") == 0 && i + 1 < argc)
      root = argv[++i];
    else if (strcmp(argv[i], "--address") == 0 && i + 1 < argc)
      address = argv[++i];
    else {
      fprintf(stderr, "usage: %s [--port N] [--threads N] [--root DIR] [--address A]\n", argv[0]);
      return 2;
    }
  }
  if (threads < 1)
    threads = 1;
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  conns_init();
  struct worker *workers = calloc((size_t)threads, sizeof *workers);
  for (int t = 0; t < threads; t++) {
    workers[t].listen_fd = listen_on(address, port);
    if (workers[t].listen_fd < 0) {
      fprintf(stderr, "httpd: cannot listen on %s:%d: %s\n", address, port, strerror(errno));
      return 1;
    }
  }
  for (int t = 0; t < threads; t++)
    pthread_create(&workers[t].thread, NULL, worker_main, &workers[t]);
  printf("httpd (%s): listening on %s:%d, %d threads, root %s\n",
#ifdef HTTPD_MALLOC
         "malloc",
#else
         "pantry",
#endif
         address, port, threads, root);
  fflush(stdout);
  unsigned long requests = 0;
  for (int t = 0; t < threads; t++) {
    pthread_join(workers[t].thread, NULL);
    close(workers[t].listen_fd);
    requests += workers[t].requests;
  }
  free(workers);
  conns_fini(); /* pantry: drops (closes) every connection still open */
  printf("httpd: stopped after %lu requests\n", requests);
  return 0;
}
