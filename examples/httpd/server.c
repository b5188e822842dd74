/* server.c -- aorm-httpd's HTTP/1.1 side: one worker's accept loop,
 * connections (keep-alive, pipelining), bounded requests, timeouts, the
 * response queue and the graceful stop.
 *
 * Parsing is Debian's http_parser 2.9. Requests of one connection are
 * dispatched as soon as they are parsed (pipelined requests run at the
 * same time and share the engine's pipelines) and answered in order: each
 * request keeps its response until the ones before it have theirs. At most
 * max_pipeline requests of a connection are in flight; past that the
 * parser is paused and reading stops until answers go out.
 *
 * Output is written from one ev_prepare watcher (flush_cb), right before
 * the loop polls: the answers of everything that completed in a loop turn
 * leave in one write per connection, and no request, session, owner or
 * connection is ever freed from inside an engine callback (req_reply only
 * marks the connection; flush_cb then frees the answered requests'
 * sessions and owners, which cancels what is left of their work).
 * Connections are closed only from this file's own watchers.
 *
 * Timeouts, one timer per connection, by state: a request being received
 * (from its first byte) or a response the client does not read gets
 * request_timeout (408, or a plain close); a keep-alive connection with
 * nothing to do gets idle_timeout; requests waiting for the database get
 * none here (their statements' deadlines answer 504).
 *
 * Stop (SIGTERM): the listening socket is closed, idle connections close,
 * busy ones stop reading and close after their last answer; after
 * shutdown_grace the rest are closed, which frees their requests and so
 * cancels their work through each request's owner. Then the handlers'
 * state, the engine and the loops are freed, in that order. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct server_worker {
    ev_io accept_w;
    ev_async stop_w;
    ev_prepare flush_w;
    ev_timer grace_w;
    conn *conns;       /* every open connection */
    conn *dirty;       /* connections with answers to move out or bytes to write */
    bool stopping;
} server_worker;

struct conn {
    worker *w;
    int fd;
    ev_io io;
    ev_timer timer;
    http_parser parser;
    char *in;            /* received, not yet parsed (paused parser) */
    size_t in_len, in_cap;
    req *parsing;        /* the request being received */
    req *head, *tail;    /* dispatched requests, in order */
    int inflight;        /* requests in head..tail */
    char *out;
    size_t out_len, out_off, out_cap;
    int nheaders;
    size_t header_bytes;
    bool in_value;       /* the parser's last header callback was a value */
    char hname[8], hvalue[16]; /* the current header's name and value, lowercased, when short */
    size_t hname_len, hvalue_len;
    bool expect_continue; /* Expect: 100-continue */
    int reject_status;   /* set by a parser callback that refuses the request */
    const char *reject_msg;
    bool no_more_input;  /* stop reading: Connection: close, error, or stopping */
    bool want_close;     /* close once the queue is empty and the output written */
    bool lingering;      /* write side shut: reading and dropping until EOF */
    bool resume;         /* the parser was paused: parse what is buffered again */
    bool is_dirty;
    bool write_blocked;
    double request_began, write_began, linger_began, last_active;
    conn *prev, *next, *dirty_next;
    char remote[64];
};

static server_worker *sw_of(worker *w) { return w->impl; }

/* ==== requests =========================================================== */

static void req_free(req *r) {
    r->gone = true;
    if (!r->replied && r->c) r->w->http.cancelled++;
    /* their callbacks run inside these calls, see req_gone() */
    aorm_session_free(r->s);
    r->s = NULL;
    aorm_owner_free(r->owner);
    r->owner = NULL;
    if (r->ctx_free) r->ctx_free(r->ctx);
    free(r->url);
    free(r->path);
    free(r->body);
    free(r->resp);
    free(r);
}

static void conn_mark(conn *c) {
    if (c->is_dirty) return;
    server_worker *sw = sw_of(c->w);
    c->is_dirty = true;
    c->dirty_next = sw->dirty;
    sw->dirty = c;
}

