/* test_resolve.c -- host names and the engine's helper threads, against
 * the sandbox PostgreSQL: every address of a name reaches libpq as a
 * hostaddr list (A and AAAA, in getaddrinfo order, each once, host and
 * port lists expanded to match), a name that cannot be resolved is left
 * out of a multi-host list, a resolver that never answers fails the
 * connection attempt at its connect timeout while the loop runs on time,
 * lookups run several at once, and freeing the engine returns at once
 * while a lookup is stuck.
 *
 * No test sends anything off the machine. A test that resolves a name
 * first moves its process into a private mount namespace (each Criterion
 * test is a process of its own) and bind-mounts its own /etc/nsswitch.conf,
 * /etc/resolv.conf and, for `files`, /etc/hosts there; the resolv.conf
 * names a DNS server this file runs on a loopback address (127.x.y.z,
 * port 53), which answers as told or not at all. The one test that reads
 * the machine's own /etc/hosts resolves `localhost` through `files` only.
 * The names that connect are `localhost`, the name the sandbox's
 * certificate and password file are for. */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "support.h"


static int threads_now(void) {
    FILE *f = fopen("/proc/self/status", "r");
    cr_assert_not_null(f);
    char line[256];
    int n = -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "Threads:", 8) == 0) n = atoi(line + 8);
    fclose(f);
    return n;
}

/* ---- a private mount namespace with its own name service files ----------- */

static void bind_file(const char *target, const char *content) {
    char path[] = "/tmp/aorm-resolve-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0, "mkstemp: %s", strerror(errno));
    size_t len = strlen(content);
    cr_assert_eq(write(fd, content, len), (ssize_t)len);
    close(fd);
    chmod(path, 0644);
    cr_assert_eq(mount(path, target, NULL, MS_BIND, NULL), 0, "bind %s: %s", target, strerror(errno));
    unlink(path); /* the mount keeps it */
}

/* nsswitch "hosts:" line, /etc/hosts content, resolv.conf nameserver */
static void private_names(const char *hosts_sources, const char *hosts_file, const char *nameserver) {
    cr_assert_eq(unshare(CLONE_NEWNS), 0, "unshare(CLONE_NEWNS): %s", strerror(errno));
    cr_assert_eq(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), 0, "make / private: %s", strerror(errno));
    char buf[512];
    snprintf(buf, sizeof(buf), "hosts: %s\n", hosts_sources);
    bind_file("/etc/nsswitch.conf", buf);
    bind_file("/etc/hosts", hosts_file ? hosts_file : "");
    /* glibc waits up to 30 s for an answer: long enough for "never" */
    snprintf(buf, sizeof(buf), "nameserver %s\noptions timeout:30 attempts:1\n", nameserver);
    bind_file("/etc/resolv.conf", buf);
}

/* ---- a DNS server on loopback -------------------------------------------- */

enum { DNS_ANSWER, DNS_HANG };

typedef struct held_query {
    struct sockaddr_in from;
    unsigned char q[512];
    int len;
} held_query;

typedef struct dns {
    int fd;
    int stop[2];
    char ip[32];
    pthread_t thread;
    pthread_mutex_t mu;
    int mode;
    int queries;
    int ports[64];           /* distinct source ports: one per resolver socket */
    int nports;
    held_query held[64];
    int nheld;
    const char *name;        /* the one name it knows (others: NXDOMAIN) */
    const char *a4[4], *a6[4];
    int n4, n6;
} dns;

