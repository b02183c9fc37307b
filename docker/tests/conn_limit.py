#!/usr/bin/env python3
"""Checks the echo server's connection cap.

Opens LIMIT connections and completes the handshake on each (`peticion` ->
`confirmacion`), then opens one more and expects it to be refused with
`ERROR server full (LIMIT connections)`. Finally closes them all and checks
that a new client is served again.

usage: conn_limit.py HOST PORT [LIMIT]
"""

import socket
import sys
import time

TIMEOUT = 5.0


def read_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(256)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def handshake(host, port):
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    sock.sendall(b"peticion\n")
    return sock, read_line(sock)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    expected = f"ERROR server full ({limit} connections)"
    held = []
    try:
        for i in range(limit):
            sock, reply = handshake(host, port)
            held.append(sock)
            if reply != "confirmacion":
                print(f"FAIL: connection {i + 1} of {limit} got {reply!r}, expected 'confirmacion'")
                return 1
        extra = socket.create_connection((host, port), timeout=TIMEOUT)
        held.append(extra)
        refusal = read_line(extra)
        if refusal != expected:
            print(f"FAIL: connection {limit + 1} got {refusal!r}, expected {expected!r}")
            return 1
        print(f"ok: {limit} connections served, connection {limit + 1} refused with {refusal!r}")
    finally:
        for sock in held:
            sock.close()

    # Slots are freed as the server notices the closes; retry briefly.
    deadline = time.monotonic() + 5
    while True:
        sock, reply = handshake(host, port)
        sock.close()
        if reply == "confirmacion":
            print("ok: a new client is served again after the others left")
            return 0
        if time.monotonic() > deadline:
            print(f"FAIL: after closing, a new client still got {reply!r}")
            return 1
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