static const char *status_text(int status) {
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

/* The Date header's value, formatted once per second per worker. */
static const char *http_date(worker *w) {
    static _Thread_local time_t last;
    static _Thread_local char text[40];
    time_t now = (time_t)ev_now(w->evl);
    if (now != last) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(text, sizeof text, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        last = now;
    }
    return text;
}

static void access_log(req *r) {
    FILE *f = r->w->cfg->access_log;
    if (!f) return;
    static const char *const methods[] = {
#define XX(num, name, string) [num] = #string,
        HTTP_METHOD_MAP(XX)
#undef XX
    };
    double now = ev_now(r->w->evl);
    time_t t = (time_t)now;
    struct tm tm;
    gmtime_r(&t, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    json_t *path = json_string(r->path ? r->path : "");
    char *path_text = path ? json_dumps(path, JSON_ENCODE_ANY) : NULL;
    char line[512];
    int n = snprintf(line, sizeof line,
                     "{\"time\":\"%s.%03dZ\",\"worker\":%d,\"remote\":\"%s\",\"method\":\"%s\",\"path\":%s,"
                     "\"status\":%d,\"bytes\":%zu,\"ms\":%.3f}\n",
                     ts, (int)((now - (double)t) * 1000), r->w->index, r->c ? r->c->remote : "",
                     r->method >= 0 && r->method < (int)(sizeof methods / sizeof *methods) && methods[r->method]
                         ? methods[r->method] : "?",
                     path_text ? path_text : "\"\"", r->status, r->resp_len, (now - r->started) * 1000);
    free(path_text);
    json_decref(path);
    if (n > 0) fwrite(line, 1, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1, f);
}

/* Builds r's response. */
static void build_response(req *r, int status, const char *content_type, const char *body, size_t len) {
    server_worker *sw = sw_of(r->w);
    bool close = !r->keep_alive || (sw->stopping && r->next == NULL);
    char head[512];
    int n;
    if (status == 204)
        n = snprintf(head, sizeof head, "HTTP/1.1 204 No Content\r\nServer: aorm-httpd\r\nDate: %s\r\n%s\r\n",
                     http_date(r->w), close ? "Connection: close\r\n" : "");
    else
        n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nServer: aorm-httpd\r\nDate: %s\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\n%s\r\n",
                     status, status_text(status), http_date(r->w), content_type, len,
                     close ? "Connection: close\r\n" : "");
    if (status == 204) len = 0;
    r->resp = malloc((size_t)n + len);
    if (!r->resp) { /* no answer possible: the connection closes after the answers before it */
        r->resp_len = 0;
        r->keep_alive = false;
        return;
    }
    memcpy(r->resp, head, (size_t)n);
    if (len) memcpy(r->resp + n, body, len);
    r->resp_len = (size_t)n + len;
    r->status = status;
    if (close) r->keep_alive = false;
    http_counters *hc = &r->w->http;
    hc->responses++;
    if (status < 300) hc->status_2xx++;
    else if (status < 500) hc->status_4xx++;
    else hc->status_5xx++;
}

void req_reply(req *r, int status, const char *content_type, const char *body, size_t len) {
    if (req_gone(r)) return;
    r->replied = true;
    build_response(r, status, content_type, body, len);
    access_log(r);
    /* the request's session and owner go in flush_cb, before the loop
     * polls again: never from inside the engine callback that answered */
    if (r->c) conn_mark(r->c);
}

void req_reply_json(req *r, int status, json_t *j) {
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(j);
    if (!text) {
        static const char oom[] = "{\"error\":\"out of memory\"}";
        req_reply(r, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    req_reply(r, status, "application/json", text, strlen(text));
    free(text);
}

void req_reply_error(req *r, int status, const char *message, const aorm_error *err) {
    json_t *j = json_object();
    json_object_set_new(j, "error", json_string(message));
    if (err && err->sqlstate[0]) json_object_set_new(j, "sqlstate", json_string(err->sqlstate));
    if (err && err->constraint[0]) json_object_set_new(j, "constraint", json_string(err->constraint));
    req_reply_json(r, status, j);
}

void req_reply_aorm(req *r, const char *what, const aorm_error *err) {
    if (req_gone(r)) return;
    int status = 500;
    switch (err->code) {
    case AORM_EPOOLTIMEOUT:
    case AORM_ECONNECT:
    case AORM_ECONNLOST:
    case AORM_EAUTH:
        status = 503;
        break;
    case AORM_ETIMEOUT:
        status = 504;
        break;
    case AORM_ESERVER:
        if (aorm_error_is(err, "23505")) status = 409;
        else if (aorm_error_is(err, "57014")) status = 504;
        else if (!strncmp(err->sqlstate, "23", 2) || !strncmp(err->sqlstate, "22", 2)) status = 422;
        break;
    default:
        break;
    }
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s", what, err->message);
    req_reply_error(r, status, msg, err);
}

void req_reply_code(req *r, const char *what, int code) {
    aorm_error e = {.code = code, .message = aorm_strerror(code), .detail = "", .hint = "", .constraint = "",
                    .table = "", .column = ""};
    req_reply_aorm(r, what, &e);
}

int32_t worker_random(worker *w, int32_t n) {
    uint64_t x = w->rng;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    w->rng = x;
    return (int32_t)(x % (uint64_t)n) + 1;
}

/* ==== connections ======================================================== */

static void conn_arm(conn *c);

static void conn_close(conn *c) {
    worker *w = c->w;
    server_worker *sw = sw_of(w);
    if (c->parsing) req_free(c->parsing);
    while (c->head) {
        req *r = c->head;
        c->head = r->next;
        req_free(r);
    }
    c->tail = NULL;
    if (c->is_dirty) {
        for (conn **p = &sw->dirty; *p; p = &(*p)->dirty_next)
            if (*p == c) { *p = c->dirty_next; break; }
    }
    if (c->prev) c->prev->next = c->next;
    else sw->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    ev_io_stop(w->evl, &c->io);
    ev_timer_stop(w->evl, &c->timer);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
    w->http.closed++;
    if (sw->stopping && !sw->conns) ev_break(w->evl, EVBREAK_ALL);
}

/* Shuts the write side and drops what the client still sends, so that a
 * close with unread input (a refused body) does not reset the answer. */
static void conn_linger(conn *c) {
    c->lingering = true;
    c->linger_began = ev_now(c->w->evl);
    shutdown(c->fd, SHUT_WR);
    ev_io_stop(c->w->evl, &c->io);
    ev_io_set(&c->io, c->fd, EV_READ);
    ev_io_start(c->w->evl, &c->io);
    conn_arm(c);
}

static void conn_watch(conn *c) {
    if (c->lingering) return;
    /* no reading while the client does not read its answers: what it
     * sends meanwhile waits in the kernel, not in our buffers */
    int ev = (c->no_more_input || c->resume || c->write_blocked ? 0 : EV_READ) | (c->write_blocked ? EV_WRITE : 0);
    if (ev == (c->io.events & (EV_READ | EV_WRITE)) && ev_is_active(&c->io)) return;
    ev_io_stop(c->w->evl, &c->io);
    ev_io_set(&c->io, c->fd, ev);
    if (ev) ev_io_start(c->w->evl, &c->io);
}

static void conn_arm(conn *c) {
    const config *cfg = c->w->cfg;
    double now = ev_now(c->w->evl), at;
    if (c->lingering) at = c->linger_began + 2.0;
    else if (c->write_blocked) at = c->write_began + cfg->request_timeout;
    else if (c->parsing && c->request_began > 0) at = c->request_began + cfg->request_timeout;
    else if (c->inflight > 0 || c->in_len > 0) { ev_timer_stop(c->w->evl, &c->timer); return; }
    else at = c->last_active + cfg->idle_timeout;
    double after = at - now;
    if (after < 0.001) after = 0.001;
    ev_timer_stop(c->w->evl, &c->timer);
    ev_timer_set(&c->timer, after, 0);
    ev_timer_start(c->w->evl, &c->timer);
}

/* Queues an answer of the server's own (a refused or malformed request)
 * behind the requests already dispatched, and closes after it. */
static void conn_refuse(conn *c, int status, const char *message) {
    req *r = calloc(1, sizeof *r);
    c->no_more_input = true;
    c->want_close = true;
    if (!r) return;
    r->c = c, r->w = c->w, r->method = -1, r->started = ev_now(c->w->evl);
    r->keep_alive = false;
    if (c->tail) c->tail->next = r;
    else c->head = r;
    c->tail = r;
    c->inflight++;
    c->w->http.requests++;
    req_reply_error(r, status, message, NULL);
}

/* Appends the answers at the head of the queue to the output. */
static void conn_take_answers(conn *c) {
    while (c->head && c->head->replied) {
        req *r = c->head;
        if (r->resp_len) {
            if (c->out_len + r->resp_len > c->out_cap) {
                size_t cap = c->out_cap ? c->out_cap : 4096;
                while (cap < c->out_len + r->resp_len) cap *= 2;
                char *o = realloc(c->out, cap);
                if (!o) { c->want_close = true; c->no_more_input = true; return; }
                c->out = o, c->out_cap = cap;
            }
            memcpy(c->out + c->out_len, r->resp, r->resp_len);
            c->out_len += r->resp_len;
        }
        bool last = !r->keep_alive;
        if (last) {
            c->want_close = true;
            c->no_more_input = true;
        }
        c->head = r->next;
        if (!c->head) c->tail = NULL;
        c->inflight--;
        req_free(r);
        if (last) { /* nothing after a closing answer is sent */
            while (c->head) {
                req *x = c->head;
                c->head = x->next;
                c->inflight--;
                req_free(x);
            }
            c->tail = NULL;
        }
    }
}

/* Writes what is buffered. Returns -1 when the connection was closed. */
static int conn_write(conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) { c->out_off += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->write_blocked) c->write_began = ev_now(c->w->evl);
            c->write_blocked = true;
            conn_watch(c);
            conn_arm(c);
            return 0;
        }
        conn_close(c);
        return -1;
    }
    c->out_off = c->out_len = 0;
    c->write_blocked = false;
    if (c->resume && c->inflight < c->w->cfg->max_pipeline) conn_mark(c); /* the paused parser goes on in flush_cb */
    c->last_active = ev_now(c->w->evl);
    if (c->want_close && !c->head && !c->parsing) {
        conn_linger(c);
        return 0;
    }
    conn_watch(c);
    conn_arm(c);
    return 0;
}

