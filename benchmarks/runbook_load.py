"""What ``load_runbook`` costs as a fleet grows: every run starts by reading the runbooks directory.

Run by hand from the repository root (never from the tests):

    .venv/bin/python benchmarks/runbook_load.py --services 50 500

A run finds its service by the name inside the file, and two files naming one service are refused, so each
``load_runbook`` reads the whole directory. For each fleet size this writes that many runbooks (the shipped
``runbooks/examples/aws.yaml`` under new names) and prints, side by side, the milliseconds of one
``find_runbook`` as the worker runs it (parsed once per file content, ``runbooks/loader.py``), and the plain
baseline of parsing every file each time (``parse_runbook`` over the directory, as before the cache).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runbooks.loader import find_runbook, parse_runbook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--loads", type=int, default=20, help="load_runbook calls measured per size")
    args = parser.parse_args()
    shipped = (ROOT / "runbooks" / "examples" / "aws.yaml").read_text()
    print(f"{'runbooks':>8}  {'load_runbook (ms)':>18}  {'parse every file (ms)':>22}")
    for count in args.services:
        with tempfile.TemporaryDirectory() as folder:
            directory = Path(folder)
            for i in range(count):
                text = shipped.replace("service: checkout", f"service: svc{i}", 1)
                (directory / f"svc{i}.yaml").write_text(text)
            find_runbook("svc0", directory)  # the worker's first run parses each file once
            started = time.perf_counter()
            for i in range(args.loads):
                find_runbook(f"svc{i % count}", directory)
            cached = (time.perf_counter() - started) / args.loads * 1000
            started = time.perf_counter()
            for file in sorted(directory.glob("*.yaml")):
                parse_runbook(file.read_bytes(), str(file))
            plain = (time.perf_counter() - started) * 1000
        print(f"{count:>8}  {cached:>18.1f}  {plain:>22.1f}")


if __name__ == "__main__":
    main()
