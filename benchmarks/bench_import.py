"""What ``import lamcam`` costs beyond ``import torch``, and what the wheel holds.

    python benchmarks/bench_import.py [--runs 15] [--wheel dist/lamcam-*.whl] [--against OLD/src]

Each run is a fresh Python process that imports torch, then times ``import lamcam`` with
``time.perf_counter``; the median and range over ``--runs`` processes are printed, with the
modules the import brought in. With ``--wheel``, also the wheel's size and file count, and how
many of its files are studies or training code (there should be none). With ``--against``, the
lamcam found in that source folder (e.g. a checkout of an older commit's ``src``) is timed too,
the two interleaved process by process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import zipfile
from pathlib import Path

PROBE = (
    "import sys, time, torch\n"
    "before = set(sys.modules)\n"
    "t = time.perf_counter()\n"
    "import lamcam\n"
    "dt = time.perf_counter() - t\n"
    "new = sorted(m for m in set(sys.modules) - before if '.' not in m)\n"
    "print(dt, ' '.join(new))\n"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--wheel", type=Path, default=None)
    ap.add_argument("--against", type=Path, default=None,
                    help="another lamcam source folder to time alongside (e.g. an old checkout's src)")
    args = ap.parse_args()
    cases = {"this checkout": None} | ({str(args.against): args.against} if args.against else {})
    times: dict[str, list[float]] = {k: [] for k in cases}
    mods = ""
    for _ in range(args.runs):
        for label, src in cases.items():
            env = dict(os.environ)
            if src is not None:
                env["PYTHONPATH"] = str(src)
            out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                 check=True, env=env)
            dt, _, new_mods = out.stdout.strip().partition(" ")
            mods = new_mods if src is None else mods
            times[label].append(float(dt) * 1000)
    for label, ts in times.items():
        print(f"import lamcam beyond import torch ({label}): median {statistics.median(ts):.1f} ms "
              f"(range {min(ts):.1f}-{max(ts):.1f} ms, {args.runs} fresh processes)")
    print(f"top-level modules it brings in: {mods}")
    if args.wheel is not None:
        with zipfile.ZipFile(args.wheel) as z:
            names = z.namelist()
            research = [n for n in names if "/studies/" in n or "/train_" in n or "sr_data" in n]
            print(f"wheel {args.wheel.name}: {args.wheel.stat().st_size:,} bytes, {len(names)} files "
                  f"({sum(i.file_size for i in z.infolist()):,} bytes unpacked), "
                  f"{len(research)} of them studies or training code")


if __name__ == "__main__":
    main()