static int conn_parse(conn *c);

/* The flush stage: answers out, bytes written, paused parsers resumed. */
static void flush_cb(struct ev_loop *evl, ev_prepare *p, int revents) {
    server_worker *sw = p->data;
    while (sw->dirty) {
        conn *c = sw->dirty;
        sw->dirty = c->dirty_next;
        c->is_dirty = false;
        /* the work left of answered requests is cancelled (their callbacks
         * see req_gone() and return), also behind an unanswered one */
        for (req *r = c->head; r; r = r->next)
            if (r->replied && (r->s || r->owner)) {
                aorm_session_free(r->s);
                r->s = NULL;
                aorm_owner_free(r->owner);
                r->owner = NULL;
            }
        conn_take_answers(c);
        if (c->resume && c->inflight < c->w->cfg->max_pipeline && !c->no_more_input && !c->write_blocked) {
            c->resume = false;
            if (conn_parse(c) < 0) continue;
        }
        if (conn_write(c) < 0) continue;
    }
}

/* ==== the parser's callbacks ============================================== */

static int grow_append(char **data, size_t *len, const char *at, size_t n) {
    char *b = realloc(*data, *len + n + 1);
    if (!b) return -1;
    memcpy(b + *len, at, n);
    *len += n;
    b[*len] = 0;
    *data = b;
    return 0;
}