static void put16(unsigned char *p, int v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

/* The answer to query q: its header and question, then the records of
 * d->name of the type asked for. */
static int dns_answer(dns *d, const unsigned char *q, int len, unsigned char *out, int cap) {
    if (len < 12) return -1;
    int p = 12, nl = 0;
    char name[256];
    while (p < len && q[p]) {
        int l = q[p];
        if (l > 63 || p + 1 + l > len || nl + l + 2 > (int)sizeof(name)) return -1;
        if (nl) name[nl++] = '.';
        memcpy(name + nl, q + p + 1, (size_t)l);
        nl += l;
        p += 1 + l;
    }
    if (p + 5 > len) return -1;
    name[nl] = '\0';
    p++;
    int qtype = q[p] << 8 | q[p + 1];
    p += 4;
    memcpy(out, q, (size_t)p);
    bool known = d->name && strcasecmp(name, d->name) == 0;
    out[2] = (unsigned char)(0x80 | (q[2] & 0x01)); /* a response; RD as asked */
    out[3] = (unsigned char)(0x80 | (known ? 0 : 3)); /* RA; NOERROR or NXDOMAIN */
    put16(out + 4, 1);
    put16(out + 8, 0);
    put16(out + 10, 0);
    int an = 0;
    const char **addrs = qtype == 1 ? d->a4 : d->a6;
    int n = !known ? 0 : qtype == 1 ? d->n4 : qtype == 28 ? d->n6 : 0;
    for (int i = 0; i < n; i++) {
        int rdlen = qtype == 1 ? 4 : 16;
        if (p + 12 + rdlen > cap) break;
        out[p++] = 0xc0, out[p++] = 0x0c; /* the question's name */
        put16(out + p, qtype), p += 2;
        put16(out + p, 1), p += 2;
        out[p++] = 0, out[p++] = 0, out[p++] = 0, out[p++] = 60;
        put16(out + p, rdlen), p += 2;
        cr_assert_eq(inet_pton(qtype == 1 ? AF_INET : AF_INET6, addrs[i], out + p), 1);
        p += rdlen;
        an++;
    }
    put16(out + 6, an);
    return p;
}

static void dns_reply(dns *d, const held_query *h) {
    unsigned char out[1024];
    int n = dns_answer(d, h->q, h->len, out, sizeof(out));
    if (n > 0) sendto(d->fd, out, (size_t)n, 0, (const struct sockaddr *)&h->from, sizeof(h->from));
}

static void *dns_main(void *arg) {
    dns *d = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = d->fd, .events = POLLIN}, {.fd = d->stop[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0 && errno == EINTR) continue;
        if (p[1].revents) return NULL;
        if (!(p[0].revents & POLLIN)) continue;
        held_query h;
        socklen_t sl = sizeof(h.from);
        ssize_t n = recvfrom(d->fd, h.q, sizeof(h.q), 0, (struct sockaddr *)&h.from, &sl);
        if (n <= 0) continue;
        h.len = (int)n;
        pthread_mutex_lock(&d->mu);
        d->queries++;
        int port = ntohs(h.from.sin_port);
        bool seen = false;
        for (int i = 0; i < d->nports; i++) seen |= d->ports[i] == port;
        if (!seen && d->nports < 64) d->ports[d->nports++] = port;
        if (d->mode == DNS_ANSWER) dns_reply(d, &h);
        else if (d->nheld < 64) d->held[d->nheld++] = h;
        pthread_mutex_unlock(&d->mu);
    }
}

