"""Run a command with a container's filesystem view: everything read-only but the declared mounts.

    unshare --mount --propagation private -- python tests/support/readonly_root.py \\
        --rw DIR ... --ro DIR ... --tmpfs DIR ... --cwd DIR -- COMMAND ...

Inside a private mount namespace (so nothing changes outside it, and it all vanishes with the process):

1. each ``--tmpfs`` directory gets a fresh tmpfs (compose's ``tmpfs:``);
2. each ``--rw`` and ``--ro`` directory is bind-mounted onto itself, so it is a mount of its own
   (compose's volumes, ``:ro`` or not);
3. every other mount of the system (``/``, ``/work``, ``/tmp``, ...; ``/proc``, ``/sys`` and ``/dev`` as a
   container has them) is remounted read-only, and so are the ``--ro`` mounts. A read-only mount stops root
   too (EROFS), which file modes do not;
4. writes are probed: in the working directory, next to this script and the interpreter, and in the parent
   of every ``--rw`` directory they must fail with EROFS; in each ``--tmpfs`` directory one must succeed.
   Any surprise exits 97 before the command runs, so the emulation cannot silently stop biting;
5. ``ready`` is printed on stderr and the command replaces this process (same pid: signals reach it).

Needs root (``unshare -m``) and util-linux's ``mount``. Exit 97 on any setup failure, with the reason.
"""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
from pathlib import Path

SETUP_FAILED = 97
KERNEL_MOUNTS = ("/proc", "/sys", "/dev")
READY = "readonly-root: ready"


def fail(message: str) -> None:
    print(f"readonly-root: {message}", file=sys.stderr, flush=True)
    sys.exit(SETUP_FAILED)


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        fail(f"mount {' '.join(args)}: {done.stderr.strip()}")


def mount_points() -> list[str]:
    """Every mount point of this namespace, from /proc/self/mountinfo (octal escapes decoded)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        points.append(raw.encode().decode("unicode_escape"))
    return points


def under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def write_fails_with_erofs(folder: Path) -> bool:
    probe = folder / f".readonly-root-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"x")
    except OSError as err:
        return err.errno == errno.EROFS
    probe.unlink()
    return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rw", action="append", default=[])
    parser.add_argument("--ro", action="append", default=[])
    parser.add_argument("--tmpfs", action="append", default=[])
    parser.add_argument("--cwd", required=True)
    parser.add_argument("command", nargs="+")
    options = parser.parse_args()

    for folder in options.tmpfs:
        mount("-t", "tmpfs", "-o", "size=64m,mode=1777,nosuid,nodev", "tmpfs", folder)
    for folder in [*options.rw, *options.ro]:
        mount("--bind", folder, folder)
    keep_writable = tuple(str(Path(p).resolve()) for p in [*options.rw, *options.tmpfs])
    for point in mount_points():
        if point in keep_writable or under(point, KERNEL_MOUNTS):
            continue
        mount("-o", "remount,bind,ro", point)

    readonly = [Path(options.cwd), Path(__file__).resolve().parent, Path(sys.executable).parent]
    readonly += [Path(p).parent for p in options.rw] + [Path(p) for p in options.ro]
    for folder in readonly:
        if not write_fails_with_erofs(folder):
            fail(f"{folder} is still writable: the read-only view does not hold")
    for folder in options.tmpfs:
        probe = Path(folder) / ".readonly-root-probe"
        try:
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as err:
            fail(f"the tmpfs {folder} is not writable: {err}")
    for folder in options.rw:
        if not os.access(folder, os.W_OK | os.X_OK):
            fail(f"the volume {folder} is not writable")

    os.chdir(options.cwd)
    print(READY, file=sys.stderr, flush=True)
    try:
        os.execv(options.command[0], options.command)
    except OSError as err:
        fail(f"cannot run {options.command[0]}: {err}")


if __name__ == "__main__":
    main()
