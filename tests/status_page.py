#!/usr/bin/env python3
"""The head node's status page in a real browser (headless Chromium).

Starts a head node with its HTTP port and three data nodes on free loopback
ports, stores a few messages, and loads http://127.0.0.1:<port>/ in headless
Chromium, which runs the page's script (no build step) and prints the DOM it
rendered. Checks:

  live      every data node has a row, in the `live` colour, and the page
            shows the stored messages;
  evicted   after one data node is SIGKILLed, the page (loaded again) shows
            it `evicted`, in that colour, with the reason in its row and in
            the recent events.

Chromium comes from Debian's `chromium` package; when it is missing and this
runs as root with apt-get, it is installed first (CHROMIUM=/path overrides).
Prints SKIP and exits 0 when no browser can be had.

    cargo build --release -p headnode -p datanode -p client && python3 tests/status_page.py

Python 3 standard library only; Linux.
"""

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


BIN = bin_dir()


def find_browser():
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing Debian's chromium package (headless browser for this test)", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, timeout=900,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=False)
        except subprocess.TimeoutExpired:
            return None
        return shutil.which("chromium")
    return None


def render(browser, url, profile):
    """The DOM after the page's script has run for a few (virtual) seconds."""
    # Events (SSE) are covered by headnode/tests/it/status.rs; here the page
    # itself: its script, its rendering, its colours.
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=90, check=False)
    return out.stdout


def wait_port(port, deadline):
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def node_row(dom, node):
    """The table row of `node` in the rendered DOM, if any."""
    for row in re.findall(r"<tr>(.*?)</tr>", dom, re.S):
        if re.search(rf"<td[^>]*>{re.escape(node)}</td>", row):
            return row
    return None


def main():
    browser = find_browser()
    if not browser:
        print("SKIP: status page: no headless browser (install Debian's chromium, or set CHROMIUM)")
        return 0
    for exe in ("headnode", "datanode", "client"):
        if not os.path.isfile(os.path.join(BIN, exe)):
            print(f"FAIL: {os.path.join(BIN, exe)} missing; cargo build --release first")
            return 1
    work = tempfile.mkdtemp(prefix="msgstore-page.")
    procs = []
    env = dict(os.environ, CLUSTER_TOKEN=secrets.token_hex(16), RUST_LOG="info")
    passed = failed = 0

    def check(name, good, detail):
        nonlocal passed, failed
        print(f"{name}: {detail} {'ok' if good else 'FAIL'}", flush=True)
        if good:
            passed += 1
        else:
            failed += 1

    try:
        port, http = free_port(), free_port()
        head = subprocess.Popen(
            [os.path.join(BIN, "headnode"), "--listen", f"127.0.0.1:{port}",
             "--log-dir", os.path.join(work, "head"), "--http-listen", f"127.0.0.1:{http}",
             "--replicas", "2", "--suspect-after", "1s", "--hung-grace", "1s"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        procs.append(head)
        if not wait_port(port, time.monotonic() + 15) or not wait_port(http, time.monotonic() + 5):
            print("FAIL: the head node did not listen")
            return 1
        nodes = {}
        for n in (1, 2, 3):
            proc = subprocess.Popen(
                [os.path.join(BIN, "datanode"), "--headnode", f"127.0.0.1:{port}",
                 "--node-id", f"dn{n}", "--data-dir", os.path.join(work, f"dn{n}")],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            procs.append(proc)
            nodes[f"dn{n}"] = proc
        time.sleep(2)
        subprocess.run(
            [os.path.join(BIN, "client"), "--server", f"127.0.0.1:{port}", "--log-dir",
             os.path.join(work, "client"), "store", "--count", "5", "--interval", "10ms"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=60, check=False)

        # ?poll: the page polls /status.json; the browser's virtual clock
        # (which runs the page's timers) stands still while an event
        # stream is open.
        url = f"http://127.0.0.1:{http}/?poll"
        profile = os.path.join(work, "profile")
        dom = render(browser, url, profile)
        rows = {n: node_row(dom, n) for n in nodes}
        check("live", all(r and 'class="state live"' in r for r in rows.values()),
              "rows " + ", ".join(f"{n}={'live' if r and 'state live' in r else r}" for n, r in rows.items()))
        stored = re.search(r"stored\D{0,40}(\d+)", dom)
        check("live", stored is not None and int(stored.group(1)) >= 5,
              f"messages stored shown: {stored.group(1) if stored else 'none'}")

        nodes["dn2"].send_signal(signal.SIGKILL)
        nodes["dn2"].wait(timeout=10)
        time.sleep(1.5)
        dom = render(browser, url, profile)
        row = node_row(dom, "dn2") or ""
        check("evicted", 'class="state evicted"' in row, f"dn2 row: {re.sub(r'<[^>]+>', ' ', row).split()}")
        events = dom[dom.find('id="events"'):]
        check("evicted", "dn2" in events and re.search(r"evict|eliminado|lost", events) is not None,
              "dn2's eviction is in the recent events")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