/* Binds UDP port 53 of a free random 127.x.y.z. */
static void dns_start(dns *d, int mode) {
    memset(d, 0, sizeof(*d));
    d->mode = mode;
    pthread_mutex_init(&d->mu, NULL);
    srand((unsigned)(getpid() ^ (int)(t_mono() * 1e6)));
    for (int tries = 0;; tries++) {
        cr_assert(tries < 50, "no free loopback address for the DNS server");
        snprintf(d->ip, sizeof(d->ip), "127.%d.%d.%d", 20 + rand() % 200, 1 + rand() % 250, 1 + rand() % 250);
        d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        cr_assert(d->fd >= 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(53)};
        inet_pton(AF_INET, d->ip, &sa.sin_addr);
        if (bind(d->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) break;
        close(d->fd);
    }
    cr_assert_eq(pipe(d->stop), 0);
    cr_assert_eq(pthread_create(&d->thread, NULL, dns_main, d), 0);
}

/* From now on answer, starting with the queries held so far. */
static void dns_release(dns *d) {
    pthread_mutex_lock(&d->mu);
    d->mode = DNS_ANSWER;
    for (int i = 0; i < d->nheld; i++) dns_reply(d, &d->held[i]);
    d->nheld = 0;
    pthread_mutex_unlock(&d->mu);
}

static int dns_queries(dns *d) {
    pthread_mutex_lock(&d->mu);
    int n = d->queries;
    pthread_mutex_unlock(&d->mu);
    return n;
}

static int dns_asked(void *arg) { return dns_queries(arg) > 0; }

static int dns_sockets(dns *d) {
    pthread_mutex_lock(&d->mu);
    int n = d->nports;
    pthread_mutex_unlock(&d->mu);
    return n;
}

static void dns_stop(dns *d) {
    cr_assert_eq(write(d->stop[1], "x", 1), 1);
    pthread_join(d->thread, NULL);
    close(d->fd);
    close(d->stop[0]);
    close(d->stop[1]);
}

/* ---- the engine under test -------------------------------------------------- */

typedef struct logline {
    int level;
    char *text;
    double at;               /* t_mono() */
} logline;

typedef struct env {
    struct ev_loop *evl;
    aorm_loop *l;
    aorm_engine *e;
    char conninfo[2048];
    logline logs[512];
    int nlogs;
    ev_timer beat;
    double beat_due;
    double beat_late;        /* most a 10 ms heartbeat fired late */
} env;

static void on_log(aorm_log_level level, const char *message, void *user) {
    env *t = user;
    if (t->nlogs < 512) {
        t->logs[t->nlogs].level = level;
        t->logs[t->nlogs].text = strdup(message);
        t->logs[t->nlogs].at = t_mono();
        t->nlogs++;
    }
}

static const logline *log_line(const env *t, int level, const char *needle) {
    for (int i = 0; i < t->nlogs; i++)
        if (t->logs[i].level == level && strstr(t->logs[i].text, needle)) return &t->logs[i];
    return NULL;
}

static const char *log_find(const env *t, int level, const char *needle) {
    const logline *l = log_line(t, level, needle);
    return l ? l->text : NULL;
}

static void on_beat(struct ev_loop *evl, ev_timer *w, int revents) {
    env *t = w->data;
    double now = t_mono();
    if (now - t->beat_due > t->beat_late) t->beat_late = now - t->beat_due;
    t->beat_due = now + 0.01;
}

/* The sandbox's port (from AORM_TEST_DSN). */
static const char *dsn_port(void) {
    static char port[32];
    PQconninfoOption *o = PQconninfoParse(t_dsn(), NULL);
    cr_assert_not_null(o);
    for (PQconninfoOption *p = o; p->keyword; p++)
        if (strcmp(p->keyword, "port") == 0 && p->val) snprintf(port, sizeof(port), "%s", p->val);
    PQconninfoFree(o);
    cr_assert(port[0], "AORM_TEST_DSN has no port");
    return port;
}

/* Options for the sandbox's DSN with `extra` appended (it wins), logging
 * everything into t. */
static void env_init(env *t, aorm_engine_options *o, const char *extra) {
    memset(t, 0, sizeof(*t));
    snprintf(t->conninfo, sizeof(t->conninfo), "%s application_name=aorm_resolve %s", t_dsn(), extra ? extra : "");
    t_loop_open(&t->evl, &t->l);
    aorm_engine_options_init(o);
    o->conninfo = t->conninfo;
    o->log = on_log;
    o->log_user = t;
    o->log_level = AORM_LOG_DEBUG;
    o->connect_timeout = 5;
    o->pool_timeout = 10;
    ev_timer_init(&t->beat, on_beat, 0.01, 0.01);
    t->beat.data = t;
}

static void env_engine(env *t, const aorm_engine_options *o) {
    t->e = aorm_engine_new(t->l, o);
    cr_assert_not_null(t->e, "aorm_engine_new failed");
    t->beat_due = t_mono() + 0.01;
    t->beat_late = 0;
    ev_now_update(t->evl);
    ev_timer_start(t->evl, &t->beat);
}

/* Frees the engine, asserting that the call returns within 50 ms. */
static void env_free_engine(env *t) {
    double t0 = t_mono();
    aorm_engine_free(t->e);
    double dt = t_mono() - t0;
    t->e = NULL;
    cr_assert(dt < 0.05, "aorm_engine_free took %.3f s", dt);
}

static void env_close(env *t) {
    if (t->e) aorm_engine_free(t->e);
    t->e = NULL;
    ev_timer_stop(t->evl, &t->beat);
    t_loop_close(&t->evl, &t->l);
    for (int i = 0; i < t->nlogs; i++) free(t->logs[i].text);
}


static void run_for(env *t, double seconds) { t_settle(t->evl, seconds); }

static void assert_loop_on_time(const env *t) {
    cr_assert(t->beat_late < 0.05, "the loop stalled: a 10 ms heartbeat fired %.3f s late", t->beat_late);
}

typedef struct rec {
    int calls;
    int code;
    char msg[512];
    char detail[512];
    char sqlstate[6];
    char text[64];          /* first value, as text */
    double at;
} rec;

static void on_rec(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    rec *r = user;
    if (r->calls++ > 0) return;
    r->at = t_mono();
    if (err) {
        r->code = err->code;
        snprintf(r->sqlstate, sizeof(r->sqlstate), "%s", err->sqlstate);
        snprintf(r->msg, sizeof(r->msg), "%s", err->message);
        snprintf(r->detail, sizeof(r->detail), "%s", err->detail ? err->detail : "");
        return;
    }
    size_t len = 0;
    const char *v = NULL;
    if (aorm_result_nrows(res) > 0 && aorm_result_text(res, 0, 0, &v, &len) != 0) v = NULL;
    snprintf(r->text, sizeof(r->text), "%.*s", v ? (int)len : 6, v ? v : "(null)");
}

static void exec_sql(env *t, const char *sql, rec *r) {
    memset(r, 0, sizeof(*r));
    aorm_exec_options eo = {.flags = AORM_EXEC_TEXT_RESULT, .deadline = -1};
    cr_assert_eq(aorm_engine_execute(t->e, sql, NULL, &eo, on_rec, r), 0, "%s", sql);
}

/* The engine's log, for a failing test's output. */
static void log_dump(const env *t) {
    for (int i = 0; i < t->nlogs; i++) fprintf(stderr, "  log %d: %s\n", t->logs[i].level, t->logs[i].text);
}

static void exec_ok(env *t, const char *sql, rec *r) {
    exec_sql(t, sql, r);
    cr_assert(t_run_until(t->evl, &r->calls, 15), "no answer to %s", sql);
    if (r->code != 0) log_dump(t);
    cr_assert_eq(r->code, 0, "%s failed: %s (%s) %s", sql, aorm_errname(r->code), r->msg, r->detail);
}

/* The hostaddr list the engine gave libpq for its n-th connection
 * attempt (from its debug log), copied into out. */
static bool attempt_lists(const env *t, int n, char *host, char *addr, char *port, size_t cap) {
    int seen = 0;
    for (int i = 0; i < t->nlogs; i++) {
        const char *s = t->logs[i].text;
        const char *h = strstr(s, ": host=");
        const char *a = strstr(s, " hostaddr=");
        if (t->logs[i].level != AORM_LOG_DEBUG || strncmp(s, "connection ", 11) != 0 || !h || !a) continue;
        if (++seen < n) continue;
        h += 7;
        snprintf(host, cap, "%.*s", (int)(a - h), h);
        a += 10;
        const char *p = strstr(a, " port=");
        snprintf(addr, cap, "%.*s", p ? (int)(p - a) : (int)strlen(a), a);
        snprintf(port, cap, "%s", p ? p + 6 : "");
        return true;
    }
    return false;
}

/* getaddrinfo's addresses of name (libpq's hints), each once, joined. */
static void expected_addrs(const char *name, char *out, size_t cap) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(name, NULL, &hints, &res);
    cr_assert_eq(rc, 0, "getaddrinfo(%s): %s", name, gai_strerror(rc));
    out[0] = '\0';
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        char a[NI_MAXHOST], padded[NI_MAXHOST + 2], list[1024];
        cr_assert_eq(getnameinfo(ai->ai_addr, ai->ai_addrlen, a, sizeof(a), NULL, 0, NI_NUMERICHOST), 0);
        snprintf(padded, sizeof(padded), ",%s,", a);
        snprintf(list, sizeof(list), ",%s,", out);
        if (strstr(list, padded)) continue;
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%s%s", len ? "," : "", a);
    }
    freeaddrinfo(res);
}

