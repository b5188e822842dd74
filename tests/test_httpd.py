#!/usr/bin/env python3
"""End-to-end tests of aorm-httpd over real HTTP, against the sandbox.

Run by ctest (suite `httpd`) inside `scripts/sandbox run --schema`:

    python3 tests/test_httpd.py path/to/aorm-httpd [GROUP...]

Each group starts its own server (on a free port) with the options it
needs, talks to it with raw sockets (so that malformed, pipelined and
abandoned requests are exactly what they say), stops it with SIGTERM and
then checks that it exited 0 and that its stderr holds no sanitizer
report: under ASan, a late callback on a freed request or a leaked
session fails the test here.

Counts of statements come from the server's own /stats (one worker, so
that every request lands on the engine being counted). Writes touch only
rows this test creates (books of the last author) and the world table.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

SERVER = None
FAILURES = []
PASSED = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def psql(sql):
    """Runs sql through psql as the sandbox's owner; returns stdout."""
    out = subprocess.run(["psql", os.environ["AORM_TEST_DSN"], "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                          "-c", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


class Server:
    def __init__(self, *args):
        self.port = free_port()
        # in the test kit's log directory, when there is one, so that the
        # secret grep (zz_secret_grep) searches what the server wrote too
        logdir = os.environ.get("AORM_TEST_LOG_DIR") or None
        self.keep = logdir is not None
        self.err = tempfile.NamedTemporaryFile(prefix="httpd-err-", suffix=".log", delete=False, dir=logdir)
        self.log = tempfile.NamedTemporaryFile(prefix="httpd-access-", suffix=".log", delete=False, dir=logdir)
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        self.p = subprocess.Popen([SERVER, "--port", str(self.port), "--access-log", self.log.name] + list(args),
                                  stdout=subprocess.DEVNULL, stderr=self.err, env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise AssertionError("server exited at start: " + self.stderr())
            if "listening on" in self.stderr():
                return
            time.sleep(0.05)
        raise AssertionError("server did not start: " + self.stderr())

    def stderr(self):
        with open(self.err.name, errors="replace") as f:
            return f.read()

    def stop(self, timeout=30):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError("server did not stop within %d s after SIGTERM" % timeout)
        err = self.stderr()
        assert rc == 0, "server exit code %d: %s" % (rc, err[-4000:])
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:", "ERROR: "):
            assert bad not in err, "sanitizer report in the server's stderr:\n" + err[-6000:]
        if not self.keep:
            os.unlink(self.err.name)
            os.unlink(self.log.name)
        return err

    def connect(self, timeout=15):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


class Conn:
    """A client connection with a minimal HTTP/1.1 response reader."""

    def __init__(self, server, timeout=15):
        self.s = server.connect(timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data if isinstance(data, bytes) else data.encode())

    def _fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def response(self):
        """(status, headers, body), or None when the connection closed
        before a response began. A response cut short is an error."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                assert not self.buf, "connection closed inside a response head: %r" % self.buf
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            assert self._fill(), "connection closed inside a response body"
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed(self):
        """True when the server closed the connection (EOF, nothing more)."""
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def request(method, path, body=None, headers=None, keep_alive=True):
    h = {"Host": "localhost"}
    if body is not None:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        body = body.encode() if isinstance(body, str) else body
        h["Content-Type"] = "application/json"
        h["Content-Length"] = str(len(body))
    if not keep_alive:
        h["Connection"] = "close"
    h.update(headers or {})
    text = "%s %s HTTP/1.1\r\n" % (method, path) + "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
    return text.encode() + (body or b"")


def call(server, method, path, body=None):
    c = Conn(server)
    try:
        c.send(request(method, path, body))
        st, hd, b = c.response()
        return st, hd, b
    finally:
        c.close()


def call_json(server, method, path, body=None):
    st, hd, b = call(server, method, path, body)
    return st, (json.loads(b) if b else None)


def stats(server):
    st, j = call_json(server, "GET", "/stats")
    assert st == 200
    return j


ONLY = set()


def check(name, fn, *args):
    if ONLY and name not in ONLY and name != "clean_stop":
        return
    t0 = time.time()
    try:
        fn(*args)
        PASSED.append(name)
        print("PASS %-40s %.2f s" % (name, time.time() - t0), flush=True)
    except Exception:
        FAILURES.append(name)
        print("FAIL %s\n%s" % (name, traceback.format_exc()), flush=True)


# ==== the TechEmpower endpoints =============================================

def te_endpoints(srv):
    st, hd, b = call(srv, "GET", "/json")
    assert st == 200 and hd["content-type"] == "application/json" and json.loads(b) == {"message": "Hello, World!"}
    assert "date" in hd and hd["server"] == "aorm-httpd"
    st, hd, b = call(srv, "GET", "/plaintext")
    assert st == 200 and hd["content-type"].startswith("text/plain") and b == b"Hello, World!"

    st, j = call_json(srv, "GET", "/db")
    assert st == 200 and set(j) == {"id", "randomNumber"} and 1 <= j["id"] <= 10000
    assert int(psql("SELECT randomnumber FROM world WHERE id = %d" % j["id"])) == j["randomNumber"]

    for q, n in (("1", 1), ("20", 20), ("0", 1), ("", 1), ("abc", 1), ("501", 500), ("-3", 1)):
        st, j = call_json(srv, "GET", "/queries?queries=" + q)
        assert st == 200 and isinstance(j, list) and len(j) == n, (q, st, j if st != 200 else len(j))
        assert all(set(x) == {"id", "randomNumber"} and 1 <= x["id"] <= 10000 for x in j)
    st, j = call_json(srv, "GET", "/queries")
    assert st == 200 and len(j) == 1

    st, j = call_json(srv, "GET", "/updates?queries=20")
    assert st == 200 and len(j) == 20 and len({x["id"] for x in j}) == 20
    ids = ",".join(str(x["id"]) for x in j)
    db = dict(tuple(map(int, line.split("|"))) for line in psql(
        "SELECT id, randomnumber FROM world WHERE id IN (%s)" % ids).splitlines())
    assert all(db[x["id"]] == x["randomNumber"] for x in j), "updates not written"
    st, j = call_json(srv, "GET", "/updates?queries=9999")
    assert st == 200 and len(j) == 500

    st, hd, b = call(srv, "GET", "/fortunes")
    assert st == 200 and hd["content-type"] == "text/html; charset=utf-8"
    html = b.decode()
    rows = re.findall(r"<tr><td>(\d+)</td><td>(.*?)</td></tr>", html)
    assert len(rows) == 13, len(rows)
    assert ("0", "Additional fortune added at request time.") in rows
    assert "&lt;script&gt;alert(&quot;This should not be displayed in a browser alert box.&quot;);&lt;/script&gt;" in html
    assert "<script>" not in html
    import html as htmlmod
    msgs = [htmlmod.unescape(m) for _, m in rows]
    assert msgs == sorted(msgs, key=lambda s: s.encode()), "fortunes not sorted"
    assert "フレームワークのベンチマーク" in html
    assert html.startswith("<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>")

    st, hd, b = call(srv, "POST", "/db", {})
    assert st == 405


def world_rows(ids):
    return dict(tuple(map(int, line.split("|"))) for line in psql(
        "SELECT id, randomnumber FROM world WHERE id IN (%s)" % ",".join(map(str, ids))).splitlines())


def cached_queries(srv):
    """Through Redis (the sandbox's, with its ACL user): the rows are the
    database's, also after /updates changed some of them."""
    for q, n in (("count=1", 1), ("count=20", 20), ("count=0", 1), ("count=x", 1), ("count=501", 500),
                 ("queries=7", 7), ("", 1)):
        st, j = call_json(srv, "GET", "/cached-queries?" + q)
        assert st == 200 and len(j) == n, (q, st, j)
        db = world_rows([x["id"] for x in j])
        assert all(db[x["id"]] == x["randomNumber"] for x in j), q
    for _ in range(3):
        call_json(srv, "GET", "/cached-queries?count=500")    # most rows cached now
        for _ in range(5):
            assert call_json(srv, "GET", "/updates?queries=500")[0] == 200
        st, j = call_json(srv, "GET", "/cached-queries?count=500")
        db = world_rows([x["id"] for x in j])
        stale = [x for x in j if db[x["id"]] != x["randomNumber"]]
        assert not stale, "stale cached rows after /updates: %r" % stale[:3]
    c = stats(srv)["cache"]
    assert c["hits"] + c["near_hits"] > 0, c


def statement_counts(srv):
    """One worker: /stats counts every statement of the requests between
    two reads of it (/stats itself sends none)."""
    def delta(method, path, body=None):
        a = stats(srv)["engine"]
        st, _, _ = call(srv, method, path, body)
        b = stats(srv)["engine"]
        return st, b["statements"] - a["statements"], b["round_trips"] - a["round_trips"]

    st, n, _ = delta("GET", "/authors/7")
    assert st == 200 and n == 3, n          # selectin: author, books, tags
    st, n, trips = delta("GET", "/queries?queries=20")
    assert st == 200 and n == 20, n         # every row its own statement
    assert trips <= 8, trips                # pipelined: at most one write per pooled connection
    st, n, _ = delta("GET", "/db")
    assert st == 200 and n == 1
    st, n, _ = delta("GET", "/fortunes")
    assert st == 200 and n == 1
    st, n, _ = delta("GET", "/updates?queries=20")
    assert st == 200 and n == 21, n         # 20 reads + 1 batched UPDATE


# ==== the bookstore API =====================================================

def bookstore(srv):
    st, j = call_json(srv, "GET", "/authors/1")
    assert st == 200 and j["id"] == 1 and j["name"] == "author 1" and j["born"] == 1901
    want = [int(x) for x in psql("SELECT id FROM books WHERE author_id = 1 ORDER BY id").split()]
    assert [b["id"] for b in j["books"]] == want and len(want) >= 5, ([b["id"] for b in j["books"]], want)
    tags = psql("SELECT string_agg(tag_id::text, ',' ORDER BY tag_id) FROM book_tags WHERE book_id = %d" % want[0])
    assert [t["id"] for t in j["books"][0]["tags"]] == [int(x) for x in tags.split(",")]
    assert all(set(b) == {"id", "author_id", "title", "year", "price", "tags"} for b in j["books"])
    assert call_json(srv, "GET", "/authors/99999999")[0] == 404
    assert call_json(srv, "GET", "/authors/x1")[0] == 400
    assert call_json(srv, "GET", "/authors/0")[0] == 400
    assert call_json(srv, "DELETE", "/authors/1")[0] == 405

    # keyset pages: the concatenation is the whole list, in id order
    seen, after = [], 0
    while True:
        st, j = call_json(srv, "GET", "/books?author_id=2&limit=4&after=%d" % after)
        assert st == 200
        seen += [b["id"] for b in j["books"]]
        if j["next"] is None:
            break
        after = j["next"]
    want = [int(x) for x in psql("SELECT id FROM books WHERE author_id = 2 ORDER BY id").split()]
    assert seen == want, (seen, want)
    st, j = call_json(srv, "GET", "/books?limit=3")
    first = [int(x) for x in psql("SELECT id FROM books ORDER BY id LIMIT 3").split()]
    assert st == 200 and [b["id"] for b in j["books"]] == first and j["next"] == first[-1]
    for bad in ("limit=0", "limit=101", "limit=x", "author_id=-1", "after=z"):
        assert call_json(srv, "GET", "/books?" + bad)[0] == 400, bad

    # create, read, change, delete
    author = int(psql("SELECT max(id) FROM authors"))
    st, j = call_json(srv, "POST", "/books", {"author_id": author, "title": "Über <tests>", "year": 2026,
                                              "price": 12.5, "tag_ids": [3, 1]})
    assert st == 201 and isinstance(j["id"], int), (st, j)
    bid = j["id"]
    assert psql("SELECT title || '|' || year || '|' || price FROM books WHERE id = %d" % bid) == "Über <tests>|2026|12.5"
    assert psql("SELECT string_agg(tag_id::text, ',' ORDER BY tag_id) FROM book_tags WHERE book_id = %d" % bid) == "1,3"
    st, j = call_json(srv, "GET", "/books/%d" % bid)
    assert st == 200 and j == {"id": bid, "author_id": author, "title": "Über <tests>", "year": 2026, "price": 12.5}
    st, j = call_json(srv, "PATCH", "/books/%d" % bid, {"price": 7.25})
    assert st == 200 and j["price"] == 7.25 and j["title"] == "Über <tests>"
    assert psql("SELECT price FROM books WHERE id = %d" % bid) == "7.25"
    st, j = call_json(srv, "PATCH", "/books/%d" % bid, {})
    assert st == 200 and j["price"] == 7.25

    # errors: 400 with a message, 404, 409, 422
    st, j = call_json(srv, "POST", "/books", {"author_id": author, "title": "dup", "year": 1, "price": 1, "id": bid})
    assert st == 409 and j["sqlstate"] == "23505", (st, j)
    st, j = call_json(srv, "POST", "/books", {"author_id": 99999999, "title": "x", "year": 1, "price": 1})
    assert st == 422 and j["sqlstate"] == "23503", (st, j)
    st, j = call_json(srv, "POST", "/books", {"author_id": author, "title": "x", "year": 1, "price": 1,
                                              "tag_ids": [1, 987654]})
    assert st == 422 and "987654" in j["error"], (st, j)
    st, j = call_json(srv, "PATCH", "/books/%d" % bid, {"author_id": 99999999})
    assert st == 422, (st, j)
    cases = [
        ('{"author_id": 1, "title": ', "invalid JSON"),
        ("[1, 2]", "JSON object"),
        ("", "body is required"),
        ('{"author_id": 1, "title": "t", "year": 1, "price": 1, "author_id": 2}', "invalid JSON"),
        ({"author_id": "1", "title": "t", "year": 1, "price": 1}, 'field "author_id": expected an integer'),
        ({"author_id": 1, "title": 5, "year": 1, "price": 1}, 'field "title": expected a string'),
        ({"author_id": 1, "title": "t", "year": 3000000000, "price": 1}, 'field "year"'),
        ({"author_id": 1, "title": "t", "year": 1}, 'missing field "price"'),
        ({"author_id": 1, "title": "t", "year": 1, "price": 1, "colour": "red"}, 'unknown field "colour"'),
        ({"author_id": 1, "title": None, "year": 1, "price": 1}, "may not be null"),
        ({"author_id": 1, "title": "t", "year": 1, "price": 1, "tag_ids": [1, 1]}, "listed twice"),
        ({"author_id": 1, "title": "t", "year": 1, "price": 1, "tag_ids": "1"}, "tag_ids"),
    ]
    for body, msg in cases:
        st, j = call_json(srv, "POST", "/books", body)
        assert st == 400 and msg in j["error"], (body, st, j)
    st, j = call_json(srv, "PATCH", "/books/%d" % bid, {"id": 3})
    assert st == 400 and "cannot be set" in j["error"]
    st, j = call_json(srv, "PATCH", "/books/%d" % bid, "nope")
    assert st == 400
    assert call_json(srv, "PATCH", "/books/99999999", {"price": 1})[0] == 404

    st, hd, b = call(srv, "DELETE", "/books/%d" % bid)
    assert st == 204 and b == b""
    assert psql("SELECT count(*) FROM books WHERE id = %d" % bid) == "0"
    assert psql("SELECT count(*) FROM book_tags WHERE book_id = %d" % bid) == "0"
    assert call_json(srv, "DELETE", "/books/%d" % bid)[0] == 404
    assert call_json(srv, "GET", "/nowhere")[0] == 404


# ==== HTTP: keep-alive, pipelining, malformed requests ======================

def keep_alive_and_pipelining(srv):
    c = Conn(srv)
    for i in range(5):  # keep-alive: one connection, one request after another
        c.send(request("GET", "/db"))
        st, hd, b = c.response()
        assert st == 200 and "connection" not in hd
    # pipelined: 30 requests in one write, answered in order although they
    # finish in any order (the row counts tell them apart)
    paths = ["/queries?queries=%d" % (i % 10 + 1) if i % 3 else "/json" for i in range(30)]
    paths[7] = "/authors/3"
    paths[8] = "/fortunes"
    c.send(b"".join(request("GET", p) for p in paths))
    for i, p in enumerate(paths):
        st, hd, b = c.response()
        assert st == 200, (i, p, st)
        if p.startswith("/queries"):
            assert len(json.loads(b)) == i % 10 + 1, (i, p)
        elif p == "/json":
            assert json.loads(b) == {"message": "Hello, World!"}
        elif p == "/authors/3":
            assert json.loads(b)["id"] == 3
        else:
            assert b.startswith(b"<!DOCTYPE html>")
    # more than max_pipeline (64) at once: the parser pauses, nothing is lost
    c.send(b"".join(request("GET", "/queries?queries=2") for _ in range(200)))
    for i in range(200):
        st, hd, b = c.response()
        assert st == 200 and len(json.loads(b)) == 2, i
    # Connection: close is honoured after the answer
    c.send(request("GET", "/json", keep_alive=False) + request("GET", "/json"))
    st, hd, b = c.response()
    assert st == 200 and hd.get("connection") == "close"
    assert c.closed() and c.buf == b"", c.buf
    c.close()
    # HTTP/1.0 without keep-alive closes too
    c = Conn(srv)
    c.send(b"GET /plaintext HTTP/1.0\r\n\r\n")
    st, hd, b = c.response()
    assert st == 200 and b == b"Hello, World!" and c.closed()
    c.close()
    # Expect: 100-continue: the interim answer first, then the body is read
    c = Conn(srv)
    body = json.dumps({"author_id": 1, "title": "t", "year": 1, "price": 1, "colour": 1}).encode()
    c.send(request("POST", "/books", b"", headers={"Expect": "100-continue", "Content-Length": str(len(body))}))
    while b"\r\n\r\n" not in c.buf:
        assert c._fill()
    assert c.buf.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), c.buf
    c.buf = c.buf[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
    c.send(body)
    st, hd, b = c.response()
    assert st == 400 and b"colour" in b, (st, b)
    c.close()
    # a request split over many writes
    c = Conn(srv)
    for ch in request("GET", "/json"):
        c.send(bytes([ch]))
    assert c.response()[0] == 200
    c.close()


def malformed(srv):
    def expect(data, status, msg=None, closes=True, prefix=()):
        c = Conn(srv)
        c.send(data)
        for want in prefix:
            st, hd, b = c.response()
            assert st == want, (data[:60], st)
        st, hd, b = c.response()
        assert st == status, (data[:60], st, b)
        if msg:
            assert msg in json.loads(b)["error"], (data[:60], b)
        if closes:
            assert hd.get("connection") == "close"
            assert c.closed(), "connection left open after %d" % status
        c.close()

    expect(b"GARBAGE\r\n\r\n", 400, "malformed HTTP request")
    expect(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n", 400, "malformed")
    expect(b"GET /json HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400)
    # the answers of good requests before a broken one still come first
    expect(request("GET", "/json") + request("GET", "/db") + b"\x01\x02 nonsense\r\n\r\n", 400,
           prefix=(200, 200))
    big = request("POST", "/books", b"x" * 2048)
    expect(big, 413, "too large")                 # server runs with --max-body 1024
    expect(b"POST /books HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413)
    chunked = b"POST /books HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + \
        b"".join(b"200\r\n" + b"y" * 512 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    expect(chunked, 413, "too large")
    many = b"GET /json HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(100)) + b"\r\n"
    expect(many, 431, "too many headers")
    expect(b"GET /json HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, "too large")
    expect(b"GET /" + b"p" * 20000 + b" HTTP/1.1\r\n\r\n", 431)
    # a small chunked body is fine
    body = json.dumps({"author_id": 1, "title": "t", "year": 1, "price": 1, "colour": 1}).encode()
    data = b"POST /books HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    expect(data, 400, 'unknown field "colour"', closes=False)
    # the server is still fine
    assert call(srv, "GET", "/json")[0] == 200


def timeouts():
    srv = Server("--workers", "1", "--request-timeout", "1", "--idle-timeout", "1.5")
    try:
        c = Conn(srv)
        c.send(b"GET /json HTTP/1.1\r\nHost: x\r\n")   # never finished: a slow client
        t0 = time.time()
        st, hd, b = c.response()
        assert st == 408 and 0.8 < time.time() - t0 < 15, (st, time.time() - t0)
        assert c.closed()
        c.close()
        c = Conn(srv)                                  # idle keep-alive connection
        c.send(request("GET", "/json"))
        assert c.response()[0] == 200
        t0 = time.time()
        assert c.closed() and 1.2 < time.time() - t0 < 15, time.time() - t0
        c.close()
        c = Conn(srv)                                  # connected, silent
        t0 = time.time()
        assert c.closed() and time.time() - t0 < 15
        c.close()
        # a client that sends and never reads: once the answers fill the
        # socket, the server stops reading it, and closes it after
        # --request-timeout of blocked writing
        before = stats(srv)["http"]["timeouts"]
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", srv.port))
        s.setblocking(False)
        data = request("GET", "/books?limit=100") * 1500  # ~12 MB of answers, one statement each
        t0 = time.time()
        while data and time.time() - t0 < 5:
            try:
                data = data[s.send(data):]
            except BlockingIOError:
                time.sleep(0.01)
        wait_for(lambda: stats(srv)["http"]["timeouts"] == before + 1, "the stalled writer to be dropped", 15)
        s.close()
        assert stats(srv)["http"]["timeouts"] >= 2
    finally:
        srv.stop()


# ==== disconnects, 503, 504 ==================================================

class RowLock:
    """Holds FOR UPDATE on one book in a psql session until released."""

    def __init__(self, book_id):
        self.p = subprocess.Popen(["psql", os.environ["AORM_TEST_DSN"], "-X", "-q", "-A", "-t"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.p.stdin.write("BEGIN;\nSELECT id FROM books WHERE id = %d FOR UPDATE;\n" % book_id)
        self.p.stdin.flush()
        assert self.p.stdout.readline().strip() == str(book_id)   # the lock is held

    def release(self):
        self.p.stdin.write("ROLLBACK;\n")
        self.p.stdin.close()
        self.p.wait(10)


def new_book(srv):
    author = int(psql("SELECT max(id) FROM authors"))
    st, j = call_json(srv, "POST", "/books", {"author_id": author, "title": "lock me", "year": 2000, "price": 1})
    assert st == 201
    return j["id"]


def wait_for(cond, what, timeout=10):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out waiting for " + what
        time.sleep(0.02)


def disconnects():
    srv = Server("--workers", "1", "--deadline", "30")
    try:
        bid = new_book(srv)
        # a client that goes away while its PATCH waits for a row lock: the
        # request is freed, its session and statements cancelled
        lock = RowLock(bid)
        before = stats(srv)["http"]["cancelled"]
        c = Conn(srv)
        c.send(request("PATCH", "/books/%d" % bid, {"title": "never"}))
        wait_for(lock_wait_seen, "the PATCH to wait for the lock")
        c.close()
        wait_for(lambda: stats(srv)["http"]["cancelled"] == before + 1, "the request to be cancelled")
        lock.release()
        # its COMMIT was never sent: the UPDATE may run now, and is rolled back
        assert psql("SELECT title FROM books WHERE id = %d" % bid) == "lock me", "a cancelled PATCH committed"
        # the connection the cancelled transaction held is healthy again
        st, j = call_json(srv, "PATCH", "/books/%d" % bid, {"title": "after"})
        assert st == 200 and j["title"] == "after"
        # many clients that vanish mid-request (pipelined reads in flight,
        # half-sent requests, bodies cut short)
        for i in range(60):
            c = Conn(srv)
            if i % 3 == 0:
                c.send(request("GET", "/queries?queries=500") * 3)
            elif i % 3 == 1:
                c.send(request("GET", "/authors/%d" % (i + 1))[:-10])
            else:
                c.send(request("POST", "/books", b'{"author_id": 1, "title": "abc", "year": 1, "price": 1}')[:-5])
            c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()  # RST
        assert call(srv, "GET", "/queries?queries=20")[0] == 200
        call_json(srv, "DELETE", "/books/%d" % bid)
    finally:
        srv.stop()


def lock_wait_seen():
    return psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'UPDATE%%books%%'") == "1"


def pool_timeout():
    """503: the only connection is held by a PATCH that waits for a row
    lock (no deadline can end that wait first: --deadline 60); a read
    waits for the pool and gives up after --pool-timeout."""
    srv = Server("--workers", "1", "--pool", "1", "--overflow", "0", "--pool-timeout", "0.5", "--deadline", "60")
    try:
        bid = new_book(srv)
        lock = RowLock(bid)
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("patch", call_json(srv, "PATCH", "/books/%d" % bid,
                                                                              {"title": "later"})))
        try:
            t.start()
            wait_for(lock_wait_seen, "the PATCH to wait for the lock")
            st, j = call_json(srv, "GET", "/authors/1")
            assert st == 503 and "pool" in j["error"], (st, j)
        finally:
            lock.release()
            t.join(30)
        st, j = out["patch"]
        assert st == 200 and j["title"] == "later", (st, j)   # it went on once the lock was gone
        assert call_json(srv, "GET", "/authors/1")[0] == 200
        assert call(srv, "DELETE", "/books/%d" % bid)[0] == 204
    finally:
        srv.stop()


def deadline():
    """504: a PATCH that waits for a row lock longer than --deadline; the
    server stops the statement (57014), nothing is committed, and the
    connection serves the next request."""
    srv = Server("--workers", "1", "--deadline", "1")
    try:
        bid = new_book(srv)
        lock = RowLock(bid)
        try:
            t0 = time.time()
            st, j = call_json(srv, "PATCH", "/books/%d" % bid, {"title": "late"})
            took = time.time() - t0
        finally:
            lock.release()
        assert st == 504 and j["sqlstate"] == "57014", (st, j)
        assert took >= 0.9, took
        assert psql("SELECT title FROM books WHERE id = %d" % bid) == "lock me"
        st, j = call_json(srv, "PATCH", "/books/%d" % bid, {"title": "in time"})
        assert st == 200 and j["title"] == "in time", (st, j)
        assert call(srv, "DELETE", "/books/%d" % bid)[0] == 204
    finally:
        srv.stop()


# ==== SIGTERM during load ====================================================

def sigterm_under_load():
    srv = Server("--workers", "2", "--shutdown-grace", "5")
    stop = threading.Event()
    results = []
    errors = []
    progress = [0]  # answers so far, all clients (a list: the threads add to it)

    def client(k):
        """Keeps 4 requests in flight; each response must match the oldest
        unanswered request (its row count), so an answer given twice or out
        of order fails; at the end every request is answered or the
        connection is closed."""
        try:
            c = Conn(srv, timeout=20)
        except OSError:
            return
        sent, answered, n = [], 0, 0
        try:
            while True:
                while len(sent) - answered < 4 and not stop.is_set():
                    q = n % 7 + 1
                    n += 1
                    try:
                        c.send(request("GET", "/queries?queries=%d" % q))
                    except OSError:
                        break
                    sent.append(q)
                if answered == len(sent):
                    break
                try:
                    r = c.response()
                except (ConnectionResetError, BrokenPipeError):
                    r = None
                if r is None:
                    break
                st, hd, b = r
                assert st == 200, st
                assert len(json.loads(b)) == sent[answered], "answer out of order or twice"
                answered += 1
                progress[0] += 1
                if hd.get("connection") == "close":
                    assert c.closed() and not c.buf, "data after a closing answer"
                    break
            results.append((len(sent), answered))
        except Exception:
            errors.append(traceback.format_exc())
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    wait_for(lambda: progress[0] >= 200, "200 answers under load", 60)  # the load is real
    srv.p.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a client hangs: a request neither answered nor its connection closed"
    err = srv.stop()
    assert not errors, errors[0]
    assert len(results) == 16, results
    assert "stopped" in err
    # nothing listens any more
    try:
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        raise AssertionError("still accepting after SIGTERM")
    except ConnectionRefusedError:
        pass


def access_log(srv):
    with open(srv.log.name) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    assert lines, "no access log"
    x = next(l for l in lines if l["path"] == "/fortunes")
    assert set(x) >= {"time", "worker", "remote", "method", "path", "status", "bytes", "ms"}
    assert x["method"] == "GET" and x["status"] == 200


def techempower_verify():
    """scripts/techempower-verify passes against the server: shapes,
    headers, escaping, and the statement and row counts the TechEmpower
    rules demand, read from pg_stat_statements."""
    srv = Server("--workers", "2")
    try:
        verifier = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "techempower-verify")
        out = subprocess.run([sys.executable, verifier, "--url", "http://127.0.0.1:%d" % srv.port],
                             capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        assert "0 failed" in out.stdout
    finally:
        srv.stop()


def main():
    global SERVER
    SERVER = os.path.abspath(sys.argv[1])
    ONLY.update(sys.argv[2:])  # names of groups to run (default: all)
    for var in ("AORM_TEST_DSN",):
        if var not in os.environ:
            print("FAIL: %s is not set: run inside scripts/sandbox run --schema" % var)
            return 1
    srv = Server("--workers", "1", "--max-body", "1024")
    try:
        check("te_endpoints", te_endpoints, srv)
        check("statement_counts", statement_counts, srv)
        check("cached_queries", cached_queries, srv)
        check("bookstore", bookstore, srv)
        check("keep_alive_and_pipelining", keep_alive_and_pipelining, srv)
        check("malformed", malformed, srv)
        check("access_log", access_log, srv)
    finally:
        check("clean_stop", srv.stop)
    check("techempower_verify", techempower_verify)
    check("timeouts", timeouts)
    check("disconnects", disconnects)
    check("pool_timeout", pool_timeout)
    check("deadline", deadline)
    check("sigterm_under_load", sigterm_under_load)
    print("%d passed, %d failed%s" % (len(PASSED), len(FAILURES), (": " + ", ".join(FAILURES)) if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
