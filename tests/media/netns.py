"""Run a command inside a private network namespace where WebRTC can work.

    python -m tests.media.netns -- python -m pytest [args...]

libwebrtc ignores loopback interfaces, so the SDK gathers no ICE candidate on a machine whose
only interface is `lo`, and the media tests must not use the machine's real interfaces. This
launcher re-runs the command under `unshare -rn` (a rootless user + network namespace), brings
`lo` up and creates a veth pair with two private addresses that exist only inside it; nothing
inside can reach, or be reached from, outside. The command's environment gets
`LK_NETNS_ADDR` (the address the tests may use). Where namespaces are forbidden the command
runs as it is, with `LK_NETNS_UNAVAILABLE` saying why, and the media tests skip with that
reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

ADDR_ENV = "LK_NETNS_ADDR"
UNAVAILABLE_ENV = "LK_NETNS_UNAVAILABLE"
# Private addresses assigned inside the namespace only (RFC 1918, never routed anywhere).
SIM_ADDR = "10.77.0.1"
PEER_ADDR = "10.77.0.2"
PREFIX = 24

_SETUP = [
    ["ip", "link", "set", "lo", "up"],
    ["ip", "link", "add", "lkv0", "type", "veth", "peer", "name", "lkv1"],
    ["ip", "addr", "add", f"{SIM_ADDR}/{PREFIX}", "dev", "lkv0"],
    ["ip", "addr", "add", f"{PEER_ADDR}/{PREFIX}", "dev", "lkv1"],
    ["ip", "link", "set", "lkv0", "up"],
    ["ip", "link", "set", "lkv1", "up"],
]


def _run_inside(command: list[str]) -> int:
    """Inside the new namespace: set up the interfaces, then become `command`."""
    for step in _SETUP:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            why = f"{' '.join(step)} failed: {done.stderr.strip()}"
            print(f"netns: {why}", file=sys.stderr)
            return 3
    os.environ[ADDR_ENV] = SIM_ADDR
    os.environ.pop(UNAVAILABLE_ENV, None)
    os.execvp(command[0], command)


def _probe() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "`unshare` or `ip` (util-linux, iproute2) is not installed"
    probe = subprocess.run(
        ["unshare", "-rn", "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"`unshare -rn` with a veth pair is not permitted here: {probe.stderr.strip()}"
    return None


def main(argv: list[str]) -> int:
    if argv[:1] == ["--inside"]:
        return _run_inside(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    command = argv[1:] if argv[:1] == ["--"] else argv
    if not command:
        print(__doc__, file=sys.stderr)
        return 2
    if os.environ.get(ADDR_ENV):  # already inside
        os.execvp(command[0], command)
    why = _probe()
    if why is not None:
        os.environ[UNAVAILABLE_ENV] = why
        print(f"netns: media tests will skip: {why}", file=sys.stderr)
        os.execvp(command[0], command)
    inner = ["unshare", "-rn", sys.executable, "-m", "tests.media.netns", "--inside", "--"]
    os.execvp(inner[0], inner + command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