/* ==========================================================================
 * Every address reaches libpq, in order
 * ========================================================================== */

/* This machine's /etc/hosts maps localhost to 127.0.0.1 only; whatever it
 * maps it to is what libpq gets, in getaddrinfo's order. Resolved through
 * `files` alone, in a namespace whose resolv.conf points at loopback. */
Test(resolve, localhost_from_etc_hosts, .timeout = 30) {
    dns d;
    dns_start(&d, DNS_HANG);
    cr_assert_eq(unshare(CLONE_NEWNS), 0, "unshare: %s", strerror(errno));
    cr_assert_eq(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), 0);
    bind_file("/etc/nsswitch.conf", "hosts: files\n");
    char rc[128];
    snprintf(rc, sizeof(rc), "nameserver %s\n", d.ip);
    bind_file("/etc/resolv.conf", rc);
    char want[512];
    expected_addrs("localhost", want, sizeof(want));

    env t;
    aorm_engine_options o;
    env_init(&t, &o, "host=localhost");
    env_engine(&t, &o);
    rec r;
    exec_ok(&t, "SELECT host(inet_server_addr())", &r);
    cr_assert_str_eq(r.text, "127.0.0.1");
    char host[512], addr[512], port[512];
    cr_assert(attempt_lists(&t, 1, host, addr, port, sizeof(host)), "no hostaddr list was logged");
    cr_assert_str_eq(addr, want, "libpq got hostaddr=%s, getaddrinfo says %s", addr, want);
    int n = 1;
    for (const char *p = want; *p; p++) n += *p == ',';
    char hosts[512] = "";
    for (int i = 0; i < n; i++) strcat(hosts, i ? ",localhost" : "localhost");
    cr_assert_str_eq(host, hosts);
    cr_assert_eq(dns_queries(&d), 0, "the DNS server was asked");
    assert_loop_on_time(&t);
    env_close(&t);
    dns_stop(&d);
}