static int refuse(conn *c, int status, const char *msg) {
    c->reject_status = status;
    c->reject_msg = msg;
    return -1;
}

static int on_message_begin(http_parser *p) {
    conn *c = p->data;
    req *r = calloc(1, sizeof *r);
    if (!r) return refuse(c, 500, "out of memory");
    r->c = c, r->w = c->w, r->started = ev_now(c->w->evl);
    c->parsing = r;
    c->nheaders = 0, c->header_bytes = 0, c->in_value = false, c->expect_continue = false;
    c->hname_len = c->hvalue_len = 0;
    if (c->request_began == 0) c->request_began = r->started;
    return 0;
}

static int count_header_bytes(conn *c, size_t n) {
    c->header_bytes += n;
    return c->header_bytes > c->w->cfg->max_header_bytes ? refuse(c, 431, "request line and headers too large") : 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
    conn *c = p->data;
    if (count_header_bytes(c, n)) return -1;
    return grow_append(&c->parsing->url, &c->parsing->url_len, at, n) ? refuse(c, 500, "out of memory") : 0;
}

/* Keeps a short lowercased copy (longer ones: len past the buffer). */
static void keep_short(char *dst, size_t cap, size_t *len, const char *at, size_t n) {
    for (size_t i = 0; i < n; i++, (*len)++)
        if (*len < cap) dst[*len] = (char)(at[i] >= 'A' && at[i] <= 'Z' ? at[i] + 32 : at[i]);
}

