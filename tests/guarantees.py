#!/usr/bin/env python3
"""The store's promises, one situation at a time, on real processes.

Each case puts head nodes and data nodes (the release, or debug, binaries on
free loopback ports) in one situation where a promise of the store is at
stake, and checks the promise by message id: every answer a client got,
`dnA+dnB , mensaje: recibido <id>`, must be on disk, under that id, key and
text, on every node it names; a key has one id; no message has more than R
copies. A store that keeps its promises passes every case. Each case prints
lines ending in `ok` or `FAIL` and its figures:

  forgotten-key     a key resent after the head node forgot it (its dedup
                    window ran out, or its key table was full) while the
                    data nodes still hold it: the answer must name an id
                    that is on the nodes it names (R=1 and R=2).
  full-restart      head node and data nodes killed together; the new head
                    node starts with only the node that does not hold a key:
                    the resend of that key must get its first id once the
                    holder is back, and the key must not be stored twice.
  tail-restart      a head restart while two of three data nodes are away:
                    `client tail` (and `tail -f` across the restart) must
                    print every acknowledged id once, in id order; `client
                    get` of an id only the absent nodes hold must not say
                    "not found", and must find it once they are back.
  clock-skew        a data node that saw a head node whose clock was a year
                    ahead, a head node 10 minutes behind, a data node 10
                    minutes behind: each must store again within seconds
                    (needs libfaketime; installed when missing and root).
  split-brain       a second head node takes two of four data nodes (a TCP
                    proxy written here moves them, cutting their connections
                    to the old head node, or holding them silent): past a
                    bounded fencing time the old head node acknowledges
                    nothing, and no key gets two ids.
  get-after-new-dir a data node restarted at once with an empty directory
                    under the same name: `get` of a message the other node
                    holds must never say "not found".
  retention-repair  retention on one node and repair: messages it never
                    held get their copies back; repair never restores what
                    retention removed and keeps a copy's record time; a
                    head restart does not leave a third copy of a late
                    node's messages; a key whose segment retention removed
                    is not answered as stored when nothing holds it.

    cargo build --release -p headnode -p datanode -p client && python3 tests/guarantees.py

GUARANTEE_CASES=forgotten-key,split-brain runs only the cases named. The
last line is `N passed, M failed`; the exit status is 0 only if all passed.
Python 3 standard library only (and libfaketime for clock-skew); Linux.
"""

import collections
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from common import free_port
from replication import (BIN, Checks, Cluster, KeyedClient, KEY_FIELD, REPLY, read_acks,
                         wait_for)

# One record of a data file: time, id, fields (key=..., crc32c=...), text.
RECORD = re.compile(r"^(\S+ \S+) - \[(\d+-\d+)\] (.*?)mensaje: (.*)$")


# ------------------------------------------------------------ processes


class Nodes(Cluster):
    """The replication suite's cluster, with per-start environments (a
    data node's flags by their variables, a skewed clock) and processes of
    its own (a second head node, readers) that `stop` stops too."""

    def __init__(self, tmp, replicas=2, min_replicas=None, head_args=()):
        super().__init__(tmp, replicas=replicas, min_replicas=min_replicas,
                         head_args=head_args)
        self.extra = []

    def _with_env(self, env, start):
        saved = self.env
        self.env = dict(saved, **(env or {}))
        try:
            return start()
        finally:
            self.env = saved

    def start_node(self, node, port=None, env=None):
        """Data node `node`; `env` sets its flags by their variables
        (SEGMENT_BYTES=1MiB) or its clock (faketime_env)."""
        return self._with_env(env, lambda: Cluster.start_node(self, node, port))

    def start_head(self, port=None, log_name=None, env=None, args=None):
        saved = self.head_args
        if args is not None:
            self.head_args = list(args)
        try:
            proc, started = self._with_env(
                env, lambda: Cluster.start_head(self, port=port, log_name=log_name))
        finally:
            self.head_args = saved
        if port is not None:
            self.extra.append(proc)
        return proc, started

    def kill(self, node):
        """SIGKILLs data node `node` (after a SIGCONT, should it be stopped)."""
        proc = self.nodes[node]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.send_signal(signal.SIGCONT)
        proc.wait(10)

    def signal(self, node, sig):
        self.nodes[node].send_signal(sig)

    def joins(self, node):
        """How many times the current head node logged `node` (re)joining."""
        return len(re.findall(rf"\b{re.escape(node)} \S+ (?:re)?joined", self.heartbeat_log()))

    def client(self, name, *args, port=None):
        """`client <args>` against the head node, in the background: its
        stdout in `<name>.out`, its log lines and errors in `<name>.err`."""
        out = open(os.path.join(self.tmp, f"{name}.out"), "wb")
        err = open(os.path.join(self.tmp, f"{name}.err"), "wb")
        self.files += [out, err]
        proc = subprocess.Popen(
            [os.path.join(BIN, "client"), "--server", f"127.0.0.1:{port or self.port}",
             "--log-dir", os.path.join(self.tmp, name), *args],
            env=dict(os.environ, RUST_LOG="info"), stdout=out, stderr=err)
        self.extra.append(proc)
        return proc

    def output(self, name, stream="out"):
        with open(os.path.join(self.tmp, f"{name}.{stream}"), errors="replace") as f:
            return f.read()

    def dirs(self, nodes=None):
        return {n: self.data_dir(n) for n in (nodes or sorted(self.nodes))}

    def stop(self):
        for p in self.extra:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.send_signal(signal.SIGTERM)
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
                except OSError:
                    pass
        Cluster.stop(self)