/* A name with an AAAA and an A record (and the A twice): both reach libpq,
 * ::1 first as getaddrinfo orders them, each once. The sandbox listens on
 * 127.0.0.1 only, so the connection fails over from ::1 to 127.0.0.1.
 * The name is `localhost`, mapped by this namespace's own /etc/hosts: the
 * name the sandbox's certificate and password file are for. */
Test(resolve, hosts_file_every_address_in_order, .timeout = 30) {
    dns d;
    dns_start(&d, DNS_HANG);
    private_names("files", "::1 localhost\n127.0.0.1 localhost\n127.0.0.1 localhost\n", d.ip);
    char want[512];
    expected_addrs("localhost", want, sizeof(want));
    cr_assert_str_eq(want, "::1,127.0.0.1", "getaddrinfo's order on this machine: %s", want);

    env t;
    aorm_engine_options o;
    env_init(&t, &o, "host=localhost");
    env_engine(&t, &o);
    rec r;
    exec_ok(&t, "SELECT host(inet_server_addr())", &r);
    cr_assert_str_eq(r.text, "127.0.0.1", "connected to %s", r.text);
    char host[512], addr[512], port[512];
    cr_assert(attempt_lists(&t, 1, host, addr, port, sizeof(host)), "no hostaddr list was logged");
    cr_assert_str_eq(addr, "::1,127.0.0.1");
    cr_assert_str_eq(host, "localhost,localhost");
    cr_assert_str_eq(port, "", "a single port is left as it is");
    aorm_engine_stats s;
    aorm_engine_stats_get(t.e, &s);
    cr_assert_eq(s.connects, 1);
    cr_assert_eq(s.connect_failures, 0);
    cr_assert_eq(dns_queries(&d), 0, "the DNS server was asked");
    assert_loop_on_time(&t);
    env_close(&t);
    dns_stop(&d);
}