/* The header just read in full: only Expect matters here. */
static void header_done(conn *c) {
    if (c->hname_len == 6 && memcmp(c->hname, "expect", 6) == 0 && c->hvalue_len == 12 &&
        memcmp(c->hvalue, "100-continue", 12) == 0)
        c->expect_continue = true;
    c->hname_len = c->hvalue_len = 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
    conn *c = p->data;
    if (!c->in_value && c->nheaders == 0) c->nheaders = 1;
    else if (c->in_value) { c->nheaders++; header_done(c); }
    c->in_value = false;
    keep_short(c->hname, sizeof c->hname, &c->hname_len, at, n);
    if (c->nheaders > c->w->cfg->max_headers) return refuse(c, 431, "too many headers");
    return count_header_bytes(c, n);
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
    conn *c = p->data;
    c->in_value = true;
    keep_short(c->hvalue, sizeof c->hvalue, &c->hvalue_len, at, n);
    return count_header_bytes(c, n);
}

static int on_headers_complete(http_parser *p) {
    conn *c = p->data;
    req *r = c->parsing;
    if (c->in_value) header_done(c);
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->w->cfg->max_body)
        return refuse(c, 413, "request body too large");
    /* a client waiting for 100 Continue before its body gets it at once,
     * when no answer is due before it (otherwise it sends after its own
     * timeout) */
    bool body_follows = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENTLENGTH) && p->content_length > 0);
    if (c->expect_continue && body_follows && !c->head && c->out_off == c->out_len && !c->write_blocked) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        size_t len = sizeof cont - 1;
        ssize_t sent = send(c->fd, cont, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        /* nothing sent (a full socket): the client's own timeout sends the
         * body anyway; part of it: the rest goes first in the output */
        if (sent > 0 && (size_t)sent < len) {
            char *o = c->out_cap >= len ? c->out : realloc(c->out, 4096);
            if (!o) return refuse(c, 500, "out of memory");
            if (o != c->out) c->out = o, c->out_cap = 4096;
            memcpy(c->out, cont + sent, len - (size_t)sent);
            c->out_off = 0, c->out_len = len - (size_t)sent;
            conn_mark(c);
        }
    }
    r->method = p->method;
    r->keep_alive = http_should_keep_alive(p);
    if (!r->url) return refuse(c, 400, "empty request target");
    r->path = strdup(r->url);
    if (!r->path) return refuse(c, 500, "out of memory");
    char *q = strchr(r->path, '?');
    if (q) { *q = 0; r->query = q + 1; }
    char *frag = strchr(r->query ? r->query : r->path, '#');
    if (frag) *frag = 0;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
    conn *c = p->data;
    req *r = c->parsing;
    if (r->body_len + n > c->w->cfg->max_body) return refuse(c, 413, "request body too large");
    return grow_append(&r->body, &r->body_len, at, n) ? refuse(c, 500, "out of memory") : 0;
}

static int on_message_complete(http_parser *p) {
    conn *c = p->data;
    req *r = c->parsing;
    c->parsing = NULL;
    c->request_began = 0;
    if (c->tail) c->tail->next = r;
    else c->head = r;
    c->tail = r;
    c->inflight++;
    c->w->http.requests++;
    if (!r->keep_alive || sw_of(c->w)->stopping) c->no_more_input = true;
    r->owner = aorm_owner_new(c->w->e);
    if (!r->owner) req_reply_error(r, 503, "the server is shutting down", NULL);
    else handle_request(r);
    /* stop after this request when its connection ends with it, or when
     * enough of this connection's requests are in flight */
    if (c->no_more_input || c->inflight >= c->w->cfg->max_pipeline) http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin, .on_url = on_url, .on_header_field = on_header_field,
    .on_header_value = on_header_value, .on_headers_complete = on_headers_complete, .on_body = on_body,
    .on_message_complete = on_message_complete};

/* Parses what is buffered. Returns -1 when the connection was closed. */
static int conn_parse(conn *c) {
    if (c->in_len == 0) return 0;
    if (HTTP_PARSER_ERRNO(&c->parser) == HPE_PAUSED) http_parser_pause(&c->parser, 0);
    size_t n = http_parser_execute(&c->parser, &parser_settings, c->in, c->in_len);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (n > c->in_len) n = c->in_len;
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
    if (e == HPE_PAUSED) {
        if (!c->no_more_input) c->resume = true; /* flush_cb parses the rest when answers go out */
        c->in_len = c->no_more_input ? 0 : c->in_len;
    } else if (e != HPE_OK) {
        c->w->http.parse_errors++;
        if (c->parsing) { req_free(c->parsing); c->parsing = NULL; }
        c->in_len = 0;
        char msg[160];
        snprintf(msg, sizeof msg, "malformed HTTP request: %s", http_errno_description(e));
        conn_refuse(c, c->reject_status ? c->reject_status : 400, c->reject_status ? c->reject_msg : msg);
        conn_mark(c);
    }
    conn_watch(c);
    conn_arm(c);
    return 0;
}

