"""What the Python test programs share: where the binaries are, free ports."""

import os
import socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bin_dir_and_why():
    """Where the binaries are ($BIN_DIR, else the release build if there is
    one, else the debug build), and why that directory."""
    if os.environ.get("BIN_DIR"):
        return os.environ["BIN_DIR"], "from $BIN_DIR"
    release = os.path.join(ROOT, "target", "release")
    if os.path.isfile(os.path.join(release, "headnode")):
        return release, "release build"
    return os.path.join(ROOT, "target", "debug"), "debug build (no release build found)"


def bin_dir():
    return bin_dir_and_why()[0]


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
