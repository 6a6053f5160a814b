"""What ``import lamcam`` costs beyond ``import torch``, and what the wheel holds.

    python benchmarks/bench_import.py [--runs 15] [--wheel dist/lamcam-*.whl]

Each run is a fresh Python process that imports torch, then times ``import lamcam`` with
``time.perf_counter``; the median and range over ``--runs`` processes are printed, with the
modules the import brought in. With ``--wheel``, also the wheel's size and file count, and how
many of its files are studies or training code (there should be none).
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args()
    times, mods = [], ""
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
        dt, _, mods = out.stdout.strip().partition(" ")
        times.append(float(dt) * 1000)
    print(f"import lamcam beyond import torch: median {statistics.median(times):.1f} ms "
          f"(range {min(times):.1f}-{max(times):.1f} ms, {args.runs} fresh processes)")
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
