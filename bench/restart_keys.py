#!/usr/bin/env python3
"""Restart-to-first-ack with many client keys held.

Writes the data directories of a cluster of 3 data nodes that hold
`--keys` client keys with 2 copies each (the `key_fixture` example of the
data node: as the nodes would have written them, with a `members` file
naming all three), then starts a head node and the three data nodes over
them at once, as after a full-cluster restart, and measures:

- the time from the start to the first acknowledgement of a new keyed
  message: the head node serves nobody until every member has reported
  the keys it holds, and keeps every reported key until then, past its
  `--dedup-keys` bound;
- that a resend of a held key gets the id the fixture stored it under,
  naming the nodes that hold it;
- the head node's peak resident memory (VmHWM), its resident memory once
  recovery is over, and after the table has dropped the reported keys (one
  head-node `--dedup-window` later, here 10 s: the table holds its bound
  again one generation after recovery).

    cargo build --release -p headnode -p datanode -p client \\
        && cargo build --release -p datanode --example key_fixture \\
        && python3 bench/restart_keys.py --keys 10000000

Options: --keys N (10,000,000), --clients N (1,000 client ids the keys are
dealt to), --keep (leave the temporary directory). Binaries come from
$BIN_DIR, else target/release. Needs about 110 bytes of disk per key and
copy (2.2 GB at 10 M keys), and memory for the data nodes' indexes and the
head node's table (several GB at 10 M keys). Run it alone: it measures
the machine as much as the code.
"""

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from common import free_port  # noqa: E402
from replication import KeyedClient, REPLY, wait_listening  # noqa: E402

NODES = ("dn1", "dn2", "dn3")


def status_kib(pid, field):
    """A `VmRSS`-style field of /proc/<pid>/status, in KiB (0 if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def mib(kib):
    return f"{kib / 1024:.0f} MiB"


def ask(port, client_id, seq, text, timeout=5):
    """The answer to one keyed message, or None."""
    try:
        c = KeyedClient(port, client_id, timeout=timeout)
        try:
            c.send(seq, text)
            return c.line(timeout)
        finally:
            c.close()
    except (OSError, TimeoutError, ConnectionError):
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    bin_dir = os.environ.get("BIN_DIR") or os.path.join(ROOT, "target", "release")
    fixture = os.path.join(bin_dir, "examples", "key_fixture")
    for path in [os.path.join(bin_dir, b) for b in ("headnode", "datanode")] + [fixture]:
        if not os.path.isfile(path):
            sys.exit(f"missing {path}: build it first (see --help)")

    tmp = tempfile.mkdtemp(prefix="restart-keys-")
    procs = []
    try:
        started = time.monotonic()
        out = subprocess.run([fixture, tmp, str(args.keys), "3", "2", str(args.clients)],
                             capture_output=True, text=True, check=True)
        print(f"fixture: {args.keys} keys, 2 copies, 3 nodes, {args.clients} clients, "
              f"written in {time.monotonic() - started:.1f} s ({' '.join(out.stdout.split())})",
              flush=True)

        port = free_port()
        env = dict(os.environ, CLUSTER_TOKEN=secrets.token_hex(16), RUST_LOG="warn")
        # A node's key bound counts the gaps in each client's run of keys:
        # room for every key it holds, in one generation.
        node_keys = str(min(100_000_000, 4 * args.keys))
        t0 = time.monotonic()
        head = subprocess.Popen(
            [os.path.join(bin_dir, "headnode"), "--listen", f"127.0.0.1:{port}",
             "--log-dir", os.path.join(tmp, "head"), "--http-listen", "off",
             "--ping-interval", "1h", "--replicas", "2", "--min-replicas", "2",
             "--recovery-wait", "10m", "--dedup-window", "10s",
             # A report of millions of keys takes seconds to send and read.
             "--handshake-timeout", "10m"],
            env=env, stdout=open(os.path.join(tmp, "head.out"), "wb"), stderr=subprocess.STDOUT)
        procs.append(head)
        wait_listening(port, head)
        for node in NODES:
            procs.append(subprocess.Popen(
                [os.path.join(bin_dir, "datanode"), "--headnode", f"127.0.0.1:{port}",
                 "--node-id", node, "--data-dir", os.path.join(tmp, node),
                 "--dedup-keys", node_keys, "--dedup-window", "1h"],
                env=env, stdout=open(os.path.join(tmp, f"{node}.out"), "wb"),
                stderr=subprocess.STDOUT))

        first = None
        deadline = t0 + 900
        while time.monotonic() < deadline and first is None:
            answer = ask(port, "probe", 1, "the first message after the restart", timeout=30)
            if answer and REPLY.match(answer):
                first = time.monotonic() - t0
                break
            if head.poll() is not None:
                sys.exit(f"the head node exited with {head.returncode}")
            time.sleep(0.05)
        if first is None:
            sys.exit("no acknowledgement within 15 minutes")
        after_recovery = status_kib(head.pid, "VmRSS")
        print(f"restart to first ack: {first:.1f} s ({answer})", flush=True)

        # A held key's resend: the fixture's id, on the nodes that hold it.
        # Key n = 0 is c-0/1, message 1-1 on dn1 and dn2; the last key is
        # on its two nodes too.
        last = args.keys - 1
        for n in (0, last):
            client, seq = f"c-{n % args.clients}", n // args.clients + 1
            holders = "+".join(sorted(NODES[(n + r) % 3] for r in range(2)))
            answer = ask(port, client, seq, f"fixture {n}") or "(no answer)"
            m = REPLY.match(answer)
            got = m and m.group(2) == f"1-{n + 1}" and "+".join(sorted(m.group(1).split("+"))) == holders
            print(f"resend of {client}/{seq}: {answer!r} "
                  f"({'ok' if got else f'FAIL: expected recibido 1-{n + 1} on {holders}'})",
                  flush=True)

        peak = status_kib(head.pid, "VmHWM")
        # One head-node window later, a new key turns the table's
        # generation: the reported keys are dropped.
        time.sleep(12)
        for seq in range(2, 5):
            ask(port, "probe", seq, "after the window")
            time.sleep(0.5)
        time.sleep(2)
        trimmed = status_kib(head.pid, "VmRSS")
        nodes = ", ".join(f"{n} {mib(status_kib(p.pid, 'VmHWM'))}" for n, p in zip(NODES, procs[1:]))
        print(f"head node: peak RSS {mib(peak)}, RSS after recovery {mib(after_recovery)}, "
              f"after the reported keys were dropped {mib(trimmed)}; "
              f"data nodes' peak RSS: {nodes}", flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