static void conn_cb(struct ev_loop *evl, ev_io *io, int revents) {
    conn *c = io->data;
    if (c->lingering) {
        char drop[4096];
        ssize_t n = recv(c->fd, drop, sizeof drop, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) conn_close(c);
        return;
    }
    if (revents & EV_WRITE) {
        if (conn_write(c) < 0) return;
    }
    if (!(revents & EV_READ) || c->no_more_input) return;
    size_t limit = c->w->cfg->max_header_bytes + c->w->cfg->max_body + 4096;
    for (int rounds = 0; rounds < 4; rounds++) {
        if (c->in_cap - c->in_len < 4096) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 16384;
            if (cap > limit && c->in_cap >= limit) break; /* the paused parser holds enough */
            char *b = realloc(c->in, cap);
            if (!b) { conn_close(c); return; }
            c->in = b, c->in_cap = cap;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n == 0) {
            /* the client is gone (or half-closed): its unanswered requests are
             * cancelled, their work with them */
            conn_close(c);
            return;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            conn_close(c);
            return;
        }
        c->in_len += (size_t)n;
        c->last_active = ev_now(evl);
        if (c->request_began == 0 && !c->parsing) c->request_began = c->last_active;
        if (conn_parse(c) < 0) return;
        if (c->no_more_input || c->resume) break;
        if ((size_t)n < 4096) break;
    }
    if (!c->parsing && c->in_len == 0) c->request_began = 0;
    conn_arm(c);
}

static void conn_timeout_cb(struct ev_loop *evl, ev_timer *t, int revents) {
    conn *c = t->data;
    if (c->lingering) { conn_close(c); return; }
    if (c->write_blocked) { /* the client does not read its answers */
        c->w->http.timeouts++;
        conn_close(c);
        return;
    }
    if (c->parsing) { /* a slow client: its request did not arrive in time */
        c->w->http.timeouts++;
        req_free(c->parsing);
        c->parsing = NULL;
        c->in_len = 0;
        conn_refuse(c, 408, "request not received in time");
        conn_mark(c);
        conn_watch(c);
        return;
    }
    if (c->inflight > 0) return; /* waiting for the database: armed again by the answers */
    /* idle, unless a request came in the same loop turn as the timer (a
     * busy loop): closing then would reset it; its read callback comes */
    char byte;
    if (recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0) {
        c->last_active = ev_now(evl);
        conn_arm(c);
        return;
    }
    conn_close(c); /* idle keep-alive connection */
}

static void accept_cb(struct ev_loop *evl, ev_io *io, int revents) {
    worker *w = io->data;
    server_worker *sw = sw_of(w);
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage sa;
        socklen_t salen = sizeof sa;
        int fd = accept4(w->lfd, (struct sockaddr *)&sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or a transient error: the next readiness retries */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = calloc(1, sizeof *c);
        if (!c) { close(fd); continue; }
        c->w = w, c->fd = fd;
        c->last_active = ev_now(evl);
        if (sa.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)&sa;
            char ip[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
            snprintf(c->remote, sizeof c->remote, "%s:%d", ip, ntohs(in->sin_port));
        } else if (sa.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&sa;
            char ip[INET6_ADDRSTRLEN];
            inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
            snprintf(c->remote, sizeof c->remote, "[%s]:%d", ip, ntohs(in6->sin6_port));
        }
        http_parser_init(&c->parser, HTTP_REQUEST);
        c->parser.data = c;
        ev_io_init(&c->io, conn_cb, fd, EV_READ);
        c->io.data = c;
        ev_timer_init(&c->timer, conn_timeout_cb, w->cfg->idle_timeout, 0);
        c->timer.data = c;
        ev_io_start(evl, &c->io);
        conn_arm(c);
        c->next = sw->conns;
        if (sw->conns) sw->conns->prev = c;
        sw->conns = c;
        w->http.accepted++;
    }
}

/* ==== stopping ============================================================ */