/* host=address,name,name,socket-dir with a port list: host and port are
 * repeated per address, an address and a socket directory keep their
 * entry with an empty hostaddr slot. */
Test(resolve, multi_host_lists_expand, .timeout = 30) {
    dns d;
    dns_start(&d, DNS_HANG);
    private_names("files", "::1 localhost\n127.0.0.1 localhost\n127.0.0.1 aorm-one.test\n", d.ip);
    const char *p = dsn_port();
    const char *sock = getenv("AORM_SANDBOX_DIR");
    cr_assert(sock && *sock);
    char extra[1024];
    /* nothing listens on 127.0.0.2, nor on ::1: the first two entries
     * fail, then 127.0.0.1 of localhost works (aorm-one.test, never
     * reached, is not a name the sandbox's certificate is for) */
    snprintf(extra, sizeof(extra), "host=127.0.0.2,localhost,aorm-one.test,%s port=%s,%s,%s,%s", sock, p, p, p, p);
    env t;
    aorm_engine_options o;
    env_init(&t, &o, extra);
    env_engine(&t, &o);
    rec r;
    exec_ok(&t, "SELECT host(inet_server_addr())", &r);
    cr_assert_str_eq(r.text, "127.0.0.1");
    char host[1024], addr[1024], port[1024], want[1024];
    cr_assert(attempt_lists(&t, 1, host, addr, port, sizeof(host)), "no hostaddr list was logged");
    snprintf(want, sizeof(want), "127.0.0.2,localhost,localhost,aorm-one.test,%s", sock);
    cr_assert_str_eq(host, want);
    cr_assert_str_eq(addr, ",::1,127.0.0.1,127.0.0.1,");
    snprintf(want, sizeof(want), "%s,%s,%s,%s,%s", p, p, p, p, p);
    cr_assert_str_eq(port, want);
    assert_loop_on_time(&t);
    env_close(&t);
    dns_stop(&d);
}

/* The same through DNS: A and AAAA records, a duplicate among them. */
Test(resolve, dns_every_address_in_order, .timeout = 30) {
    dns d;
    dns_start(&d, DNS_ANSWER);
    d.name = "localhost"; /* from this DNS server alone: no /etc/hosts */
    d.a6[d.n6++] = "::1";
    d.a4[d.n4++] = "127.0.0.2";
    d.a4[d.n4++] = "127.0.0.1";
    d.a4[d.n4++] = "127.0.0.2";
    private_names("dns", NULL, d.ip);
    char want[512];
    expected_addrs("localhost", want, sizeof(want)); /* the DNS server answers on its own thread */
    cr_assert(strstr(want, "::1") && strstr(want, "127.0.0.1") && strstr(want, "127.0.0.2"), "getaddrinfo: %s",
              want);

    env t;
    aorm_engine_options o;
    env_init(&t, &o, "host=localhost");
    env_engine(&t, &o);
    rec r;
    exec_ok(&t, "SELECT host(inet_server_addr())", &r);
    cr_assert_str_eq(r.text, "127.0.0.1");
    char host[512], addr[512], port[512];
    cr_assert(attempt_lists(&t, 1, host, addr, port, sizeof(host)), "no hostaddr list was logged");
    cr_assert_str_eq(addr, want);
    cr_assert_str_eq(host, "localhost,localhost,localhost");
    assert_loop_on_time(&t);
    env_close(&t);
    dns_stop(&d);
}

