#!/usr/bin/env python3
"""Hostile and faulty peers against one head node.

Proves that the head node survives peers that misbehave on purpose or by
accident, keeps its memory bounded, and keeps serving a well-behaved client
at that client's normal rate while they do. It starts one head node under
an open-file limit of 1024 (soft and hard), with its stdout connected to a
pipe that is never read, two data nodes, and a legitimate client that sends
`numero random: N` every 50 ms for the whole battery. Then it runs these
cases, each printing one line that ends in `ok` or `FAIL`:

  1. never-reads-empty-lines    4 clients flood empty lines and never read:
                                the head node stops reading them.
  2. long-lines                 4 clients send 64 KiB lines and never read;
                                a 65537-byte line gets `ERROR line too long`.
  3. 20k-connections            20,000 connections against 1024 descriptors,
                                half silent, half idle clients; afterwards a
                                new client stores a message.
  4. partial-lines-and-stalled-handshakes
                                unfinished lines and handshakes are closed
                                by the line and handshake timeouts.
  5. registration-churn         2,000 data-node registrations without a valid
                                proof are refused; the real nodes stay.
  6. bad-payloads               control characters, invalid UTF-8 and empty
                                lines get one ERROR each, in order; nothing
                                bad reaches data.txt (`datanode verify`).
  7. stdout-nobody-reads        the head node logged far more than a pipe
                                holds to a stdout nobody reads, and serves.

Every case also checks that the head node is alive, that its RSS stayed
under 256 MB, and that the legitimate client got at least 80% of its normal
acknowledgements with a p99 latency under 1 s, both in the last 3 s and in
every 3 s window of the case.

It builds nothing: it uses the binaries in $BIN_DIR (default target/release
if it holds them, else target/debug). Linux only (/proc, prlimit). Needs
only Python 3 and its standard library. Takes about a minute:

    cargo build --release -p headnode -p datanode && python3 tests/hostile.py

Exit status 0 only if every case passed and the head node then stopped
cleanly on SIGTERM; the last line is `N passed, M failed`.
HOSTILE_CASES=long-lines,bad-payloads runs only the cases named.
"""

import collections
import errno
import fcntl
import os
import re
import resource
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from common import bin_dir_and_why, free_port  # noqa: E402

HEAD_FD_LIMIT = 1024
RSS_LIMIT_MB = 256
LINE_TIMEOUT_S = 5
HANDSHAKE_TIMEOUT_S = 3
MAX_LINE = 65536

LEGIT_INTERVAL = 0.05
WINDOW = 3.0
EXPECTED_ACKS = round(WINDOW / LEGIT_INTERVAL)
MIN_ACKS = int(EXPECTED_ACKS * 0.8)
P99_LIMIT_MS = 1000.0
REPLY_TIMEOUT = 10.0

ACK = re.compile(r"^(\S+) , mensaje: recibido (\d+-\d+)$")


# --------------------------------------------------------------------------
# Small helpers


bin_dir = bin_dir_and_why


def mb(n_bytes):
    return n_bytes / (1024 * 1024)


def tail(path, lines=30):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return [f"(cannot read {path}: {e})"]
    return text.splitlines()[-lines:]


class Peer:
    """A blocking TCP connection to the head node that reads lines."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def line(self, timeout=5.0):
        """The next line as text, or None when the head node closed."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line within {timeout}s (have {self.buf[:80]!r})")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace")

    def handshake(self, role=b"cliente"):
        self.send(b"peticion\n")
        answer = self.line()
        if answer != "confirmacion":
            raise ConnectionError(f"handshake answered {answer!r}")
        self.send(role + b"\n")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def raise_own_fd_limit():
    """Raises this process's soft open-file limit to its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


# --------------------------------------------------------------------------
# Observers: the head node's memory and a legitimate client


class RssSampler(threading.Thread):
    """Samples the head node's VmRSS (and VmHWM) every 50 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.case_peak_kb = 0
        self.hwm_kb = 0

    def read(self):
        rss = hwm = None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm = int(line.split()[1])
        except OSError:
            pass
        return rss, hwm

    def run(self):
        while not self.stop.wait(0.05):
            rss, hwm = self.read()
            if rss is None:
                continue
            with self.lock:
                self.case_peak_kb = max(self.case_peak_kb, rss)
                self.hwm_kb = max(self.hwm_kb, hwm or 0)

    def start_case(self):
        rss, _ = self.read()
        with self.lock:
            self.case_peak_kb = rss or 0

    def case_peak_mb(self):
        rss, _ = self.read()
        with self.lock:
            return max(self.case_peak_kb, rss or 0) / 1024

    def hwm_mb(self):
        _, hwm = self.read()
        with self.lock:
            return max(self.hwm_kb, hwm or 0) / 1024


Reply = collections.namedtuple("Reply", "sent latency ok node text")