def finished(proc, timeout):
    """Its exit status within `timeout` s, else `stopped` (by SIGINT)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_proc(proc, signal.SIGINT)
        return "stopped"


def stop_proc(proc, sig=signal.SIGTERM, timeout=5):
    """Stops one process this suite started, and reaps it."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Proxy:
    """A TCP proxy between data nodes and head nodes: one loopback port per
    data node, each connection forwarded to the head node that node is
    routed to now. `route` moves a node: its connections are cut, and the
    next ones it makes go to the other head node; `hold` moves it too, but
    its connections stay open and carry nothing more either way (a silent
    partition). Threads: one accepting per node, two copying per
    connection; at most MAX_CONNECTIONS per node."""

    MAX_CONNECTIONS = 64

    def __init__(self, nodes, head_port):
        self.lock = threading.Lock()
        self.routes = {n: head_port for n in nodes}
        self.conns = {n: [] for n in nodes}
        self.accepted = collections.Counter()
        self.held = []
        self.closed = threading.Event()
        self.listeners, self.ports, self.threads = {}, {}, []
        for node in nodes:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            listener.settimeout(0.2)
            self.listeners[node] = listener
            self.ports[node] = listener.getsockname()[1]
            self.threads.append(threading.Thread(target=self._accept, args=(node,), daemon=True))
            self.threads[-1].start()

    def _accept(self, node):
        listener = self.listeners[node]
        while not self.closed.is_set():
            try:
                down, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.accepted[node] += 1
                refused = self.accepted[node] > self.MAX_CONNECTIONS
                target = self.routes[node]
            try:
                if refused:
                    raise OSError("too many connections")
                up = socket.create_connection(("127.0.0.1", target), timeout=2)
            except OSError:
                down.close()
                continue
            down.settimeout(None)
            up.settimeout(None)
            with self.lock:
                self.conns[node].append((down, up))
            pair = (down, up)
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._copy, args=(a, b, pair), daemon=True).start()

    def _copy(self, src, dst, pair):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    held = pair in self.held
                if not held:
                    dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _cut(pair):
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def route(self, node, head_port):
        """From now on `node` reaches the head node on `head_port`."""
        with self.lock:
            self.routes[node] = head_port
            pairs, self.conns[node] = self.conns[node], []
        for pair in pairs:
            self._cut(pair)

    def hold(self, node, head_port):
        """From now on `node` reaches the head node on `head_port`; its
        connections to the other one stay open and carry nothing more,
        until an end closes them."""
        with self.lock:
            self.routes[node] = head_port
            self.held += self.conns[node]

    def close(self):
        self.closed.set()
        for listener in self.listeners.values():
            listener.close()
        for t in self.threads:
            t.join(2)
        with self.lock:
            pairs = [p for ps in self.conns.values() for p in ps] + self.held
        for pair in pairs:
            self._cut(pair)
            for sock in pair:
                sock.close()


# ---------------------------------------------------------------- clocks

FAKETIME_LIBS = "/usr/lib/*/faketime/libfaketime.so.1"


def faketime_lib():
    """libfaketime's path; Debian's faketime package is installed first
    when it is missing and this runs as root with apt-get."""
    found = sorted(glob.glob(FAKETIME_LIBS))
    if found:
        return found[0]
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing Debian's faketime package (clocks set apart for clock-skew)",
              flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(["apt-get", "install", "-y", "-q", "faketime"], env=env,
                           timeout=600, stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT, check=False)
        except subprocess.TimeoutExpired:
            return None
        found = sorted(glob.glob(FAKETIME_LIBS))
    return found[0] if found else None