/* A name the DNS server does not know is left out of a multi-host list
 * (with a warning naming it); alone, it fails the attempt with ECONNECT
 * naming it, at once. */
Test(resolve, unknown_name_left_out_or_fails, .timeout = 30) {
    dns d;
    dns_start(&d, DNS_ANSWER);
    d.name = "localhost";
    d.a4[d.n4++] = "127.0.0.1";
    private_names("dns", NULL, d.ip);

    env t;
    aorm_engine_options o;
    env_init(&t, &o, "host=gone.aorm.test,localhost");
    env_engine(&t, &o);
    rec r;
    exec_ok(&t, "SELECT host(inet_server_addr())", &r);
    cr_assert_str_eq(r.text, "127.0.0.1");
    char host[512], addr[512], port[512];
    cr_assert(attempt_lists(&t, 1, host, addr, port, sizeof(host)), "no hostaddr list was logged");
    cr_assert_str_eq(host, "localhost");
    cr_assert_str_eq(addr, "127.0.0.1");
    cr_assert(log_find(&t, AORM_LOG_WARN, "could not translate host name \"gone.aorm.test\""),
              "the unresolvable host was not named in a warning");
    env_close(&t);

    env_init(&t, &o, "host=gone.aorm.test");
    o.pool_timeout = 1;
    env_engine(&t, &o);
    double t0 = t_mono();
    exec_sql(&t, "SELECT 1", &r);
    cr_assert(t_run_until(t.evl, &r.calls, 10));
    cr_assert(r.code == AORM_ECONNECT || r.code == AORM_EPOOLTIMEOUT, "%s: %s", aorm_errname(r.code), r.msg);
    cr_assert(strstr(r.msg, "gone.aorm.test") || strstr(r.detail, "gone.aorm.test"), "not named: %s / %s", r.msg,
              r.detail);
    cr_assert_str_eq(r.sqlstate, "08001");
    const logline *l = log_line(&t, AORM_LOG_ERROR, "could not translate host name \"gone.aorm.test\"");
    cr_assert(l, "the failed attempt was not logged");
    cr_assert(l->at - t0 < 0.5, "the attempt failed after %.3f s", l->at - t0);
    aorm_engine_stats s;
    aorm_engine_stats_get(t.e, &s);
    cr_assert(s.connect_failures >= 1);
    run_for(&t, 0.05);
    cr_assert_eq(r.calls, 1);
    env_close(&t);
    dns_stop(&d);
}

/* ==========================================================================
 * A resolver that never answers
 * ========================================================================== */

static int no_attempts(void *arg) {
    aorm_engine_stats s;
    aorm_engine_stats_get(arg, &s);
    return s.open == 0;
}

/* The attempt fails at its connect timeout with an ECONNECT naming the
 * host; the loop runs on time meanwhile; the late answer is ignored. */