class LegitClient(threading.Thread):
    """One well-behaved client: a message every 50 ms, one in flight at a
    time, every reply's latency recorded; it reconnects if closed."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.replies = []
        self.pending_since = None
        self.connections = 0
        self.failures = []

    def run(self):
        n = 0
        attempts = 0
        while not self.stop.is_set() and attempts < 10_000:
            attempts += 1
            try:
                peer = Peer(self.port)
                peer.handshake()
            except (OSError, ConnectionError, TimeoutError) as e:
                self.failures.append(f"connect: {e}")
                self.stop.wait(0.2)
                continue
            self.connections += 1
            try:
                next_send = time.monotonic()
                while not self.stop.is_set():
                    delay = next_send - time.monotonic()
                    if delay > 0 and self.stop.wait(delay):
                        break
                    n += 1
                    sent = time.monotonic()
                    with self.lock:
                        self.pending_since = sent
                    peer.send(f"numero random: {n}\n".encode())
                    text = peer.line(timeout=REPLY_TIMEOUT)
                    got = time.monotonic()
                    with self.lock:
                        self.pending_since = None
                    if text is None:
                        self.failures.append("closed by the head node")
                        break
                    match = ACK.match(text)
                    with self.lock:
                        self.replies.append(Reply(sent, got - sent, bool(match),
                                                  match.group(1) if match else None, text))
                    next_send = sent + LEGIT_INTERVAL
            except (OSError, TimeoutError) as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            finally:
                with self.lock:
                    self.pending_since = None
                peer.close()

    def window(self, end=None, length=WINDOW):
        """Acks received in (end - length, end], and the p99 latency of the
        messages sent in it (one still unanswered counts as waiting so far)."""
        end = time.monotonic() if end is None else end
        start = end - length
        with self.lock:
            replies = list(self.replies)
            pending = self.pending_since
        acks = [r for r in replies if r.ok and start < r.sent + r.latency <= end]
        errors = [r for r in replies if not r.ok and start < r.sent + r.latency <= end]
        latencies = [r.latency for r in replies if start < r.sent <= end]
        if pending is not None and start < pending <= end:
            latencies.append(end - pending)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else float("inf")
        return {
            "acks": len(acks),
            "errors": len(errors),
            "p99": p99,
            "nodes": collections.Counter(n for r in acks for n in r.node.split("+")),
            "error_texts": [r.text for r in errors][:3],
        }

    def served(self, w):
        return w["acks"] >= MIN_ACKS and w["p99"] < P99_LIMIT_MS

    def worst_window(self, start, end):
        """The worst 3 s window (fewest acks, then highest p99) within [start, end]."""
        worst = None
        t = start + WINDOW
        steps = 0
        while t <= end + 1e-9 and steps < 10_000:
            w = self.window(t)
            if worst is None or (w["acks"], -w["p99"]) < (worst["acks"], -worst["p99"]):
                worst = w
            t += 0.25
            steps += 1
        return worst

    def nodes_since(self, start):
        with self.lock:
            # An answer names every holder: `dn1+dn2 , mensaje: recibido <id>`.
            return collections.Counter(n for r in self.replies if r.ok and r.sent >= start
                                       for n in r.node.split("+"))


# --------------------------------------------------------------------------
# The cluster


class Cluster:
    def __init__(self, bins):
        self.bins = bins
        self.tmp = tempfile.mkdtemp(prefix="hostile-")
        self.port = free_port()
        self.token = secrets.token_hex(16)  # 32 characters
        self.head = None
        self.nodes = {}
        self.files = []
        self.head_log_dir = os.path.join(self.tmp, "head")
        self.head_stderr = os.path.join(self.tmp, "head-stderr.txt")
        self.limiter = ""
        self.head_stopped = False

    def binary(self, name):
        return os.path.join(self.bins, name)

    def start(self):
        env = dict(os.environ, CLUSTER_TOKEN=self.token, RUST_LOG="info")
        cmd = [self.binary("headnode"), "--listen", f"127.0.0.1:{self.port}",
               "--ping-interval", "1h", "--log-dir", self.head_log_dir,
               "--http-listen", "off",
               "--line-timeout", f"{LINE_TIMEOUT_S}s",
               "--handshake-timeout", f"{HANDSHAKE_TIMEOUT_S}s"]
        if shutil.which("prlimit"):
            self.limiter = "prlimit"
            cmd = ["prlimit", f"--nofile={HEAD_FD_LIMIT}:{HEAD_FD_LIMIT}", "--"] + cmd
        else:
            self.limiter = "ulimit"
            cmd = ["bash", "-c", f'ulimit -n {HEAD_FD_LIMIT} && exec "$@"', "--"] + cmd
        stderr = open(self.head_stderr, "wb")
        self.files.append(stderr)
        # stdout: a pipe this program never reads (case stdout-nobody-reads).
        self.head = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=stderr)
        self.wait_listening()
        for node in ("dn1", "dn2"):
            out = open(os.path.join(self.tmp, f"{node}-stdout.txt"), "wb")
            self.files.append(out)
            self.nodes[node] = subprocess.Popen(
                [self.binary("datanode"), "--headnode", f"127.0.0.1:{self.port}",
                 "--node-id", node, "--data-dir", self.data_dir(node)],
                env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            joined = self.heartbeat_log()
            if all(re.search(rf"\b{node} \S+ (re)?joined", joined) for node in self.nodes):
                return
            self.check_alive()
            time.sleep(0.1)
        raise RuntimeError("the data nodes did not join within 15 s")

    def check_alive(self):
        for name, proc in [("headnode", self.head)] + list(self.nodes.items()):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")

    def wait_listening(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.head.poll() is not None:
                raise RuntimeError(f"headnode exited with {self.head.returncode}: "
                                   + " | ".join(tail(self.head_stderr, 5)))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {self.port}")

    def data_dir(self, node):
        return os.path.join(self.tmp, node)

    def heartbeat_log(self):
        try:
            with open(os.path.join(self.head_log_dir, "heartbeat_server.txt"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def head_fd_limit(self):
        try:
            with open(f"/proc/{self.head.pid}/limits") as f:
                for line in f:
                    if line.startswith("Max open files"):
                        return "/".join(line.split()[3:5])
        except OSError:
            pass
        return "?"

    def head_alive(self):
        return self.head is not None and self.head.poll() is None

    def stop(self):
        """SIGTERM to everything started, SIGKILL after 5 s. Returns one line."""
        outcome = []
        procs = [("headnode", self.head)] + list(self.nodes.items())
        for _, proc in procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        for name, proc in procs:
            if proc is None:
                continue
            try:
                code = proc.wait(max(0.1, started + 5 - time.monotonic()))
                outcome.append(f"{name} exited {code} {time.monotonic() - started:.1f} s after SIGTERM")
                if name == "headnode":
                    self.head_stopped = code == 0
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                outcome.append(f"{name} still running 5 s after SIGTERM: killed")
        if self.head is not None and self.head.stdout is not None:
            self.head.stdout.close()
        for f in self.files:
            f.close()
        return "; ".join(outcome)

    def cleanup(self, keep_logs):
        if not keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        for node in self.nodes:
            try:
                os.remove(os.path.join(self.data_dir(node), "data.txt"))
            except OSError:
                pass


# --------------------------------------------------------------------------
# Flooding several non-blocking sockets


def flood(socks, payload, duration, stop=None):
    """Writes `payload` over and over (keeping line boundaries) to every
    socket for `duration` seconds, as fast as each socket takes it. Returns,
    per socket, the bytes taken, when it last took any, and whether it closed."""
    sel = selectors.DefaultSelector()
    view = memoryview(payload)
    state = {}
    for s in socks:
        s.setblocking(False)
        state[s] = {"sent": 0, "offset": 0, "last_progress": time.monotonic(), "closed": None}
        sel.register(s, selectors.EVENT_WRITE)
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        for key, _ in sel.select(timeout=0.05):
            s, st = key.fileobj, state[key.fileobj]
            try:
                n = s.send(view[st["offset"]:])
            except BlockingIOError:
                continue
            except OSError as e:
                st["closed"] = e.strerror or str(e)
                sel.unregister(s)
                continue
            st["sent"] += n
            st["offset"] = (st["offset"] + n) % len(payload)
            st["last_progress"] = time.monotonic()
    sel.close()
    return state


def handshaken_clients(port, count):
    peers = []
    for _ in range(count):
        p = Peer(port)
        p.handshake()
        peers.append(p)
    return peers


# --------------------------------------------------------------------------
# The cases. Each returns (what happened, problems found, end of the attack
# or None); the runner adds the checks every case shares.


def case_never_reads_empty_lines(ctx):
    """4 clients send only newlines (64 KiB per send) for 10 s and never read.
    Fails unless every one of them ends up blocked: nothing of theirs taken
    for at least the last 2 s, so the head node stopped reading them."""
    peers = handshaken_clients(ctx.port, 4)
    state = flood([p.sock for p in peers], b"\n" * 65536, 10.0)
    end = time.monotonic()
    problems = []
    sent = sum(st["sent"] for st in state.values())
    stalled = [end - st["last_progress"] for st in state.values() if not st["closed"]]
    blocked = sum(1 for s in stalled if s >= 2.0)
    closed = [st["closed"] for st in state.values() if st["closed"]]
    if blocked != 4:
        problems.append(f"only {blocked} of 4 flooders were blocked for the last 2 s")
    # Still open, just not read: the head node has not dropped them yet.
    what = (f"4 clients sent {mb(sent):.1f} MB of empty lines in 10 s without reading; "
            f"{blocked} of 4 blocked (no byte taken for the last "
            f"{min(stalled) if stalled else 0:.1f}+ s), {len(closed)} closed")
    for p in peers:
        p.close()
    return what, problems, end


def case_long_lines(ctx):
    """4 clients send 64 KiB lines (the longest allowed) for 10 s and never
    read; meanwhile one client sends a 65537-byte line. Fails unless that one
    gets `ERROR line too long (max 65536 bytes)` and is then closed."""
    peers = handshaken_clients(ctx.port, 4)
    stop = threading.Event()
    result = {}
    flooder = threading.Thread(
        target=lambda: result.update(flood([p.sock for p in peers], b"x" * MAX_LINE + b"\n", 10.0, stop)),
        daemon=True)
    flooder.start()
    problems = []
    time.sleep(2.0)
    too_long = Peer(ctx.port, timeout=10)
    answer = closed = None
    try:
        too_long.handshake()
        too_long.send(b"y" * (MAX_LINE + 1) + b"\n")
        answer = too_long.line(timeout=10)
        closed = too_long.line(timeout=5) is None
    except (OSError, TimeoutError) as e:
        problems.append(f"the over-long line's client: {e}")
    finally:
        too_long.close()
    if answer != f"ERROR line too long (max {MAX_LINE} bytes)":
        problems.append(f"a 65537-byte line was answered {answer!r}")
    if closed is False:
        problems.append("the connection stayed open after the over-long line")
    flooder.join(15)
    end = time.monotonic()
    sent = sum(st["sent"] for st in result.values())
    blocked = sum(1 for st in result.values() if not st["closed"] and end - st["last_progress"] >= 2.0)
    what = (f"4 clients sent {mb(sent):.0f} MB of 64 KiB lines in 10 s without reading "
            f"({blocked} of 4 blocked at the end); a 65537-byte line got {answer!r}"
            f"{' and was closed' if closed else ''}")
    for p in peers:
        p.close()
    return what, problems, end


class FloodConn:
    __slots__ = ("sock", "kind", "state", "buf", "outcome")

    def __init__(self, sock, kind):
        self.sock, self.kind, self.state, self.buf, self.outcome = sock, kind, "connecting", b"", None


def case_20k_connections(ctx):
    """20,000 TCP connections over ~20 s against a head node limited to 1024
    descriptors: every other one silent, the rest finish the handshake as
    `cliente` and then say nothing; held as long as the head node keeps
    them. Fails unless the head node stays up, the legitimate client is served
    during the whole flood, and afterwards a new client stores a message."""
    total, duration = 20_000, 20.0
    limit = raise_own_fd_limit()
    hold_cap = max(100, limit - 256)
    sel = selectors.DefaultSelector()
    conns = {}
    outcomes = collections.Counter()
    connected = handshakes = most_held = opened = 0
    start = time.monotonic()
    addr = ("127.0.0.1", ctx.port)

    def finish(c, outcome):
        c.outcome = outcome
        outcomes[outcome] += 1
        sel.unregister(c.sock)
        c.sock.close()
        del conns[id(c)]

    while True:
        now = time.monotonic()
        if now - start > duration + 15:
            break
        due = min(total, int((now - start) / duration * total) + 1)
        while opened < due and len(conns) < hold_cap:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            kind = "idle" if opened % 2 == 0 else "cliente"
            opened += 1
            err = s.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                outcomes[f"connect failed ({errno.errorcode.get(err, err)})"] += 1
                s.close()
                continue
            c = FloodConn(s, kind)
            conns[id(c)] = c
            sel.register(s, selectors.EVENT_WRITE, c)
        most_held = max(most_held, len(conns))
        if opened >= total and now - start >= duration:
            break
        for key, events in sel.select(timeout=0.005):
            c = key.data
            if c.state == "connecting":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(c, f"connect failed ({errno.errorcode.get(err, err)})")
                    continue
                connected += 1
                c.state = "idle"
                if c.kind == "cliente":
                    try:
                        c.sock.send(b"peticion\n")
                        c.state = "greeting"
                    except OSError:
                        finish(c, "closed by the head node")
                        continue
                sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            try:
                data = c.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                finish(c, c.outcome or "closed by the head node without a word")
                continue
            c.buf += data
            while b"\n" in c.buf:
                line, _, c.buf = c.buf.partition(b"\n")
                text = line.decode("utf-8", "replace")
                if text == "confirmacion" and c.state == "greeting":
                    try:
                        c.sock.send(b"cliente\n")
                    except OSError:
                        pass
                    c.state = "cliente"
                    handshakes += 1
                elif text.startswith("ERROR server full"):
                    c.outcome = "refused: ERROR server full"
                elif text.startswith("ERROR server busy"):
                    c.outcome = "closed: ERROR server busy (evicted from the handshake room)"
                elif text.startswith("ERROR handshake timed out"):
                    c.outcome = "closed: ERROR handshake timed out"
                elif text.startswith("ERROR"):
                    c.outcome = f"closed: {text[:60]}"
    end = time.monotonic()
    held = collections.Counter()
    for c in list(conns.values()):
        if c.state == "cliente" and not c.outcome:
            held["still open as cliente"] += 1
        elif c.state == "connecting":
            held["still connecting"] += 1
        else:
            held["still open in the handshake"] += 1
        c.sock.close()
    sel.close()
    conns.clear()

    problems = []
    if connected < total * 0.95:
        problems.append(f"the battery connected only {connected} of {total}")
    refused = outcomes["refused: ERROR server full"]
    closed = sum(n for o, n in outcomes.items() if o.startswith("closed"))
    failed = sum(n for o, n in outcomes.items() if o.startswith("connect failed"))
    accepted = handshakes - refused
    details = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()) if n)
    if held:
        details += ", " + ", ".join(f"{n} {o}" for o, n in sorted(held.items()))

    # A new client, once the flood is closed.
    time.sleep(1.0)
    new_client = "no"
    try:
        p = Peer(ctx.port)
        p.handshake()
        p.send(b"a new client after the flood\n")
        answer = p.line()
        p.close()
        if answer and ACK.match(answer):
            new_client = "yes"
        else:
            problems.append(f"a new client after the flood got {answer!r}")
    except (OSError, ConnectionError, TimeoutError) as e:
        problems.append(f"a new client after the flood could not store a message: {e}")
    what = (f"{opened} connections in {end - start:.0f} s (half idle, half cliente), at most "
            f"{most_held} held at once: {connected} connected, {accepted} accepted as cliente, "
            f"{refused} refused with ERROR server full, {closed} closed by the head node, "
            f"{failed} failed to connect [{details}]; a new client stored a message "
            f"afterwards: {new_client}")
    return what, problems, end


def watch_closes(socks, deadline):
    """Reads each socket until the head node closes it. Returns, per socket,
    (seconds until closed or None, text received)."""
    sel = selectors.DefaultSelector()
    data = {}
    for s, sent_at in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, sent_at)
        data[s] = [None, b""]
    open_count = len(socks)
    while open_count and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                chunk = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                data[s][1] += chunk
                continue
            data[s][0] = time.monotonic() - key.data
            sel.unregister(s)
            open_count -= 1
    sel.close()
    for s, _ in socks:
        s.close()
    return [(closed, text.decode("utf-8", "replace")) for closed, text in data.values()]


def case_partial_lines_and_stalled_handshakes(ctx):
    """200 clients send `peticion\\ncliente\\nnumero` (a line never finished)
    and 200 send `peti` (a handshake never finished). Fails unless each is
    closed by the head node with the matching ERROR, the first after the
    line timeout (5 s), the second after the handshake timeout (3 s), each
    no earlier than 0.5 s before and no later than 3 s after."""
    partial, stalled = [], []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", ctx.port), timeout=5)
        s.sendall(b"peticion\ncliente\nnumero")
        partial.append((s, time.monotonic()))
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", ctx.port), timeout=5)
        s.sendall(b"peti")
        stalled.append((s, time.monotonic()))
    deadline = time.monotonic() + LINE_TIMEOUT_S + 6
    results = {"partial": None, "stalled": None}
    t = threading.Thread(target=lambda: results.update(partial=watch_closes(partial, deadline)), daemon=True)
    t.start()
    results["stalled"] = watch_closes(stalled, deadline)
    t.join(LINE_TIMEOUT_S + 10)
    end = time.monotonic()
    problems = []
    summary = []
    for name, got, timeout, expect in [
        ("unfinished lines", results["partial"], LINE_TIMEOUT_S, f"ERROR line not finished within {LINE_TIMEOUT_S}s"),
        ("stalled handshakes", results["stalled"], HANDSHAKE_TIMEOUT_S, f"ERROR handshake timed out after {HANDSHAKE_TIMEOUT_S}s"),
    ]:
        got = got or []
        times = [c for c, _ in got if c is not None]
        in_time = [c for c in times if timeout - 0.5 <= c <= timeout + 3]
        told = sum(1 for _, text in got if expect in text)
        if len(in_time) != 200:
            problems.append(f"{len(times)} of 200 {name} closed, {len(in_time)} within {timeout - 0.5:.1f}-{timeout + 3} s")
        if told != 200:
            others = collections.Counter(text.strip().splitlines()[-1][:50] if text.strip() else "(nothing)"
                                         for _, text in got if expect not in text)
            problems.append(f"{told} of 200 {name} got {expect!r}; others: {dict(others)}")
        span = f"{min(times):.1f}-{max(times):.1f} s" if times else "never"
        summary.append(f"{len(times)} of 200 {name} closed after {span} ({told} told {expect[6:]!r})")
    return "; ".join(summary), problems, end


def fake_registration(port, n, with_nonce):
    """One data-node registration under a made-up id, without a valid proof.
    Returns what the head node finally answered."""
    p = Peer(port, timeout=10)
    try:
        p.handshake(role=(f"dataNode id=fake-{n} incarnation=1"
                          + (f" nonce={secrets.token_hex(16)}" if with_nonce else "")).encode())
        answer = p.line(timeout=10)
        if with_nonce:
            if not (answer or "").startswith("challenge "):
                return f"instead of a challenge: {answer!r}"
            p.send(b"proof " + b"0" * 64 + b"\n")
            answer = p.line(timeout=10)
        return answer
    except (OSError, ConnectionError, TimeoutError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        p.close()


def case_registration_churn(ctx):
    """2,000 registrations as data nodes `fake-<n>`: 1,000 without a nonce,
    1,000 with a nonce and then a wrong proof. Fails unless every one gets
    `ERROR unauthorized`, no fake id shows in the membership log, no real
    data node was evicted, and the legitimate client's acks keep naming dn1
    and dn2 (and nothing else)."""
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda n: fake_registration(ctx.port, n, n % 2 == 1), range(2000)))
    outcomes = collections.Counter(answers)
    refused = outcomes["ERROR unauthorized"]
    problems = []
    if refused != 2000:
        others = {a: n for a, n in outcomes.items() if a != "ERROR unauthorized"}
        problems.append(f"only {refused} of 2000 refused; others: {dict(list(others.items())[:5])}")
    time.sleep(WINDOW)
    hb = ctx.cluster.heartbeat_log()
    fakes_in_log = len(re.findall(r"\bfake-\d+", hb))
    evictions = [line for line in hb.splitlines() if "eliminado" in line]
    if fakes_in_log:
        problems.append(f"{fakes_in_log} mentions of fake ids in heartbeat_server.txt")
    if evictions:
        problems.append(f"evictions: {evictions[:2]}")
    nodes = ctx.legit.nodes_since(start)
    if set(nodes) != {"dn1", "dn2"}:
        problems.append(f"the legitimate client's acks since the case began name {dict(nodes)}")
    what = (f"{refused} of 2000 fake registrations refused with ERROR unauthorized "
            f"(1000 without a nonce, 1000 with a wrong proof); members unchanged: acks since "
            f"then from {', '.join(f'{k} {v}' for k, v in sorted(nodes.items(), key=str))}; "
            f"{len(evictions)} evictions")
    return what, problems, None


def verify_node(ctx, node):
    """`datanode verify` on a node's directory: (ok, summary)."""
    summary = ""
    for _ in range(2):  # a second look, in case the first saw an append in progress
        run = subprocess.run([ctx.cluster.binary("datanode"), "verify", ctx.cluster.data_dir(node)],
                             capture_output=True, text=True, timeout=120)
        summary = (run.stdout.splitlines() or [run.stderr.strip()])[0].split(": ", 1)[-1]
        clean = run.returncode == 0 or (
            run.returncode == 1 and ", 0 corrupt, 0 torn," in run.stdout)
        if clean:
            return True, summary
        time.sleep(0.5)
    return False, summary + f" (exit {run.returncode})"