static void grace_cb(struct ev_loop *evl, ev_timer *t, int revents) {
    worker *w = t->data;
    server_worker *sw = sw_of(w);
    while (sw->conns) conn_close(sw->conns); /* frees the requests: their owners cancel the work */
}

static void stop_cb(struct ev_loop *evl, ev_async *a, int revents) {
    worker *w = a->data;
    server_worker *sw = sw_of(w);
    if (sw->stopping) return;
    sw->stopping = true;
    ev_io_stop(evl, &sw->accept_w);
    close(w->lfd);
    w->lfd = -1;
    for (conn *c = sw->conns, *next; c; c = next) {
        next = c->next;
        if (c->inflight == 0 && !c->parsing && c->out_len == c->out_off) {
            conn_close(c);
            continue;
        }
        /* busy: no new requests; closes after its last answer */
        if (c->parsing) { req_free(c->parsing); c->parsing = NULL; }
        c->in_len = 0;
        c->no_more_input = true;
        c->want_close = true;
        c->resume = false;
        conn_watch(c);
        conn_arm(c);
    }
    if (!sw->conns) { ev_break(evl, EVBREAK_ALL); return; }
    ev_timer_init(&sw->grace_w, grace_cb, w->cfg->shutdown_grace, 0);
    sw->grace_w.data = w;
    ev_timer_start(evl, &sw->grace_w);
}

void worker_stop(worker *w) { ev_async_send(w->evl, &sw_of(w)->stop_w); }

/* ==== set-up and run ====================================================== */

static void on_engine_log(aorm_log_level level, const char *message, void *user) {
    worker *w = user;
    if (level <= AORM_LOG_WARN) fprintf(stderr, "aorm-httpd[%d]: %s\n", w->index, message);
}

int worker_init(worker *w) {
    server_worker *sw = calloc(1, sizeof *sw);
    if (!sw) return -1;
    w->impl = sw;
    w->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)(w->index + 1) * 0xbf58476d1ce4e5b9ull) ^ (uint64_t)time(NULL);
    if (!(w->evl = ev_loop_new(EVFLAG_AUTO)) || !(w->loop = aorm_loop_new_ev(w->evl))) {
        fprintf(stderr, "aorm-httpd[%d]: cannot create the event loop\n", w->index);
        return -1;
    }
    aorm_engine_options eo;
    aorm_engine_options_init(&eo);
    eo.conninfo = w->cfg->dsn;
    eo.pool_size = w->cfg->pool;
    eo.max_overflow = w->cfg->overflow;
    eo.pool_timeout = w->cfg->pool_timeout;
    eo.statement_timeout = w->cfg->deadline;
    eo.log = on_engine_log;
    eo.log_user = w;
    if (!(w->e = aorm_engine_new(w->loop, &eo))) {
        fprintf(stderr, "aorm-httpd[%d]: cannot create the engine (conninfo?)\n", w->index);
        return -1;
    }
    aorm_engine_warm(w->e);
    if (handlers_init(w) < 0) return -1;
    ev_io_init(&sw->accept_w, accept_cb, w->lfd, EV_READ);
    sw->accept_w.data = w;
    ev_io_start(w->evl, &sw->accept_w);
    ev_async_init(&sw->stop_w, stop_cb);
    sw->stop_w.data = w;
    ev_async_start(w->evl, &sw->stop_w);
    ev_prepare_init(&sw->flush_w, flush_cb);
    sw->flush_w.data = sw;
    ev_prepare_start(w->evl, &sw->flush_w);
    return 0;
}

void worker_run(worker *w, bool run) {
    server_worker *sw = sw_of(w);
    if (run) ev_run(w->evl, 0);
    /* sessions (with their requests), then the engine, then the loops */
    if (sw && w->evl) {
        while (sw->conns) conn_close(sw->conns);
        if (run) {
            ev_io_stop(w->evl, &sw->accept_w);
            ev_async_stop(w->evl, &sw->stop_w);
            ev_prepare_stop(w->evl, &sw->flush_w);
            ev_timer_stop(w->evl, &sw->grace_w);
        }
    }
    handlers_free(w);
    aorm_engine_free(w->e);
    w->e = NULL;
    aorm_loop_free(w->loop);
    w->loop = NULL;
    if (w->evl) ev_loop_destroy(w->evl);
    w->evl = NULL;
    if (w->lfd >= 0) close(w->lfd);
    w->lfd = -1;
    free(sw);
    w->impl = NULL;
}