Test(resolve, hung_resolver_fails_attempt_at_connect_timeout, .timeout = 30) {
    dns d;
    dns_start(&d, DNS_HANG);
    private_names("dns", NULL, d.ip);
    env t;
    aorm_engine_options o;
    env_init(&t, &o, "host=hung.aorm.test");
    o.connect_timeout = 0.5;
    o.pool_timeout = 1.5;
    env_engine(&t, &o);
    double t0 = t_mono();
    rec r;
    exec_sql(&t, "SELECT 1", &r);
    cr_assert(t_run_until(t.evl, &r.calls, 5), "no answer");
    cr_assert(r.code == AORM_ECONNECT || r.code == AORM_EPOOLTIMEOUT, "%s: %s", aorm_errname(r.code), r.msg);
    const char *want = "could not resolve host name \"hung.aorm.test\": timed out after 0.5 s";
    cr_assert(strstr(r.msg, want) || strstr(r.detail, want), "the error does not say why: %s / %s", r.msg, r.detail);
    const logline *l = log_line(&t, AORM_LOG_ERROR, want);
    cr_assert(l, "the failed attempt was not logged");
    cr_assert(l->at - t0 >= 0.45, "the attempt failed after %.3f s, before its connect timeout", l->at - t0);
    cr_assert(l->at - t0 < 0.8, "the attempt failed after %.3f s", l->at - t0);
    cr_assert(dns_queries(&d) >= 1, "the lookup never reached the DNS server");
    assert_loop_on_time(&t);

    /* once no attempt is left, the late answers (now with an address
     * that would work) change nothing */
    cr_assert(t_run_until_fn(t.evl, no_attempts, t.e, 3), "connection attempts went on with nothing to do");
    int lines = t.nlogs;
    d.name = "hung.aorm.test";
    d.a4[d.n4++] = "127.0.0.1";
    dns_release(&d);
    run_for(&t, 0.3);
    cr_assert_eq(r.calls, 1);
    for (int i = lines; i < t.nlogs; i++) cr_assert_fail("logged after the late answers: %s", t.logs[i].text);
    assert_loop_on_time(&t);
    env_close(&t);
    dns_stop(&d);
}

/* Freeing the engine while a lookup is stuck inside getaddrinfo returns
 * at once; the statement waiting for it is cancelled; when the answer
 * finally comes, the helper thread drops it and ends. */
Test(resolve, engine_free_with_lookup_stuck_returns_at_once, .timeout = 30) {
    dns d;
    dns_start(&d, DNS_HANG);
    private_names("dns", NULL, d.ip);
    int base = threads_now();
    env t;
    aorm_engine_options o;
    env_init(&t, &o, "host=hung.aorm.test");
    env_engine(&t, &o);
    rec r;
    exec_sql(&t, "SELECT 1", &r);
    cr_assert(t_run_until_fn(t.evl, dns_asked, &d, 5), "the lookup never reached the DNS server");
    cr_assert_eq(r.calls, 0);
    env_free_engine(&t);
    cr_assert_eq(r.calls, 1);
    cr_assert_eq(r.code, AORM_ECANCELED, "%s", aorm_errname(r.code));
    assert_loop_on_time(&t);

    dns_release(&d);
    double until = t_mono() + 5;
    while (threads_now() > base && t_mono() < until) usleep(2000);
    cr_assert_eq(threads_now(), base, "a helper thread did not end after its late answer");
    cr_assert_eq(r.calls, 1);
    env_close(&t);
    dns_stop(&d);
}

/* Connections opened together resolve together: three attempts, three
 * lookups inside getaddrinfo at once (each has a resolver socket of its
 * own), and the two names of one attempt are looked up at once too. */
Test(resolve, lookups_run_concurrently, .timeout = 30) {
    dns d;
    dns_start(&d, DNS_HANG);
    private_names("dns", NULL, d.ip);
    env t;
    aorm_engine_options o;
    env_init(&t, &o, "host=one.aorm.test,two.aorm.test");
    o.pool_size = 3;
    env_engine(&t, &o);
    cr_assert_eq(aorm_engine_warm(t.e), 0);
    double until = t_mono() + 5;
    while (dns_sockets(&d) < 6 && t_mono() < until) run_for(&t, 0.01);
    cr_assert_eq(dns_sockets(&d), 6, "%d lookups reached the DNS server at once, not 6", dns_sockets(&d));
    aorm_engine_stats s;
    aorm_engine_stats_get(t.e, &s);
    cr_assert_eq(s.open, 3);
    assert_loop_on_time(&t);
    env_free_engine(&t);
    env_close(&t);
    dns_release(&d);
    dns_stop(&d);
}