def data_has_cr(path):
    with open(path, "rb") as f:
        for _ in range(1 << 20):
            chunk = f.read(1 << 20)
            if not chunk:
                return False
            if b"\r" in chunk:
                return True
    return True


def case_bad_payloads(ctx):
    """On one connection: payloads with CR, NUL, ESC, DEL, invalid UTF-8, and
    an empty line, then a normal message. Fails unless each bad one gets
    exactly its one ERROR, in order, the normal one is stored (its id in
    the named node's data.txt), `datanode verify` finds no corrupt or torn
    record on either node, and no data.txt line holds a raw CR."""
    cases = [
        (b"a\rb", "ERROR invalid message: control character U+000D"),
        (b"a\x00b", "ERROR invalid message: control character U+0000"),
        (b"a\x1bb", "ERROR invalid message: control character U+001B"),
        (b"a\x7fb", "ERROR invalid message: control character U+007F"),
        (b"\xff\xfe", "ERROR invalid UTF-8"),
        (b"", "ERROR empty message"),
    ]
    marker = f"after the bad payloads {secrets.token_hex(4)}"
    problems = []
    p = Peer(ctx.port)
    answers = []
    extra = None
    try:
        p.handshake()
        p.send(b"".join(payload + b"\n" for payload, _ in cases) + marker.encode() + b"\n")
        for _ in range(len(cases) + 1):
            answers.append(p.line(timeout=10))
        p.sock.settimeout(0.5)
        try:
            extra = p.sock.recv(4096) or None
        except (socket.timeout, TimeoutError):
            extra = None
    except (OSError, ConnectionError, TimeoutError) as e:
        problems.append(f"bad payloads: {e}")
    finally:
        p.close()
    right = 0
    for (payload, expect), answer in zip(cases, answers):
        if answer is not None and answer.startswith(expect):
            right += 1
        else:
            problems.append(f"{payload!r} answered {answer!r}, expected {expect!r}...")
    if extra:
        problems.append(f"more answers than messages: {extra[:80]!r}")
    stored = ACK.match(answers[-1]) if len(answers) == len(cases) + 1 and answers[-1] else None
    found = False
    if not stored:
        problems.append(f"the normal message after them was answered {answers[-1] if answers else None!r}")
    else:
        holders, msg_id = stored.groups()
        needle = f"[{msg_id}] ".encode()
        for node in holders.split("+"):
            path = os.path.join(ctx.cluster.data_dir(node), "data.txt")
            found = False
            deadline = time.monotonic() + 5
            while not found and time.monotonic() < deadline:
                with open(path, "rb") as f:
                    f.seek(max(0, os.path.getsize(path) - (8 << 20)))
                    found = any(needle in line and marker.encode() in line for line in f)
                if not found:
                    time.sleep(0.2)
            if not found:
                problems.append(f"{msg_id} acknowledged by {node} is not in its data.txt")
        found = not any("is not in its data.txt" in p for p in problems)
    verdicts = []
    for node in sorted(ctx.cluster.nodes):
        ok, summary = verify_node(ctx, node)
        cr = data_has_cr(os.path.join(ctx.cluster.data_dir(node), "data.txt"))
        verdicts.append(f"{node} verify: {summary}{'; a raw CR in data.txt' if cr else ''}")
        if not ok:
            problems.append(f"{node}: datanode verify found damage: {summary}")
        if cr:
            problems.append(f"{node}: a data.txt line holds a raw CR")
    what = (f"{right} of {len(cases)} bad payloads got their one ERROR in order; the next message "
            f"was {'stored and found in data.txt' if found else 'NOT stored'}; " + "; ".join(verdicts))
    return what, problems, None


