#!/usr/bin/env python3
"""Replication, idempotent keys and a restartable head node, on real processes.

Starts head nodes and data nodes from the release (or debug) binaries on
free loopback ports, drives them with `client store` and with a small keyed
client written here, and checks every copy on disk. Each case prints lines
ending in `ok` or `FAIL` and its figures:

  disk-loss      R=2, W=2, 3 data nodes, 10 clients x 2,000 pipelined keyed
                 messages. One data node is SIGKILLed in the middle and its
                 data directory deleted. Every acknowledged message is in the
                 data.txt of a surviving node, and on both of its holders
                 unless the lost node was one of them. The lost node comes
                 back empty, with a new data directory, and stores new messages.
  head-crash     The same load with --pipeline 16; the head node is SIGKILLed
                 twice and restarted each time. Everything acknowledged is
                 stored, no key has more than R copies or two ids, and the
                 clients finish without error. Prints the time from each new
                 head node's start to its first acknowledgement.
  ack-timeout    A data node is paused (SIGSTOP) for longer than the ack
                 timeout under load, then resumed: one id per key, and no
                 key has more than R copies.
  stale-head     A data node dies and comes back pointed at another head node
                 that started before the one it had joined: that one goes
                 above the epoch the node had accepted (epochs are counters,
                 not start times), so every id it gives is newer; the head
                 node the node left, which keeps it in its member set, has no
                 majority and stores nothing more.
  too-few-nodes  W=2 with one live data node: the clear error comes
                 promptly; once a second node joins, the same keys resent are
                 stored with 2 copies.

    cargo build --release -p headnode -p datanode -p client && python3 tests/replication.py

REPLICATION_CASES=disk-loss,stale-head runs only the cases named. The last
line is `N passed, M failed`; the exit status is 0 only if all passed.
Python 3 standard library only; Linux (signals, /proc).
"""

import calendar
import collections
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from common import bin_dir, free_port  # noqa: E402

DATA_LINE = re.compile(r"^\S+ \S+ - \[(\d+-\d+)\] (.*?)mensaje: ")
KEY_FIELD = re.compile(r"(?:^| )key=(\S+)")
CLIENT_ACK = re.compile(
    r"^(\S+ \S+)\s.*Servidor recibio: (\S+) , mensaje: recibido (\d+-\d+) key=(\S+)")
REPLY = re.compile(r"^(\S+) , mensaje: recibido (\d+-\d+)$")
NOT_ENOUGH = "ERROR not enough data nodes (1 live, 2 required)"


BIN = bin_dir()


def log_time(stamp):
    """Seconds since the epoch of a log line's `YYYY-MM-DD HH:MM:SS,mmm` (UTC)."""
    day, clock = stamp.split(" ")
    whole, _, millis = clock.partition(",")
    t = time.strptime(f"{day} {whole}", "%Y-%m-%d %H:%M:%S")
    return calendar.timegm(t) + int(millis or 0) / 1000


class Checks:
    def __init__(self, case):
        self.case = case
        self.failed = 0

    def check(self, ok, what):
        print(f"  {self.case}: {what} {'ok' if ok else 'FAIL'}", flush=True)
        if not ok:
            self.failed += 1
        return ok

    def figure(self, what):
        print(f"  {self.case}: {what}", flush=True)


