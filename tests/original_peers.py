#!/usr/bin/env python3
"""Peers written the way the original Python programs were, against the new servers.

They send each message as one `send()` with no newline, read each answer with
one `recv(1024)`, and compare answers with exact strings (`confirmacion`,
`recibido`). This script starts an echo server and a head node from
target/debug on free loopback ports, runs such an echo client, data node and
store client, checks every answer, and stops what it started.

    cargo build && python3 tests/original_peers.py
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from common import free_port  # noqa: E402
BIN = os.environ.get("BIN_DIR", os.path.join(ROOT, "target", "debug"))
BUFFER = 1024
results = {"passed": 0, "failed": 0}


def check(condition, what):
    if condition:
        results["passed"] += 1
        print(f"ok: {what}")
    else:
        results["failed"] += 1
        print(f"FAILED: {what}")


def wait_listening(port, deadline=10.0):
    start = time.time()
    while time.time() - start < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"peticion")
    return s, s.recv(BUFFER).decode("utf-8")


def original_data_node(port, stored, ready):
    """Like the original dataNode: exact `confirmacion`, then one recv per message."""
    node, answer = connect(port)
    if answer != "confirmacion":
        ready.set()
        return
    time.sleep(0.05)
    node.sendall(b"dataNode")
    ready.set()
    node.settimeout(None)
    while True:
        data = node.recv(BUFFER).decode("utf-8")
        if not data:
            return
        stored.append(data)
        node.sendall(b"recibido")


def main():
    procs = []
    logs = tempfile.mkdtemp(prefix="original-peers-")
    try:
        echo_port, head_port = free_port(), free_port()
        env = dict(os.environ, RUST_LOG="warn")
        procs.append(subprocess.Popen(
            [os.path.join(BIN, "echo-server"), "--listen", f"127.0.0.1:{echo_port}",
             "--log-dir", os.path.join(logs, "echo")], env=env, stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            [os.path.join(BIN, "headnode"), "--listen", f"127.0.0.1:{head_port}",
             # Original data nodes cannot prove a cluster token.
             "--open-registration",
             "--log-dir", os.path.join(logs, "head"), "--ping-interval", "1h",
             "--http-listen", "off"],
            env=env, stdout=subprocess.DEVNULL))
        wait_listening(echo_port)
        wait_listening(head_port)

        # Activity 1: the original echo client.
        client, answer = connect(echo_port)
        check(answer.startswith("confirmacion"), f"echo server confirms ({answer!r})")
        for n in (7, 42, 100):
            msg = f"numero random: {n}"
            client.sendall(msg.encode("utf-8"))
            reply = client.recv(BUFFER).decode("utf-8")
            check(reply == msg, f"echo of {msg!r} is exact, no newline ({reply!r})")
        client.close()

        # Activity 2: two original data nodes (each counts as one of the
        # head node's default 2 replicas) and an original client.
        stores = []
        for _ in range(2):
            stored, ready = [], threading.Event()
            threading.Thread(target=original_data_node, args=(head_port, stored, ready), daemon=True).start()
            ready.wait(5)
            stores.append(stored)
        time.sleep(0.2)
        client, answer = connect(head_port)
        check(answer == "confirmacion", f"head node answers exactly 'confirmacion' ({answer!r})")
        time.sleep(0.05)
        client.sendall(b"cliente")
        time.sleep(0.05)
        for n in range(5):
            msg = f"numero random: {n}"
            client.sendall(msg.encode("utf-8"))
            reply = client.recv(BUFFER).decode("utf-8")
            holders = reply.split(" , ", 1)[0].split("+")
            check(len(set(holders)) == 2 and all(h.startswith("dn-127.0.0.1-") for h in holders)
                  and " , mensaje: recibido " in reply and not reply.endswith("\n"),
                  f"store answer names both nodes {reply!r}")
        client.close()
        time.sleep(0.2)
        for stored in stores:
            check(stored == [f"mensaje: numero random: {n}" for n in range(5)],
                  f"each data node got one bare 'mensaje: ...' per recv ({stored!r})")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["rm", "-rf", logs], check=False)
    print(f"original peers: {results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