def case_stdout_nobody_reads(ctx):
    """The head node's stdout has been a pipe nobody reads since it started.
    Fails unless that pipe is full and stays so for a second in which the
    head node logs more to its file (its stdout takes nothing more), the
    file shows it logged far more than a pipe holds (over 1 MiB), and it
    still serves the legitimate client (checked by the runner). Lines
    dropped from stdout are counted there, which cannot be seen without
    reading it; the logging unit tests cover that. Whether it still stops
    on SIGTERM is checked when the battery stops it."""
    fd = ctx.cluster.head.stdout.fileno()
    pipe_size = fcntl.fcntl(fd, 1032)  # F_GETPIPE_SZ

    def unread():
        return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)

    log_path = os.path.join(ctx.cluster.head_log_dir, "registro_server.txt")
    before, size_before = unread(), os.path.getsize(log_path)
    time.sleep(1.0)
    after, size = unread(), os.path.getsize(log_path)
    with open(log_path, "rb") as f:
        notices = sum(1 for line in f if b"log output fell behind" in line)
    problems = []
    full = after >= pipe_size - 4096 and after == before
    if not full:
        problems.append(f"the stdout pipe went from {before} to {after} of {pipe_size} bytes in 1 s")
    if size <= size_before:
        problems.append("nothing was logged to registro_server.txt in 1 s")
    if size < (1 << 20):
        problems.append(f"registro_server.txt is only {size} bytes")
    what = (f"stdout pipe full and never read ({after} of {pipe_size} bytes waiting, "
            f"{'unchanged' if after == before else 'changed'} over 1 s while "
            f"{size - size_before} bytes went to the log file); the head node logged "
            f"{mb(size):.1f} MB to registro_server.txt "
            f"({notices} 'log output fell behind' notices in that file) and kept serving")
    return what, problems, None