class Cluster:
    """One head node (restartable on its port) and data nodes dn1..dnN."""

    def __init__(self, tmp, replicas=2, min_replicas=None, head_args=()):
        self.tmp = tmp
        self.port = free_port()
        self.env = dict(os.environ, CLUSTER_TOKEN=secrets.token_hex(16), RUST_LOG="info")
        self.replicas = replicas
        self.min_replicas = min_replicas or replicas
        self.head_args = list(head_args)
        self.head = None
        self.head_runs = 0
        self.nodes = {}
        self.node_runs = collections.Counter()
        self.files = []

    def start_head(self, port=None, log_name=None):
        self.head_runs += 1
        log_dir = os.path.join(self.tmp, log_name or f"head-{self.head_runs}")
        out = open(os.path.join(self.tmp, f"{log_name or f'head-{self.head_runs}'}.out"), "wb")
        self.files.append(out)
        cmd = [os.path.join(BIN, "headnode"), "--listen", f"127.0.0.1:{port or self.port}",
               "--log-dir", log_dir, "--ping-interval", "1h",
               # Several head nodes run at once here: no HTTP port.
               "--http-listen", "off",
               "--replicas", str(self.replicas), "--min-replicas", str(self.min_replicas)]
        started = time.monotonic()
        proc = subprocess.Popen(cmd + self.head_args, env=self.env, stdout=out,
                                stderr=subprocess.STDOUT)
        wait_listening(port or self.port, proc)
        if port is None:
            self.head = proc
            self.head_log_dir = log_dir
        return proc, started

    def start_three(self, checks):
        """The head node and dn1..dn3, checked to have joined."""
        self.start_head()
        for n in ("dn1", "dn2", "dn3"):
            self.start_node(n)
        checks.check(self.wait_joined(["dn1", "dn2", "dn3"]), "3 data nodes joined")

    def kill_head(self):
        self.head.send_signal(signal.SIGKILL)
        self.head.wait(10)

    def data_dir(self, node):
        return os.path.join(self.tmp, node)

    def start_node(self, node, port=None):
        self.node_runs[node] += 1
        out = open(os.path.join(self.tmp, f"{node}-{self.node_runs[node]}.out"), "wb")
        self.files.append(out)
        self.nodes[node] = subprocess.Popen(
            [os.path.join(BIN, "datanode"), "--headnode", f"127.0.0.1:{port or self.port}",
             "--node-id", node, "--data-dir", self.data_dir(node)],
            env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self.nodes[node]

    def node_output(self, node, run=None):
        path = os.path.join(self.tmp, f"{node}-{run or self.node_runs[node]}.out")
        with open(path, errors="replace") as f:
            return f.read()

    def heartbeat_log(self):
        try:
            with open(os.path.join(self.head_log_dir, "heartbeat_server.txt"),
                      errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def head_log(self):
        text = ""
        for name in sorted(os.listdir(self.tmp)):
            if name.startswith("head-") and name.endswith(".out"):
                with open(os.path.join(self.tmp, name), errors="replace") as f:
                    text += f.read()
        return text

    def wait_joined(self, nodes, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.heartbeat_log()
            if all(re.search(rf"\b{n} \S+ (re)?joined", log) for n in nodes):
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        procs = [p for p in [self.head] + list(self.nodes.values()) if p is not None]
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in self.files:
            f.close()


def wait_listening(port, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on {port}")


class KeyedClient:
    """A line-framed client that sends `<seq> <text>` under its client id."""

    def __init__(self, port, client_id, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.sock.sendall(b"peticion\n")
        answer = self.line(timeout)
        if answer != "confirmacion":
            raise ConnectionError(f"handshake answered {answer!r}")
        self.sock.sendall(f"cliente id={client_id}\n".encode())

    def send(self, seq, text):
        self.sock.sendall(f"{seq} {text}\n".encode())

    def line(self, timeout=10):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace")

    def close(self):
        self.sock.close()


def first_ack_after(port, started, client_id, timeout=15):
    """Seconds from `started` (monotonic) to the first acknowledgement of a
    keyed message sent to the head node on `port`, retrying every 10 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = KeyedClient(port, client_id, timeout=5)
            c.send(1, "numero random: 1")
            reply = c.line(timeout=max(0.1, deadline - time.monotonic()))
            c.close()
            if REPLY.match(reply):
                return time.monotonic() - started
        except (OSError, TimeoutError, ConnectionError):
            pass
        time.sleep(0.01)
    return None


# ------------------------------------------------------------------ stores


def read_stores(dirs):
    """{node: [(id, key)]} from each data directory's data.txt."""
    stores = {}
    for node, path in dirs.items():
        rows = []
        try:
            with open(os.path.join(path, "data.txt"), errors="replace") as f:
                for line in f:
                    m = DATA_LINE.match(line)
                    if not m:
                        continue
                    key = KEY_FIELD.search(m.group(2))
                    rows.append((m.group(1), key.group(1) if key else None))
        except FileNotFoundError:
            pass
        stores[node] = rows
    return stores


def nodes_holding(stores):
    """{message id: the nodes whose data.txt holds it}."""
    where = collections.defaultdict(set)
    for node, rows in stores.items():
        for mid, _ in rows:
            where[mid].add(node)
    return where


def read_acks(log_paths):
    """[(time, holders, id, key)] from `client store` logs."""
    acks = []
    for path in log_paths:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    m = CLIENT_ACK.match(line)
                    if m:
                        acks.append((log_time(m.group(1)), m.group(2).split("+"),
                                     m.group(3), m.group(4)))
        except FileNotFoundError:
            pass
    return acks


def copies_check(checks, stores, acks, replicas):
    """The per-key checks every case shares. Returns {key: [(node, id)]}."""
    by_key = collections.defaultdict(list)
    for node, rows in stores.items():
        for mid, key in rows:
            if key is not None:
                by_key[key].append((node, mid))
    over = {k: v for k, v in by_key.items() if len(v) > replicas}
    twice_in_one = {k: v for k, v in by_key.items()
                    if len({n for n, _ in v}) < len(v)}
    ids = {k: {m for _, m in v} for k, v in by_key.items()}
    for _, _, mid, key in acks:
        ids.setdefault(key, set()).add(mid)
    two_ids = {k: v for k, v in ids.items() if len(v) > 1}
    checks.check(not over, f"no key has more than {replicas} copies ({len(over)} have"
                 + (f", e.g. {next(iter(over.items()))})" if over else ")"))
    checks.check(not twice_in_one, f"no key is stored twice on one node ({len(twice_in_one)})")
    checks.check(not two_ids, f"every key has one message id ({len(two_ids)} have two"
                 + (f", e.g. {next(iter(two_ids.items()))})" if two_ids else ")"))
    return by_key


def run_clients(cluster, n, count, pipeline, tag):
    procs, logs = [], []
    for i in range(n):
        log_dir = os.path.join(cluster.tmp, f"client-{tag}-{i}")
        logs.append(os.path.join(log_dir, "registro_cliente.txt"))
        out_path = os.path.join(cluster.tmp, f"client-{tag}-{i}.out")
        out = open(out_path, "wb")
        cluster.files.append(out)
        procs.append(subprocess.Popen(
            [os.path.join(BIN, "client"), "--log-dir", log_dir, "store",
             "--server", f"127.0.0.1:{cluster.port}", "--count", str(count),
             "--pipeline", str(pipeline), "--interval", "0", "--retry-for", "60s",
             "--client-id", f"{tag}-{i}"],
            env=dict(os.environ, RUST_LOG="info"), stdout=out, stderr=subprocess.STDOUT))
        procs[-1].out_path = out_path
    return procs, logs


def acked_count(logs):
    total = 0
    for path in logs:
        try:
            with open(path, "rb") as f:
                total += f.read().count(b"mensaje: recibido")
        except FileNotFoundError:
            pass
    return total


def wait_for(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def wait_clients(checks, procs, timeout):
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
            codes.append("timeout")
    checks.check(all(c == 0 for c in codes), f"every client finished without error (exit {codes})")
    for p, code in zip(procs, codes):
        if code != 0:
            # Why it failed: its warnings and errors, last ones first.
            with open(p.out_path, errors="replace") as f:
                worst = [line.rstrip() for line in f if " WARN " in line or " ERROR " in line]
            for line in worst[-5:]:
                print(f"    {os.path.basename(p.out_path)}: {line}")


# ------------------------------------------------------------------- cases

CLIENTS = 10
PER_CLIENT = 2000


def case_disk_loss(checks, tmp):
    # Repair starts 2 s after a loss (30 s by default).
    cluster = Cluster(tmp, head_args=("--repair-after", "2s"))
    try:
        cluster.start_three(checks)
        procs, logs = run_clients(cluster, CLIENTS, PER_CLIENT, 16, "disk")
        total = CLIENTS * PER_CLIENT
        wait_for(lambda: acked_count(logs) >= total // 2, 120)
        cluster.nodes["dn2"].send_signal(signal.SIGKILL)
        cluster.nodes["dn2"].wait(10)
        lost_at = time.time()
        shutil.rmtree(cluster.data_dir("dn2"))
        checks.figure(f"dn2 SIGKILLed and its data directory deleted after "
                      f"{acked_count(logs)} acknowledgements")
        wait_clients(checks, procs, 180)

        survivors = {n: cluster.data_dir(n) for n in ("dn1", "dn3")}
        stores = read_stores(survivors)
        acks = read_acks(logs)
        checks.check(len({a[3] for a in acks}) >= total,
                     f"{len({a[3] for a in acks})} of {total} keys acknowledged")
        where = nodes_holding(stores)
        lost, thin, late_with_lost = [], [], []
        for t, holders, mid, _ in acks:
            have = where.get(mid, set())
            if not have:
                lost.append(mid)
            if "dn2" in holders:
                if t > lost_at + 1:
                    late_with_lost.append(mid)
                if not set(holders) - {"dn2"} <= have:
                    thin.append(mid)
            elif not set(holders) <= have:
                thin.append(mid)
        checks.check(not lost, f"every acknowledged message is on a surviving node "
                     f"({len(lost)} lost of {len(acks)})")
        checks.check(not thin, f"every acknowledged message is on each of its surviving "
                     f"holders ({len(thin)} missing)")
        checks.check(not late_with_lost, "no message was acknowledged as held by dn2 after "
                     f"its loss ({len(late_with_lost)})")
        before = sum(1 for a in acks if "dn2" in a[1])
        checks.figure(f"{len(acks)} acknowledgements: {before} named dn2 (one surviving copy "
                      f"each), {len(acks) - before} have both copies on dn1 and dn3")
        copies_check(checks, stores, acks, 2)

        # The lost node comes back with an empty directory.
        cluster.start_node("dn2")
        checks.check(wait_for(lambda: len(re.findall(r"\bdn2 \S+ (re)?joined",
                                                     cluster.heartbeat_log())) >= 2, 15),
                     "dn2 rejoined with an empty data directory")
        # Its incarnation counter went with its directory: the new directory
        # (its store id) tells the process apart.
        joins = re.findall(r"\bdn2 \S+ (?:re)?joined \(incarnation (\d+)(?:, store (\w+))?",
                           cluster.heartbeat_log())
        checks.check(len(set(joins)) >= 2,
                     "with a new data directory ("
                     + " then ".join(f"incarnation {i} store {s or '?'}" for i, s in joins) + ")")
        procs, logs2 = run_clients(cluster, 2, 200, 8, "after")
        wait_clients(checks, procs, 60)
        acks2 = read_acks(logs2)
        on_dn2 = {a[2] for a in acks2 if "dn2" in a[1]}
        stored_dn2 = {mid for mid, _ in read_stores({"dn2": cluster.data_dir("dn2")})["dn2"]}
        checks.check(on_dn2 and on_dn2 <= stored_dn2,
                     f"it stores new messages ({len(on_dn2)} of {len(acks2)} acknowledged "
                     "with dn2 among the holders, all in its data.txt)")

        # Repair gave every message that lost its copy on dn2 a second one,
        # under the same id, and no message a third.
        everyone = {n: cluster.data_dir(n) for n in ("dn1", "dn2", "dn3")}

        def thin():
            where = nodes_holding(read_stores(everyone))
            return [a for a in acks + acks2 if len(where.get(a[2], ())) < 2]
        checks.check(wait_for(lambda: not thin(), 60),
                     f"repair: every acknowledged message has its 2 copies again "
                     f"({len(thin())} of {len(acks) + len(acks2)} have fewer)")
        copies_check(checks, read_stores(everyone), acks + acks2, 2)
        passes = re.findall(r"repair (?:done|stopped)[^\n]*", cluster.head_log())
        copied = sum(int(m) for m in re.findall(r"repair done[^\n]*?(\d+) copied", cluster.head_log()))
        checks.figure(f"{len(passes)} repair passes, {copied} messages copied; first: "
                      + (passes[0][:160] if passes else "none"))
    finally:
        cluster.stop()


def case_head_crash(checks, tmp):
    cluster = Cluster(tmp)
    try:
        cluster.start_three(checks)
        procs, logs = run_clients(cluster, CLIENTS, PER_CLIENT, 16, "crash")
        total = CLIENTS * PER_CLIENT
        times = []
        for k in (1, 2):
            wait_for(lambda: acked_count(logs) >= total * k // 3, 120)
            at = acked_count(logs)
            cluster.kill_head()
            time.sleep(0.3)
            _, started = cluster.start_head()
            took = first_ack_after(cluster.port, started, f"probe-{k}")
            times.append(took)
            checks.figure(f"head node SIGKILLed after {at} acknowledgements and restarted: "
                          f"first acknowledgement {took * 1000:.0f} ms after its start"
                          if took is not None else "no acknowledgement after the restart")
        checks.check(all(t is not None and t < 1.0 for t in times),
                     "each restarted head node acknowledged within 1 s of its start")
        wait_clients(checks, procs, 180)

        dirs = {n: cluster.data_dir(n) for n in ("dn1", "dn2", "dn3")}
        stores = read_stores(dirs)
        acks = read_acks(logs)
        keys = {a[3] for a in acks if not a[3].startswith("probe")}
        checks.check(len(keys) >= total, f"{len(keys)} of {total} keys acknowledged")
        where = nodes_holding(stores)
        missing = [a for a in acks if not set(a[1]) <= where.get(a[2], set())]
        checks.check(not missing, f"every acknowledged message is on each node its answer "
                     f"named ({len(missing)} missing)")
        by_key = copies_check(checks, stores, acks, 2)
        two = sum(1 for v in by_key.values() if len(v) == 2)
        checks.figure(f"{len(by_key)} keys stored, {two} with 2 copies")
        audit = subprocess.run(
            [os.path.join(BIN, "datanode"), "audit", "--replicas", "2"]
            + [x for p in logs for x in ("--client-log", p)] + list(dirs.values()),
            capture_output=True, text=True, timeout=120)
        # By id: every answer's id on every node it names, one id per key,
        # copies that agree; the summary line has every count.
        summary = (audit.stdout.strip().splitlines() or ["(no output)"])[0]
        checks.check(audit.returncode == 0, f"datanode audit agrees by id: {summary}")
    finally:
        cluster.stop()


def case_ack_timeout(checks, tmp):
    # A short ack timeout, and a hung-node detector slower than the pause.
    cluster = Cluster(tmp, head_args=["--ack-timeout", "300ms", "--suspect-after", "10s",
                                      "--hung-grace", "10s"])
    try:
        cluster.start_three(checks)
        procs, logs = run_clients(cluster, 4, 1500, 8, "slow")
        wait_for(lambda: acked_count(logs) >= 2000, 60)
        cluster.nodes["dn1"].send_signal(signal.SIGSTOP)
        time.sleep(1.5)
        cluster.nodes["dn1"].send_signal(signal.SIGCONT)
        wait_clients(checks, procs, 120)
        withdraws = cluster.head_log().count("asking the dataNode to withdraw them")
        checks.check(withdraws > 0, f"the ack timeout fired ({withdraws} withdraw rounds logged)")
        dirs = {n: cluster.data_dir(n) for n in ("dn1", "dn2", "dn3")}
        stores = read_stores(dirs)
        acks = read_acks(logs)
        where = nodes_holding(stores)
        missing = [a for a in acks if not set(a[1]) <= where.get(a[2], set())]
        checks.check(not missing, f"every acknowledged message is on each node its answer "
                     f"named ({len(missing)} missing of {len(acks)})")
        copies_check(checks, stores, acks, 2)
    finally:
        cluster.stop()


def case_stale_head(checks, tmp):
    cluster = Cluster(tmp, replicas=1)
    old_port = free_port()
    old = None
    try:
        old, _ = cluster.start_head(port=old_port, log_name="head-old")
        cluster.start_head()
        cluster.start_node("dn1")
        checks.check(cluster.wait_joined(["dn1"]), "dn1 joined the newer head node")
        c = KeyedClient(cluster.port, "fresh")
        c.send(1, "numero random: 1")
        first = c.line()
        checks.check(REPLY.match(first) is not None, f"the newer head node stores: {first!r}")
        c.close()
        # The same node dies, and comes back pointed at the older head node.
        cluster.nodes["dn1"].send_signal(signal.SIGKILL)
        cluster.nodes["dn1"].wait(10)
        cluster.start_node("dn1", port=old_port)
        c = KeyedClient(old_port, "moved")
        c.send(1, "numero random: 2")
        moved = c.line(timeout=15)
        c.close()
        checks.check(REPLY.match(moved) is not None,
                     f"the head node dn1 moved to stores: {moved!r}")
        ids = [REPLY.match(a).group(2) for a in (first, moved) if REPLY.match(a)]
        order = [tuple(int(n) for n in mid.split("-")) for mid in ids]
        checks.check(len(order) == 2 and order[1][0] > order[0][0],
                     f"under an epoch above the one dn1 had accepted ({' then '.join(ids)})")
        c = KeyedClient(cluster.port, "left")
        c.send(1, "numero random: 3")
        left = c.line(timeout=15)
        c.close()
        checks.check(left.startswith("ERROR"),
                     f"the head node dn1 left stores nothing more: {left!r}")
        rows = read_stores({"dn1": cluster.data_dir("dn1")})["dn1"]
        checks.check([k for _, k in rows] == ["fresh/1", "moved/1"],
                     f"dn1 holds each key once, under its own id ({rows})")
        old.send_signal(signal.SIGTERM)
        old.wait(10)
    finally:
        if old is not None and old.poll() is None:
            old.kill()
            old.wait(5)
        cluster.stop()


def case_too_few_nodes(checks, tmp):
    cluster = Cluster(tmp)
    try:
        cluster.start_head()
        cluster.start_node("dn1")
        checks.check(cluster.wait_joined(["dn1"]), "dn1 joined (W=2)")
        c = KeyedClient(cluster.port, "few")
        started = time.monotonic()
        for seq in range(1, 6):
            c.send(seq, f"numero random: {seq}")
        answers = [c.line(timeout=15) for _ in range(5)]
        took = time.monotonic() - started
        checks.check(all(a == NOT_ENOUGH for a in answers),
                     f"every message gets {NOT_ENOUGH!r} ({answers[0]!r})")
        checks.check(took < 3, f"promptly: {took:.2f} s for all 5")
        cluster.start_node("dn2")
        checks.check(cluster.wait_joined(["dn1", "dn2"]), "dn2 joined")
        for seq in range(1, 6):
            c.send(seq, f"numero random: {seq}")
        answers = [c.line(timeout=15) for _ in range(5)]
        c.close()
        good = [REPLY.match(a) for a in answers]
        checks.check(all(m and sorted(m.group(1).split("+")) == ["dn1", "dn2"] for m in good),
                     f"the resent keys are stored on both nodes ({answers[0]!r})")
        stores = read_stores({n: cluster.data_dir(n) for n in ("dn1", "dn2")})
        for node, rows in stores.items():
            checks.check(sorted(k for _, k in rows) == [f"few/{s}" for s in range(1, 6)],
                         f"{node}'s data.txt holds each key once")
    finally:
        cluster.stop()


CASES = {
    "disk-loss": case_disk_loss,
    "head-crash": case_head_crash,
    "ack-timeout": case_ack_timeout,
    "stale-head": case_stale_head,
    "too-few-nodes": case_too_few_nodes,
}


def main():
    wanted = [c for c in os.environ.get("REPLICATION_CASES", "").split(",") if c]
    unknown = [c for c in wanted if c not in CASES]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(CASES)}")
        return 2
    print(f"binaries: {BIN}")
    passed = failed = 0
    for name, case in CASES.items():
        if wanted and name not in wanted:
            continue
        tmp = tempfile.mkdtemp(prefix=f"replication-{name}-")
        checks = Checks(name)
        started = time.monotonic()
        try:
            case(checks, tmp)
        except Exception as e:  # a crash of the case is a failure, with its reason
            checks.check(False, f"raised {type(e).__name__}: {e}")
        ok = checks.failed == 0
        print(f"{name}: {'ok' if ok else 'FAIL'} ({time.monotonic() - started:.1f} s)", flush=True)
        if ok:
            passed += 1
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            failed += 1
            print(f"  files kept in {tmp}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
