#!/usr/bin/env python3
"""The verifier's own test: scripts/techempower-verify passes a server that keeps the rules it can
see from outside and fails one that breaks any of them.

Run by ctest (suite `techempower_verify`) inside `scripts/sandbox run --schema`:

    python3 tests/test_techempower_verify.py

The server here is a small standard-library HTTP server that reads the world and fortune tables
once at start (psql) and answers every TechEmpower endpoint from memory; /updates writes its rows
with one psql call. So it passes every check of the answers (`--no-counts`), and must fail the
pg_stat_statements counts (it runs no statement per request). Each broken mode then spoils one
rule, and the verifier must fail with that rule's line; in the mode `in-list`, /db runs one real
SELECT per request (its count passes) and /queries one SELECT ... IN (its count fails). Writes
touch only the world table.
"""
import html
import json
import os
import random
import subprocess
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

VERIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "techempower-verify")
ADDED = "Additional fortune added at request time."


def psql(sql):
    out = subprocess.run(["psql", os.environ["AORM_TEST_DSN"], "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                          "-F", "\x1f", "-R", "\x1e", "-c", sql], check=True, capture_output=True, text=True)
    text = out.stdout[:-1] if out.stdout.endswith("\n") else out.stdout
    return [r.split("\x1f") for r in text.split("\x1e") if r]


class State:
    def __init__(self, broken):
        self.broken = broken
        self.lock = threading.Lock()
        self.world = {int(i): int(n) for i, n in psql("SELECT id, randomnumber FROM world")}
        self.fortunes = [(int(i), m) for i, m in psql("SELECT id, message FROM fortune")]
        self.started = time.time()


def clamp(q, broken):
    try:
        n = int(q)
    except (TypeError, ValueError):
        return 1
    return max(n, 1) if broken == "no-clamp" else min(max(n, 1), 500)


def handler_for(state):
    b = state.broken

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def send(self, body, ctype):
            if isinstance(body, str):
                body = body.encode()
            self.send_response_only(200)
            if b != "no-server":
                self.send_header("Server", "verify-test")
            now = state.started if b == "stale-date" else time.time()
            self.send_header("Date", formatdate(now, usegmt=True))
            self.send_header("Content-Type", ctype)
            if b == "no-length":  # the body ends where the connection does
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def rows(self, n):
            ids = [random.randint(1, 10000) for _ in range(n)]
            key = "randomnumber" if b == "key-case" else "randomNumber"
            with state.lock:
                return [{"id": i, key: state.world[i] + (1 if b == "wrong-value" else 0)} for i in ids]

        def do_GET(self):
            u = urlsplit(self.path)
            q = {k: v[0] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
            ctype = "application/json"
            if u.path == "/json":
                self.send(json.dumps({"message": "Hello, World!"}), ctype)
            elif u.path == "/plaintext":
                self.send("Hello, World!", "text/html" if b == "plain-type" else "text/plain")
            elif u.path == "/db" and b == "in-list":  # one real SELECT of one row
                i = random.randint(1, 10000)
                n = int(psql(f"SELECT randomnumber FROM world WHERE id = {i}")[0][0])
                self.send(json.dumps({"id": i, "randomNumber": n}), ctype)
            elif u.path == "/db":
                self.send(json.dumps(self.rows(1)[0] if b != "db-array" else self.rows(1)), ctype)
            elif u.path == "/queries" and b == "in-list":  # all rows in one SELECT ... IN
                ids = [random.randint(1, 10000) for _ in range(clamp(q.get("queries"), b))]
                got = dict(psql("SELECT id, randomnumber FROM world WHERE id IN (%s)" % ",".join(map(str, ids))))
                self.send(json.dumps([{"id": i, "randomNumber": int(got[str(i)])} for i in ids]), ctype)
            elif u.path == "/queries":
                self.send(json.dumps(self.rows(clamp(q.get("queries"), b))), ctype)
            elif u.path == "/cached-queries":
                self.send(json.dumps(self.rows(clamp(q.get("count"), b))), ctype)
            elif u.path == "/updates":
                rows = self.rows(clamp(q.get("queries"), b))
                for r in rows:
                    r["randomNumber"] = random.randint(1, 10000)
                if b != "no-persist":
                    values = ", ".join(f"({r['id']}, {r['randomNumber']})" for r in rows)
                    with state.lock:
                        psql("UPDATE world SET randomnumber = v.n FROM (VALUES " + values +
                             ") AS v(id, n) WHERE world.id = v.id")
                        for r in rows:
                            state.world[r["id"]] = r["randomNumber"]
                self.send(json.dumps(rows), ctype)
            elif u.path == "/fortunes":
                items = list(state.fortunes)
                if b != "no-added":
                    items.append((0, ADDED))
                items.sort(key=lambda f: f[1], reverse=(b == "unsorted"))
                esc = (lambda m: m) if b == "unescaped" else html.escape
                cells = "".join(f"<tr><td>{i}</td><td>{esc(m)}</td></tr>" for i, m in items)
                self.send("<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>"
                          f"<tr><th>id</th><th>message</th></tr>{cells}</table></body></html>",
                          "text/html; charset=utf-8")
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

    return Handler


def serve(broken):
    state = State(broken)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def verify(server, *args):
    url = f"http://127.0.0.1:{server.server_address[1]}"
    out = subprocess.run([sys.executable, VERIFIER, "--url", url, "--concurrency", "4", "--requests", "3",
                          "--no-bookstore"] + list(args), capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout + out.stderr


# mode -> a line the verifier must print (every mode: exit status 1)
BROKEN = {
    "no-server": "FAIL /json: headers and body: no Server header",
    "stale-date": "FAIL Date: a new value 1.2 s later, on a new connection",
    "no-length": "FAIL /json: headers and body: neither Content-Length nor Transfer-Encoding",
    "plain-type": "FAIL /plaintext: headers and body: Content-Type 'text/html'",
    "db-array": "FAIL /db: 20 requests",
    "key-case": "FAIL /db: 20 requests, headers and one row of the database each: the key is not spelled randomNumber",
    "wrong-value": "the database has",
    "no-clamp": "FAIL /queries?queries=501 -> 500 rows: 501 objects instead of 500",
    "no-persist": "FAIL /updates: the",
    "no-added": "FAIL /fortunes",
    "unsorted": "rows not sorted by message",
    "unescaped": "a raw <script> in the body",
}


def main():
    failures = []

    def expect(cond, what, output):
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        if not cond:
            failures.append(what)
            print("    " + output.replace("\n", "\n    "), flush=True)

    good = serve(None)
    rc, out = verify(good, "--no-counts")
    expect(rc == 0 and "0 failed" in out, "a server keeping the rules passes (answers only)", out)
    rc, out = verify(good)
    expect(rc == 1 and "FAIL /db: 12 SELECTs of one row on world for 12 requests: 0 SELECTs" in out
           and "FAIL /queries?queries=20: 240 SELECTs" in out and "FAIL /fortunes: 12 SELECTs" in out,
           "the same server fails the statement counts (it answers from memory)", out)
    good.shutdown()
    server = serve("in-list")
    rc, out = verify(server)
    expect(rc == 1 and "PASS /db: 12 SELECTs of one row on world for 12 requests" in out
           and "FAIL /queries?queries=20: 240 SELECTs of one row each on world for 12 requests (no IN/ANY): 12 SELECTs"
           in out, "one SELECT per /db request passes the count; /queries in one SELECT ... IN fails it", out)
    server.shutdown()
    for mode, line in BROKEN.items():
        server = serve(mode)
        rc, out = verify(server, "--no-counts")
        expect(rc == 1 and line in out, f"broken ({mode}): fails with '{line}'", out)
        server.shutdown()
    print(f"{len(BROKEN) + 3 - len(failures)} passed, {len(failures)} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    if "AORM_TEST_DSN" not in os.environ:
        print("test_techempower_verify: AORM_TEST_DSN is not set: run it inside scripts/sandbox run --schema",
              file=sys.stderr)
        sys.exit(1)
    sys.exit(main())