def faketime_env(lib, offset):
    """The environment that sets a process's wall clock `offset` away
    (`-10m`, `+365d`); its monotonic clock is left alone, as a skewed host's is."""
    return {"LD_PRELOAD": lib, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


# ------------------------------------------------------- clients, readers

class Background(threading.Thread):
    """Runs `work()` on a thread of its own; `result` once it is done."""

    def __init__(self, work):
        super().__init__(daemon=True)
        self.work = work
        self.result = None
        self.done_at = None
        self.start()

    def run(self):
        self.result = self.work()
        self.done_at = time.monotonic()


Answer = collections.namedtuple("Answer", "holders id key text")


class Ledger:
    """Every `recibido` a client of a case got: who holds it, under which
    id, key and text. What the store promised, to be found on disk."""

    def __init__(self):
        self.answers = []
        self.lock = threading.Lock()

    def add(self, reply, key, text):
        m = REPLY.match(reply)
        if not m:
            return None
        answer = Answer(tuple(m.group(1).split("+")), m.group(2), key, text)
        with self.lock:
            self.answers.append(answer)
        return answer

    def add_client_logs(self, paths, text=None):
        """The answers `client store` logged (its text is random unless
        --message fixes it: `text` None checks no text)."""
        for _, holders, mid, key in read_acks(paths):
            self.answers.append(Answer(tuple(holders), mid, key, text))

    def of_key(self, key):
        return [a for a in self.answers if a.key == key]


def text_of(key):
    """The text sent under `key`: unique, so a copy is tied to its key."""
    return f"text of {key}"


def store(port, client_id, seqs, ledger, text=text_of, window=64, timeout=10, until=None):
    """Sends `<seq> <text>` for every seq under `client_id` on one
    connection, `window` at a time, and returns every reply (None for one
    that did not come in time); `recibido` answers go into `ledger`. Stops
    early, between windows, once the event `until` is set, or the
    connection fails."""
    replies = []
    client = KeyedClient(port, client_id, timeout=timeout)
    try:
        seqs = list(seqs)
        for start in range(0, len(seqs), window):
            if until is not None and until.is_set():
                break
            part = seqs[start:start + window]
            for seq in part:
                client.send(seq, text(f"{client_id}/{seq}"))
            for seq in part:
                try:
                    reply = client.line(timeout)
                except (TimeoutError, ConnectionError, OSError):
                    replies.extend([None] * (len(part) - (len(replies) - start)))
                    return replies
                ledger.add(reply, f"{client_id}/{seq}", text(f"{client_id}/{seq}"))
                replies.append(reply)
    finally:
        client.close()
    return replies


def load(port, clients, per_client, ledger, text=text_of, until=None):
    """A keyed client per id in `clients`, each sending `per_client`
    messages at once, on threads; returns the threads (joined by the caller)."""
    def one(client_id):
        def work():
            try:
                return store(port, client_id, range(1, per_client + 1), ledger, text=text,
                             until=until)
            except (OSError, ConnectionError, TimeoutError) as e:
                return e
        return work
    return [Background(one(c)) for c in clients]


def store_one(port, client_id, seq, ledger, timeout=10):
    """One keyed message on a connection of its own; its reply, or the
    reason there was none."""
    try:
        return store(port, client_id, [seq], ledger, timeout=timeout)[0] or "(no answer)"
    except (OSError, ConnectionError, TimeoutError) as e:
        return f"(no answer: {e})"


class Reader(KeyedClient):
    """A reader (`lector`): one request per line, one answer line for `get`."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.sock.sendall(b"peticion\n")
        answer = self.line(timeout)
        if answer != "confirmacion":
            raise ConnectionError(f"handshake answered {answer!r}")
        self.sock.sendall(b"lector\n")

    def get(self, what, timeout=10):
        self.sock.sendall(f"get {what}\n".encode())
        return self.line(timeout)


def get_answer(port, what, timeout=10):
    """`found`, `notfound` (the definite answer: no such message), or the
    answer itself for anything else (an ERROR, no answer)."""
    try:
        reader = Reader(port, timeout)
        try:
            line = reader.get(what, timeout)
        finally:
            reader.close()
    except (OSError, ConnectionError, TimeoutError) as e:
        return f"(no answer: {e})"
    if line.startswith("found "):
        return "found"
    if line.startswith("notfound "):
        return "notfound"
    return line


# ------------------------------------------------------------------ disk

Copy = collections.namedtuple("Copy", "key text stamp file")


def read_disk(dirs):
    """{node: {id: [Copy]}} from every data file of each node's directory
    (its segments, oldest first, then data.txt)."""
    disk = {}
    for node, path in dirs.items():
        held = collections.defaultdict(list)
        files = sorted(glob.glob(os.path.join(path, "data.[0-9]*.txt")))
        files.append(os.path.join(path, "data.txt"))
        for name in files:
            try:
                with open(name, errors="replace") as f:
                    for line in f:
                        m = RECORD.match(line.rstrip("\n"))
                        if not m:
                            continue
                        key = KEY_FIELD.search(m.group(3))
                        held[m.group(2)].append(Copy(key.group(1) if key else None,
                                                     m.group(4), m.group(1),
                                                     os.path.basename(name)))
            except FileNotFoundError:
                pass
        disk[node] = held
    return disk


def holders_on_disk(disk):
    """{id: the nodes whose files hold it}."""
    where = collections.defaultdict(set)
    for node, held in disk.items():
        for mid in held:
            where[mid].add(node)
    return where


COUNTS = ("lost", "phantom holders", "wrong key or text", "keys with two ids",
          "under-replicated", "over-replicated")


def check_store(checks, label, disk, answers, replicas, excused=None, two_ids_allowed=()):
    """The promise, checked by message id, over the data files in `disk`:

    - lost: an answered id on no node at all;
    - phantom holders: a node an answer names that does not hold its id
      under its key and text (counted per answer and node);
    - wrong key or text: an answered id held under another key or text;
    - keys with two ids: on disk and in answers together (but for the keys
      in `two_ids_allowed`, resent after the dedup window by design);
    - under-replicated: an answered id on fewer than `replicas` nodes;
    - over-replicated: any id on more than `replicas` nodes.

    `excused(answer)` names the nodes whose missing copy of that answer the
    case explains (a deleted directory, retention): they count as neither
    phantom nor lost, and the answer is not counted under-replicated.
    Every count must be zero. Returns the counts."""
    where = holders_on_disk(disk)
    found = {c: [] for c in COUNTS}
    ids_of_key = collections.defaultdict(set)
    for held in disk.values():
        for mid, copies in held.items():
            for c in copies:
                if c.key is not None:
                    ids_of_key[c.key].add(mid)
    for a in answers:
        spared = set(excused(a)) if excused else set()
        have = where.get(a.id, set())
        if a.key is not None:
            ids_of_key[a.key].add(a.id)
        if not have and set(a.holders) - spared:
            found["lost"].append(a.id)
        for node in a.holders:
            if node in spared:
                continue
            copies = disk.get(node, {}).get(a.id, [])
            if not any(c.key == a.key and (a.text is None or c.text == a.text) for c in copies):
                found["phantom holders"].append(f"{a.id}@{node}")
        for node in have:
            for c in disk[node][a.id]:
                if c.key != a.key or (a.text is not None and c.text != a.text):
                    found["wrong key or text"].append(f"{a.id}@{node}")
        if len(have) < replicas and not spared:
            found["under-replicated"].append(f"{a.id} on {'+'.join(sorted(have)) or 'none'}")
    for key, ids in ids_of_key.items():
        if len(ids) > 1 and key not in two_ids_allowed:
            found["keys with two ids"].append(f"{key}: {' '.join(sorted(ids))}")
    for mid, nodes in where.items():
        if len(nodes) > replicas:
            found["over-replicated"].append(f"{mid} on {'+'.join(sorted(nodes))}")
    for name in COUNTS:
        found[name] = sorted(set(found[name]))
    figures = ", ".join(f"{c} {len(found[c])}" for c in COUNTS)
    checks.check(not any(found.values()),
                 f"{label}: {len(answers)} answers, {len({a.id for a in answers})} ids: {figures}")
    for c in COUNTS:
        if found[c]:
            checks.figure(f"  {c}, e.g. {'; '.join(found[c][:3])}")
    return {c: len(found[c]) for c in COUNTS}


# ------------------------------------------------------------------- cases


def first_line(text, needle, width=200):
    """The first line of `text` holding `needle`, from its level on."""
    for line in text.splitlines():
        if needle in line:
            at = max(line.find(" INFO "), line.find(" WARN "), line.find(" ERROR "), 0)
            return line[at:].strip()[:width]
    return "(nothing)"


def started(checks, tmp, nodes, replicas=2, min_replicas=None, head_args=(), node_env=None):
    """A head node and `nodes` in a directory of their own, checked to have joined."""
    os.makedirs(tmp, exist_ok=True)
    cluster = Nodes(tmp, replicas=replicas, min_replicas=min_replicas, head_args=head_args)
    cluster.start_head()
    for n in nodes:
        cluster.start_node(n, env=(node_env or {}).get(n))
    checks.check(cluster.wait_joined(nodes), f"{'+'.join(nodes)} joined (R={replicas})")
    return cluster


def case_forgotten_key(checks, tmp):
    """The head node forgot a key the data nodes still hold: the data
    nodes answer `recibido <new id> <held id>`, and the answer must not
    name the new id as stored where only the old one is."""
    variants = [
        ("R=1, window 1ms", 1, ["--dedup-window", "1ms"], 3),
        ("R=1, 64 keys, 80 of another client", 1, ["--dedup-keys", "64"], 80),
        ("R=2, window 1ms", 2, ["--dedup-window", "1ms"], 3),
    ]
    for n, (what, replicas, args, others) in enumerate(variants, 1):
        nodes = [f"dn{i}" for i in range(1, replicas + 1)]
        cluster = started(checks, os.path.join(tmp, f"v{n}"), nodes, replicas, head_args=args)
        try:
            ledger = Ledger()
            first = store_one(cluster.port, "k", 1, ledger)
            # Keys go in generations: a window runs out after two new ones.
            for part in ([1], [2], list(range(3, others + 1))):
                time.sleep(0.05)
                store(cluster.port, "other", part, ledger)
            time.sleep(0.05)
            again = store_one(cluster.port, "k", 1, ledger)
            checks.figure(f"{what}: k/1 answered {first!r}, resent later {again!r}")
            m = REPLY.match(again)
            if m:
                got = get_answer(cluster.port, m.group(2))
                # The answered id is a stored message: `get` finds it.
                checks.check(got == "found", f"{what}: get {m.group(2)} (the resend's id) "
                             f"answers {got!r}")
            disk = read_disk(cluster.dirs())
            on_disk = sorted(f"{mid}@{node}" for node, held in disk.items()
                             for mid, copies in held.items() if any(c.key == "k/1" for c in copies))
            checks.figure(f"{what}: k/1 on disk: {' '.join(on_disk)}; the head node logged: "
                          + first_line(cluster.head_log(), "under another id"))
            # The resend came after the head node's window: a second id
            # with a real copy is allowed, an answer naming nothing is not.
            check_store(checks, what, disk, ledger.answers, replicas, two_ids_allowed={"k/1"})
        finally:
            cluster.stop()


def case_full_restart(checks, tmp):
    """Every process killed at once; the new head node starts with only a
    node that does not hold key r/1. Its resend must wait for the holder
    (at most --recovery-wait) and get r/1's first id."""
    variants = [("R=1", 1, 1, ["dn1", "dn2"]), ("R=2 W=1", 2, 1, ["dn1", "dn2", "dn3"])]
    for n, (what, replicas, min_replicas, nodes) in enumerate(variants, 1):
        cluster = started(checks, os.path.join(tmp, f"v{n}"), nodes, replicas, min_replicas)
        try:
            ledger = Ledger()
            first = store_one(cluster.port, "r", 1, ledger)
            mid = ledger.answers[0].id if ledger.answers else None
            # Under W=1 the second copy is written after the answer.
            wait_for(lambda: len(holders_on_disk(read_disk(cluster.dirs()))[mid]) >= replicas, 5)
            holders = sorted(holders_on_disk(read_disk(cluster.dirs()))[mid])
            away = [n for n in nodes if n not in holders]
            if not checks.check(len(away) == 1, f"{what}: r/1 answered {first!r}, "
                                f"on {'+'.join(holders)}"):
                continue
            cluster.kill_head()
            for node in nodes:
                cluster.kill(node)
            _, restarted = cluster.start_head(
                args=cluster.head_args + ["--recovery-wait", "60s"])
            cluster.start_node(away[0])
            checks.check(cluster.wait_joined(away), f"{what}: a new head node with only "
                         f"{away[0]}, which does not hold r/1")
            resend = Background(lambda: store_one(cluster.port, "r", 1, ledger, timeout=30))
            resend.join(3)
            early = resend.result
            checks.figure(f"{what}: the resend, holder away: "
                          + (f"answered {early!r}" if early else "no answer within 3 s")
                          + "; the head node logged: "
                          + first_line(cluster.heartbeat_log(), "recovery done"))
            for node in holders:
                cluster.start_node(node)
            cluster.wait_joined(nodes)
            resend.join(30)
            took = (f"{resend.done_at - restarted:.1f} s" if resend.done_at else "none")
            checks.figure(f"{what}: the resend answered {resend.result!r}; from the restart "
                          f"to that answer: {took}")
            disk = read_disk(cluster.dirs())
            # One id for r/1 on disk and in both answers; each on its holders.
            check_store(checks, what, disk, ledger.answers, replicas)
        finally:
            cluster.stop()


TAIL_LINE = re.compile(r"^(\d+-\d+) \d{4}-\d\d-\d\dT\S+Z (\S+) (.*)$")


def id_order(mid):
    """Id order: epoch, then sequence number, as numbers."""
    epoch, _, seq = mid.partition("-")
    return int(epoch), int(seq)


def tailed_ids(text):
    """The ids `client tail` printed, in the order printed."""
    return [m.group(1) for m in map(TAIL_LINE.match, text.splitlines()) if m]


def check_tail(checks, label, printed, acked):
    """Every acknowledged id printed exactly once, and all in id order."""
    counts = collections.Counter(printed)
    missing = sorted((i for i in acked if i not in counts), key=id_order)
    twice = sorted((i for i, c in counts.items() if c > 1), key=id_order)
    disorder = [b for a, b in zip(printed, printed[1:]) if id_order(b) <= id_order(a)]
    checks.check(not missing and not twice and not disorder,
                 f"{label}: {len(printed)} printed; of {len(acked)} acknowledged ids "
                 f"{len(missing)} never printed, {len(twice)} printed twice, "
                 f"{len(disorder)} out of id order")
    if missing:
        checks.figure(f"  never printed, e.g. {' '.join(missing[:3])}")
    return missing


def head_restart_without(cluster, away):
    """SIGSTOPs the nodes `away`, SIGKILLs the head node and starts a new
    one, which the others join. The stopped nodes cannot rejoin."""
    for node in away:
        cluster.signal(node, signal.SIGSTOP)
    cluster.kill_head()
    cluster.start_head()
    here = [n for n in sorted(cluster.nodes) if n not in away]
    return cluster.wait_joined(here)


def resume(cluster, away):
    for node in away:
        cluster.signal(node, signal.SIGCONT)
    return cluster.wait_joined(sorted(cluster.nodes))


def case_tail_restart(checks, tmp):
    """A head restart while dn2 and dn3 are away: a tail must not pass the
    ids only they hold, and `get` must not say they do not exist."""
    away = ["dn2", "dn3"]
    cluster = started(checks, tmp, ["dn1", "dn2", "dn3"], 2)
    try:
        ledger = Ledger()
        for t in load(cluster.port, [f"t{i}" for i in range(3)], 1000, ledger):
            t.join(60)
        acked = {a.id for a in ledger.answers}
        checks.check(len(acked) >= 3000, f"{len(acked)} of 3000 messages acknowledged")
        only_away = [a.id for a in ledger.answers if set(a.holders) == set(away)]
        checks.figure(f"{len(only_away)} of them held by dn2+dn3 only")

        checks.check(head_restart_without(cluster, away),
                     "dn2 and dn3 SIGSTOPped, the head node killed and restarted; dn1 rejoined")
        probe = only_away[len(only_away) // 2] if only_away else None
        if probe:
            got = get_answer(cluster.port, probe)
            # Not found is a definite answer, and a wrong one: its holders
            # are only away. Any other answer (unavailable, try again) is fine.
            checks.check(got != "notfound",
                         f"get {probe} (held by dn2+dn3 only) while they are away: {got!r}")
        # A tail may wait for the absent nodes: it is stopped after 10 s,
        # and goes on from what it printed.
        code = finished(cluster.client("tail-1", "tail"), 10)
        printed = tailed_ids(cluster.output("tail-1"))
        cursor = printed[-1] if printed else None
        checks.figure(f"client tail with only dn1 back: {len(printed)} printed, exit {code}, "
                      f"last {cursor}")
        checks.check(resume(cluster, away), "dn2 and dn3 resumed and rejoined")
        code = finished(cluster.client("tail-2", "tail", *(["--from", cursor] if cursor else [])),
                        30)
        more = tailed_ids(cluster.output("tail-2"))
        checks.figure(f"client tail --from {cursor} once they are back: {len(more)} printed, "
                      f"exit {code}")
        check_tail(checks, "tail, then tail --from its cursor", printed + more, acked)
        if probe:
            got = get_answer(cluster.port, probe)
            checks.check(got == "found", f"get {probe} once dn2 and dn3 are back: {got!r}")

        # tail -f across the same restart, under load.
        follow = cluster.client("tail-f", "tail", "-f", "--from",
                                max(acked, key=id_order) if acked else "1-0")
        time.sleep(0.5)
        more_load, stop = Ledger(), threading.Event()
        writers = load(cluster.port, [f"f{i}" for i in range(3)], 3000, more_load, until=stop,
                       text=lambda key: f"followed {key}")
        wait_for(lambda: len(more_load.answers) >= 1500, 30)
        checks.check(head_restart_without(cluster, away),
                     f"under load, after {len(more_load.answers)} acknowledgements: dn2 and dn3 "
                     "SIGSTOPped, the head node killed and restarted; dn1 rejoined")
        stop.set()
        time.sleep(3)
        checks.check(resume(cluster, away), "dn2 and dn3 resumed and rejoined")
        for t in writers:
            t.join(15)
        time.sleep(4)
        stop_proc(follow, signal.SIGINT)
        followed = tailed_ids(cluster.output("tail-f"))
        check_tail(checks, "tail -f across the restart", followed,
                   {a.id for a in more_load.answers})
        ledger.answers += more_load.answers
        check_store(checks, "store", read_disk(cluster.dirs()), ledger.answers, 2)
    finally:
        cluster.stop()


def until_acked(port, client_id, since, bound, ledger):
    """Sends key `<client_id>/1` again and again (each on a new connection,
    after each answer) until it is acknowledged or `bound` s have passed
    since `since` (monotonic). Returns the seconds from `since` to the
    acknowledgement (None: none) and how often each other answer came."""
    others = collections.Counter()
    while time.monotonic() - since < bound:
        reply = store_one(port, client_id, 1, ledger,
                          timeout=max(0.5, bound - (time.monotonic() - since)))
        if REPLY.match(reply):
            return time.monotonic() - since, others
        others[reply[:100]] += 1
        time.sleep(0.05)
    return None, others


def within(took, others, bound):
    """`0.8 s` or `none within 11 s`, and the other answers seen meanwhile."""
    seen = "; ".join(f"{n} x {a!r}" for a, n in others.most_common(3)) or "no other answer"
    return (f"{took:.1f} s" if took is not None else f"none within {bound} s") + f" ({seen})"


def epoch_of(cluster, node):
    """The epoch in `node`'s epoch file (`<epoch> <head-id>`, or the epoch
    alone as an older version wrote it)."""
    try:
        with open(os.path.join(cluster.data_dir(node), "epoch")) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


SKEW_BOUND = 11  # seconds waited for an acknowledgement; 10 are asked for


def case_clock_skew(checks, tmp):
    """Clocks set apart: each situation must be serving again within 10 s."""
    lib = faketime_lib()
    if not checks.check(lib is not None, f"libfaketime: {lib}"):
        return
    now_ms = lambda: int(time.time() * 1000)  # noqa: E731

    # (a) A head node once ran with its clock a year ahead; dn1 keeps its epoch.
    cluster = Nodes(os.path.join(tmp, "a"), replicas=1)
    os.makedirs(cluster.tmp)
    try:
        cluster.start_head(env=faketime_env(lib, "+365d"))
        cluster.start_node("dn1")
        checks.check(cluster.wait_joined(["dn1"]), "(a) dn1 joined a head node a year ahead")
        epoch = epoch_of(cluster, "dn1")
        # An older version's epoch was the head node's clock: a year ahead.
        ahead = (f" ({((epoch or 0) - now_ms()) / 86_400_000:.0f} days ahead)"
                 if (epoch or 0) > 10 ** 12 else " (a counter: the clock plays no part)")
        checks.figure(f"(a) dn1's epoch file holds {epoch}{ahead}")
        cluster.kill_head()
        _, since = cluster.start_head()
        ledger = Ledger()
        took, others = until_acked(cluster.port, "a", since, SKEW_BOUND, ledger)
        checks.check(took is not None and took <= 10, "(a) a head node with the right time "
                     f"started: first acknowledgement after {within(took, others, SKEW_BOUND)}")
        checks.figure("(a) dn1 logged: " + first_line(cluster.node_output("dn1"), "stale head"))
        check_store(checks, "(a)", read_disk(cluster.dirs()), ledger.answers, 1)
    finally:
        cluster.stop()

    # (b) A head node whose clock is 10 minutes behind restarts.
    cluster = Nodes(os.path.join(tmp, "b"), replicas=1)
    os.makedirs(cluster.tmp)
    try:
        cluster.start_head()
        cluster.start_node("dn1")
        checks.check(cluster.wait_joined(["dn1"]), "(b) dn1 joined")
        ledger = Ledger()
        store_one(cluster.port, "before", 1, ledger)
        cluster.kill_head()
        _, since = cluster.start_head(env=faketime_env(lib, "-10m"))
        took, others = until_acked(cluster.port, "b", since, SKEW_BOUND, ledger)
        checks.check(took is not None and took <= 10, "(b) the head node restarted 10 minutes "
                     f"behind: first acknowledgement after {within(took, others, SKEW_BOUND)}")
        check_store(checks, "(b)", read_disk(cluster.dirs()), ledger.answers, 1)
    finally:
        cluster.stop()

    # (c) dn1 restarts with its clock 10 minutes behind.
    cluster = Nodes(os.path.join(tmp, "c"), replicas=1)
    os.makedirs(cluster.tmp)
    try:
        cluster.start_head()
        cluster.start_node("dn1")
        checks.check(cluster.wait_joined(["dn1"]), "(c) dn1 joined")
        ledger = Ledger()
        store_one(cluster.port, "before", 1, ledger)
        cluster.kill("dn1")
        since = time.monotonic()
        node = cluster.start_node("dn1", env=faketime_env(lib, "-10m"))
        took, others = until_acked(cluster.port, "c", since, SKEW_BOUND, ledger)
        checks.check(took is not None and took <= 10, "(c) dn1 restarted 10 minutes behind: "
                     f"first acknowledgement after {within(took, others, SKEW_BOUND)}")
        checks.check(node.poll() is None, f"(c) dn1 still runs (exit status {node.poll()}; "
                     + first_line(cluster.node_output("dn1"), "stale incarnation") + ")")
        check_store(checks, "(c)", read_disk(cluster.dirs()), ledger.answers, 1)
    finally:
        cluster.stop()


FENCING_BOUND = 15  # seconds an old head node may go on acknowledging


def case_split_brain(checks, tmp):
    """A second head node takes dn3 and dn4 through the proxy while the
    first still has dn1 and dn2: the old one must stop acknowledging within
    a bounded time, and no key may get a second id from the new one. The
    move either cuts dn3's and dn4's connections to the old head node (it
    notices at once), or holds them silent (its failure detector must)."""
    for how in ("cut", "silent"):
        split_brain(checks, os.path.join(tmp, how), how)


def split_brain(checks, tmp, how):
    nodes = ["dn1", "dn2", "dn3", "dn4"]
    os.makedirs(tmp)
    cluster = Nodes(tmp, replicas=2)
    cluster.start_head()
    proxy = Proxy(nodes, cluster.port)
    try:
        for node in nodes:
            cluster.start_node(node, port=proxy.ports[node])
        checks.check(cluster.wait_joined(nodes), f"{how}: 4 data nodes joined through the proxy")
        ledger = Ledger()
        store(cluster.port, "w", range(1, 11), ledger)
        old_epoch = epoch_of(cluster, "dn1")
        new_port = free_port()
        cluster.start_head(port=new_port, log_name="head-new")
        move = proxy.route if how == "cut" else proxy.hold
        move("dn3", new_port)
        move("dn4", new_port)
        since = time.monotonic()

        # The old head node, asked again and again from the move: when does
        # it answer recibido last, and refuse first? (An answer held up by a
        # silent node is waited for: only an ERROR is a refusal.)
        fenced, last_ack, acked, seq = None, None, 0, 1
        while time.monotonic() - since < FENCING_BOUND:
            seq += 1
            reply = store_one(cluster.port, "s", seq, ledger, timeout=FENCING_BOUND)
            if REPLY.match(reply):
                acked += 1
                last_ack = time.monotonic() - since
            elif reply.startswith("ERROR"):
                fenced = time.monotonic() - since
                checks.figure(f"{how}: the old head node first refused after {fenced:.1f} s: "
                              f"{reply!r}")
                break
            time.sleep(0.2)
        checks.figure(f"{how}: the old head node acknowledged {acked} keys after the move, "
                      + (f"the last {last_ack:.1f} s after it" if last_ack is not None
                         else "none")
                      + "; fenced "
                      + (f"after {fenced:.1f} s" if fenced is not None
                         else f"never within {FENCING_BOUND} s"))
        checks.figure(f"{how}: the old head node logged: "
                      + first_line(cluster.heartbeat_log(), "no majority"))
        moved = wait_for(lambda: (epoch_of(cluster, "dn3") or 0) > (old_epoch or 0), 20)
        checks.check(moved, f"{how}: dn3 and dn4 moved to a second head node: dn3's epoch file "
                     f"holds {epoch_of(cluster, 'dn3')}, the old head node's is {old_epoch}")
        old = store_one(cluster.port, "s", 1, ledger, timeout=5)
        new = store_one(new_port, "s", 1, ledger, timeout=15)
        checks.figure(f"{how}: key s/1 sent to the old head node: {old!r}; resent to the new "
                      f"one: {new!r}")
        replies = store(cluster.port, "late", range(1, 11), ledger, timeout=5)
        late = sum(1 for r in replies if r and REPLY.match(r))
        checks.check(late == 0, f"{how}: past the fencing time ({time.monotonic() - since:.1f} s "
                     f"after the move) the old head node acknowledged {late} of 10 "
                     f"(e.g. {next((r for r in replies if r), None)!r})")
        check_store(checks, f"{how}: both head nodes' answers", read_disk(cluster.dirs(nodes)),
                    ledger.answers, 2)
    finally:
        cluster.stop()
        proxy.close()


class Hammer(threading.Thread):
    """Asks `get <id>` again and again on one reader connection (a new one
    when it fails) until stopped; counts each kind of answer, and when the
    first definite `notfound` came."""

    def __init__(self, port, mid):
        super().__init__(daemon=True)
        self.port, self.mid = port, mid
        self.answers = collections.Counter()
        self.first_notfound = None
        self.halt = threading.Event()
        self.start()

    def run(self):
        reader = None
        while not self.halt.is_set():
            try:
                reader = reader or Reader(self.port, timeout=5)
                line = reader.get(self.mid, timeout=5)
            except (OSError, ConnectionError, TimeoutError) as e:
                line = f"(no answer: {type(e).__name__})"
                if reader is not None:
                    reader.close()
                    reader = None
                time.sleep(0.01)
            kind = line.split(" ", 1)[0] if line.startswith(("found ", "notfound ")) else line[:80]
            self.answers[kind] += 1
            if kind == "notfound" and self.first_notfound is None:
                self.first_notfound = time.monotonic()
        if reader is not None:
            reader.close()

    def stop(self):
        self.halt.set()
        self.join(10)
        return self.answers


def case_get_after_new_dir(checks, tmp):
    """dn1 restarted at once with an empty directory under its name: `get`
    of a message dn2 still holds must never answer not found, also while
    the repair that the new directory starts at once reads both nodes."""
    cluster = started(checks, tmp, ["dn1", "dn2"], 2)
    try:
        ledger = Ledger()
        for t in load(cluster.port, [f"x{i}" for i in range(3)], 1000, ledger):
            t.join(60)
        probes = [ledger.answers[0].id, ledger.answers[-1].id]
        notfound = 0
        # Restarted at once, and after short pauses; gets run all along.
        for pause in (0, 0, 0.05, 0.3):
            joins = cluster.joins("dn1")
            hammers = [Hammer(cluster.port, mid) for mid in probes]
            time.sleep(0.2)
            cluster.kill("dn1")
            shutil.rmtree(cluster.data_dir("dn1"))
            time.sleep(pause)
            cluster.start_node("dn1")
            back = wait_for(lambda: cluster.joins("dn1") > joins, 10)
            back_at = time.monotonic()
            time.sleep(1.5)
            answers = collections.Counter()
            for h in hammers:
                answers.update(h.stop())
            firsts = [h.first_notfound - back_at for h in hammers if h.first_notfound]
            after = f"; the first {min(firsts):+.3f} s from its rejoin" if firsts else ""
            state = "rejoined" if back else "not back"
            checks.figure(f"dn1 restarted empty after {pause} s ({state}): "
                          f"get {' and '.join(probes)}: "
                          f"{dict(answers)}{after}")
            notfound += answers["notfound"]
        checks.check(notfound == 0, f"get of a message dn2 holds never answered not found "
                     f"({notfound} times)")
        check_store(checks, "store", read_disk(cluster.dirs()), ledger.answers, 2,
                    excused=lambda a: {"dn1"})
    finally:
        cluster.stop()


RETAINING = {"SEGMENT_BYTES": "1MiB", "RETENTION_BYTES": "2MiB"}


def padded(key):
    """About 1 KB under `key`: a few thousand fill segments of 1 MiB."""
    return f"{text_of(key)} " + "x" * 1000


def removed_segments(cluster, node):
    try:
        with open(os.path.join(cluster.data_dir(node), "retention.txt")) as f:
            return sum(1 for line in f if "removed segment=" in line)
    except OSError:
        return 0


def repair_passes(cluster):
    return len(re.findall(r"repair (?:done|stopped)", cluster.head_log()))


def after_repair(cluster, passes, timeout=20):
    """Waits for a repair pass beyond the first `passes`, and for the
    copies it handed over to land; the last pass's line."""
    wait_for(lambda: repair_passes(cluster) > passes, timeout, step=0.2)
    time.sleep(1)
    done = re.findall(r"repair (?:done|stopped)[^\n]*", cluster.head_log())
    return done[-1][:230] if done else "no repair pass"


def stamp_seconds(stamp):
    day, clock = stamp.split(" ")
    whole, _, millis = clock.partition(",")
    t = time.strptime(f"{day} {whole}", "%Y-%m-%d %H:%M:%S")
    return time.mktime(t) + int(millis or 0) / 1000


def case_retention_repair(checks, tmp):
    """Retention on dn1, and repair around it."""
    nodes = ["dn1", "dn2", "dn3"]
    # (a) dn3's disk is lost: what dn2 and dn3 held, dn1 never held.
    # Each message routed on its own: dn1 gets its two thirds, enough to roll.
    cluster = started(checks, os.path.join(tmp, "ab"), nodes, 2,
                      head_args=["--repair-after", "2s", "--sticky-run", "1"],
                      node_env={"dn1": RETAINING})
    try:
        ledger = Ledger()
        for t in load(cluster.port, [f"r{i}" for i in range(3)], 2000, ledger, text=padded):
            t.join(120)
        checks.check(len(ledger.answers) >= 6000 and removed_segments(cluster, "dn1") > 0,
                     f"(a) {len(ledger.answers)} of 6000 acknowledged; dn1's retention removed "
                     f"{removed_segments(cluster, 'dn1')} segments")
        on_dn1 = set(read_disk(cluster.dirs(["dn1"]))["dn1"])
        retained_away = {a.id for a in ledger.answers if "dn1" in a.holders} - on_dn1
        passes = repair_passes(cluster)
        cluster.kill("dn3")
        shutil.rmtree(cluster.data_dir("dn3"))
        cluster.start_node("dn3")
        checks.figure("(a) dn3 killed, its directory deleted, restarted empty; "
                      + after_repair(cluster, passes))
        never_dn1 = [a for a in ledger.answers if set(a.holders) == {"dn2", "dn3"}]

        def thin():
            where = holders_on_disk(read_disk(cluster.dirs()))
            return [a.id for a in never_dn1 if len(where.get(a.id, ())) < 2]
        # Passes that follow (leftovers, retries) may still be copying.
        wait_for(lambda: not thin(), 10, step=0.5)
        thin = thin()
        checks.check(not thin, f"(a) of {len(never_dn1)} messages dn2 and dn3 held (never dn1), "
                     f"{len(thin)} are left with fewer than 2 copies"
                     + (f", e.g. {' '.join(thin[:3])}" if thin else ""))

        # (b) dn1, whose retention removed messages, is down while repair runs.
        original = {a.id: a.holders for a in ledger.answers}
        passes = repair_passes(cluster)
        cluster.kill("dn1")
        checks.figure("(b) dn1 killed; " + after_repair(cluster, passes))
        disk = read_disk(cluster.dirs())
        where = holders_on_disk(disk)
        restored = sorted(mid for mid in retained_away
                          if where.get(mid, set()) - set(original[mid]))
        checks.check(not restored, f"(b) of {len(retained_away)} messages dn1's retention "
                     f"removed, {len(restored)} were copied to a node that never held them"
                     + (f", e.g. {' '.join(restored[:3])}" if restored else ""))
        # A repaired copy (on a node its answer did not name) keeps the
        # record time of the copies written when it was stored.
        moved, off = 0, []
        for mid, holders in original.items():
            first = [stamp_seconds(c.stamp) for n in holders for c in disk[n].get(mid, ())]
            if not first:
                continue
            for node in where.get(mid, set()) - set(holders):
                moved += 1
                gap = max(abs(stamp_seconds(c.stamp) - min(first)) for c in disk[node][mid])
                if gap > 1:
                    off.append((gap, mid, node))
        off.sort(reverse=True)
        worst = f" (up to {off[0][0]:.1f} s, e.g. {off[0][1]} on {off[0][2]})" if off else ""
        checks.check(not off, f"(b) {moved} repaired copies, {len(off)} with a record time more "
                     f"than 1 s from the original's{worst}")
    finally:
        cluster.stop()

    # (c) After a head restart, dn1 comes back late (still down, or still
    # reading its files) once the head node's first pass has run.
    cluster = started(checks, os.path.join(tmp, "c"), nodes, 2)
    try:
        ledger = Ledger()
        for t in load(cluster.port, [f"c{i}" for i in range(3)], 200, ledger):
            t.join(60)
        passes = repair_passes(cluster)
        cluster.kill("dn1")
        cluster.kill_head()
        cluster.start_head(args=["--repair-after", "4s"])
        cluster.wait_joined(["dn2", "dn3"])
        time.sleep(5)
        cluster.start_node("dn1")
        checks.figure("(c) head node and dn1 killed; a new head node with --repair-after 4s; "
                      "dn1 back 5 s after it started; " + after_repair(cluster, passes, 12))
        check_store(checks, "(c) after dn1 is back", read_disk(cluster.dirs()),
                    ledger.answers, 2)
    finally:
        cluster.stop()

    # (d) A key whose segment retention removed is resent to a new head node.
    cluster = started(checks, os.path.join(tmp, "d"), ["dn1"], 1,
                      node_env={"dn1": RETAINING})
    try:
        ledger = Ledger()
        first = store_one(cluster.port, "d", 1, ledger)
        for t in load(cluster.port, ["fill"], 3500, ledger, text=padded):
            t.join(120)
        first_id = ledger.of_key("d/1")[0].id if ledger.of_key("d/1") else None
        gone = first_id not in read_disk(cluster.dirs())["dn1"]
        checks.check(gone, f"(d) d/1 answered {first!r}; retention removed it from dn1: {gone}")
        cluster.kill_head()
        cluster.start_head()
        cluster.wait_joined(["dn1"])
        before = len(ledger.answers)
        again = store_one(cluster.port, "d", 1, ledger)
        checks.figure(f"(d) d/1 resent to a new head node: {again!r}")
        # What retention removed is excused; the resend's answer is not.
        late = set(a.id for a in ledger.answers[before:])
        check_store(checks, "(d)", read_disk(cluster.dirs()), ledger.answers, 1,
                    excused=lambda a: set() if a.id in late else {"dn1"},
                    two_ids_allowed={"d/1"})
    finally:
        cluster.stop()


CASES = {
    "forgotten-key": case_forgotten_key,
    "full-restart": case_full_restart,
    "tail-restart": case_tail_restart,
    "clock-skew": case_clock_skew,
    "split-brain": case_split_brain,
    "get-after-new-dir": case_get_after_new_dir,
    "retention-repair": case_retention_repair,
}


def main():
    wanted = [c for c in os.environ.get("GUARANTEE_CASES", "").split(",") if c]
    unknown = [c for c in wanted if c not in CASES]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(CASES)}")
        return 2
    print(f"binaries: {BIN}")
    passed = failed = 0
    for name, case in CASES.items():
        if wanted and name not in wanted:
            continue
        tmp = tempfile.mkdtemp(prefix=f"guarantees-{name}-")
        checks = Checks(name)
        began = time.monotonic()
        try:
            case(checks, tmp)
        except Exception as e:  # a crash of the case is a failure, with its reason
            checks.check(False, f"raised {type(e).__name__}: {e}")
        ok = checks.failed == 0
        print(f"{name}: {'ok' if ok else 'FAIL'} ({time.monotonic() - began:.1f} s)", flush=True)
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