CASES = [
    ("never-reads-empty-lines", case_never_reads_empty_lines),
    ("long-lines", case_long_lines),
    ("20k-connections", case_20k_connections),
    ("partial-lines-and-stalled-handshakes", case_partial_lines_and_stalled_handshakes),
    ("registration-churn", case_registration_churn),
    ("bad-payloads", case_bad_payloads),
    ("stdout-nobody-reads", case_stdout_nobody_reads),
]


# --------------------------------------------------------------------------


class Context:
    def __init__(self, cluster, legit, rss):
        self.cluster, self.legit, self.rss = cluster, legit, rss
        self.port = cluster.port


def run_case(ctx, name, fn):
    """Runs one case, adds the checks every case shares, prints its line."""
    ctx.rss.start_case()
    start = time.monotonic()
    try:
        what, problems, attack_end = fn(ctx)
    except Exception as e:  # a broken case is a failed case, not a crash
        what, problems, attack_end = f"the case itself failed: {type(e).__name__}: {e}", ["case error"], None
    end = attack_end or time.monotonic()
    if end - start < WINDOW:
        time.sleep(max(0.0, start + WINDOW - time.monotonic()))
        end = time.monotonic()
    last = ctx.legit.window(end)
    worst = ctx.legit.worst_window(start, end)
    peak = ctx.rss.case_peak_mb()
    alive = ctx.cluster.head_alive()
    if not alive:
        problems.append(f"the head node exited ({ctx.cluster.head.returncode})")
    if peak > RSS_LIMIT_MB:
        problems.append(f"head RSS {peak:.0f} MB over {RSS_LIMIT_MB} MB")
    if not ctx.legit.served(last):
        problems.append(f"legit client starved in the last 3 s ({last['acks']} acks, "
                        f"{last['errors']} errors {last['error_texts']})")
    if worst is not None and not ctx.legit.served(worst):
        problems.append(f"worst 3 s window during the case: {worst['acks']} acks, "
                        f"p99 {worst['p99']:.0f} ms, errors {worst['error_texts']}")
    ok = not problems
    if worst is not None and ok:
        what += f"; legit worst 3 s window {worst['acks']} acks"
    if problems:
        what += " [FAILED: " + "; ".join(problems) + "]"
    print(f"case {name}: {what}; head RSS {peak:.1f} MB (limit {RSS_LIMIT_MB} MB); "
          f"legit client {last['acks']} acks in the last 3 s, p99 {last['p99']:.0f} ms: "
          f"{'ok' if ok else 'FAIL'}", flush=True)
    return ok


def main():
    only = set(filter(None, os.environ.get("HOSTILE_CASES", "").split(",")))
    unknown = only - {name for name, _ in CASES}
    if unknown:
        print(f"unknown cases in HOSTILE_CASES: {', '.join(sorted(unknown))}")
        print("0 passed, 1 failed")
        return 1
    bins, why = bin_dir()
    for name in ("headnode", "datanode"):
        if not os.access(os.path.join(bins, name), os.X_OK):
            print(f"no {name} binary in {bins}; build first: cargo build --release -p headnode -p datanode")
            print("0 passed, 1 failed")
            return 1
    print(f"binaries: {bins} ({why})", flush=True)
    cluster = Cluster(bins)
    legit = rss = None
    passed = failed = 0
    try:
        cluster.start()
        print(f"head node pid {cluster.head.pid} on 127.0.0.1:{cluster.port}, open files "
              f"{cluster.head_fd_limit()} (soft/hard, via {cluster.limiter}), stdout a pipe "
              f"nobody reads; data nodes dn1, dn2; logs in {cluster.tmp}", flush=True)
        rss = RssSampler(cluster.head.pid)
        rss.start()
        legit = LegitClient(cluster.port)
        legit.start()
        time.sleep(WINDOW + 0.5)
        baseline = legit.window()
        print(f"legit client baseline: {baseline['acks']} acks in 3 s, p99 {baseline['p99']:.0f} ms "
              f"(needs at least {MIN_ACKS} of {EXPECTED_ACKS} and p99 under {P99_LIMIT_MS:.0f} ms)",
              flush=True)
        ctx = Context(cluster, legit, rss)
        chosen = [c for c in CASES if not only or c[0] in only]
        for name, fn in chosen:
            if run_case(ctx, name, fn):
                passed += 1
            else:
                failed += 1
            if not cluster.head_alive():
                remaining = len(chosen) - passed - failed
                print(f"the head node is gone; {remaining} cases not run")
                failed += remaining
                break
    except Exception as e:
        print(f"battery error: {type(e).__name__}: {e}")
        failed += 1
    finally:
        if legit is not None:
            legit.stop.set()
            legit.join(REPLY_TIMEOUT + 2)
        hwm = rss.hwm_mb() if rss is not None else 0.0
        if rss is not None:
            rss.stop.set()
        stopped = cluster.stop()
        print(f"head node peak RSS (VmHWM) over the battery: {hwm:.1f} MB (limit {RSS_LIMIT_MB} MB)")
        if legit is not None:
            print(f"legit client: {sum(r.ok for r in legit.replies)} acks, "
                  f"{sum(not r.ok for r in legit.replies)} errors, {legit.connections} connection(s)")
        stop_ok = cluster.head_stopped
        print(f"stop: {stopped}; the head node, its stdout still unread, "
              f"{'exited cleanly on SIGTERM' if stop_ok else 'did NOT exit cleanly on SIGTERM within 5 s'}: "
              f"{'ok' if stop_ok else 'FAIL'}")
        if cluster.head is not None:
            passed, failed = (passed + 1, failed) if stop_ok else (passed, failed + 1)
        if failed:
            for path in (os.path.join(cluster.head_log_dir, "registro_server.txt"),
                         os.path.join(cluster.head_log_dir, "heartbeat_server.txt"),
                         cluster.head_stderr):
                print(f"--- last 30 lines of {path}")
                for line in tail(path):
                    print(f"    {line}")
            print(f"logs kept in {cluster.tmp}")
        cluster.cleanup(keep_logs=bool(failed))
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
