"""Throughput of `lamcam batch`: the local engine against Ray Data with 1 and 2 workers.

    python benchmarks/bench_batch.py [--repeats 3] [--job lam|cam|both] [--steps 50]

One process, one local Ray (``ray.init(num_cpus=2)``, as a running cluster would be), and the
same job run by every engine in turn, interleaved over ``--repeats`` rounds (the order rotates each
round), each run into a fresh folder so nothing is resumed. Prints medians of:

* items per second of the whole run (for Ray: actor start-up and model loading included, as a
  user experiences it);
* the per-item compute cost (median of the rows' ``seconds``), which sets the steady-state rate
  ``workers / cost`` that a cluster scales with;
* the ratio of each engine's throughput to the local engine's.

Jobs: ``lam``, a LAM survey of the three bundled LR images x sr_fsrcnn and sr_edsr x the 4
highest edge-energy windows (24 items, the paper's 50 Riemann steps); ``cam``, Grad-CAM and
Grad-CAM++ of shapes_resnet on 96 copies of the bundled shapes images (96 items).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

import lamcam
from lamcam.batch import CAMJob, InputEntry, LAMSurvey, find_inputs, run_job

ENGINES = [("local", {"engine": "local"}),
           ("local, 1 thread", {"engine": "local", "threads": 1}),
           ("ray, 1 worker", {"engine": "ray", "workers": 1}),
           ("ray, 2 workers", {"engine": "ray", "workers": 2})]


def lam_job(steps: int) -> LAMSurvey:
    folder = Path(lamcam.zoo.sr_samples()[0]["lr"]).parent
    return LAMSurvey(find_inputs([str(folder)]), ["sr_fsrcnn", "sr_edsr"], windows="edges:4",
                     steps=steps)


def cam_job(tmp: Path, copies: int = 16) -> CAMJob:
    entries = []
    for p in lamcam.zoo.samples():
        for k in range(copies):
            q = tmp / f"{p.stem}_{k}.png"
            shutil.copy(p, q)
            shutil.copy(p.with_name(p.stem + "_mask.png"), tmp / f"{p.stem}_{k}_mask.png")
            entries.append(InputEntry(str(q), mask=str(tmp / f"{p.stem}_{k}_mask.png")))
    return CAMJob(entries, "shapes_resnet", ["gradcam", "gradcam++"])


def measure(name: str, job, repeats: int) -> None:
    rates: dict[str, list[float]] = {n: [] for n, _ in ENGINES}
    costs: dict[str, list[float]] = {n: [] for n, _ in ENGINES}
    for rep in range(repeats):
        order = ENGINES[rep % len(ENGINES):] + ENGINES[:rep % len(ENGINES)]
        for label, kw in order:
            out = tempfile.mkdtemp(prefix="bench-batch-")
            try:
                s = run_job(job, out, report=False, progress=False, batch_size=2, **kw)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            assert s.failed == 0 and s.processed == s.items, (label, s.errors)
            rates[label].append(s.items_per_second)
            per_item: dict[str, float] = {}
            for r in s.rows:
                per_item[r["item_id"]] = per_item.get(r["item_id"], 0.0) + r["seconds"]
            costs[label].append(statistics.median(per_item.values()))
    base = statistics.median(rates["local"])
    print(f"\n{name}: {job.items().__len__()} items, medians of {repeats} interleaved run(s)")
    print(f"{'engine':<18} {'items/s':>9} {'x local':>8} {'cost/item':>10}")
    for label, _ in ENGINES:
        rate = statistics.median(rates[label])
        print(f"{label:<18} {rate:>9.2f} {rate / base:>8.2f} {statistics.median(costs[label]):>9.3f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--job", choices=["lam", "cam", "both"], default="both")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, ray {ray.__version__} (num_cpus=2)")
    try:
        if args.job in ("lam", "both"):
            measure(f"LAM survey (steps {args.steps})", lam_job(args.steps), args.repeats)
        if args.job in ("cam", "both"):
            with tempfile.TemporaryDirectory() as tmp:
                measure("CAM job (gradcam, gradcam++)", cam_job(Path(tmp)), args.repeats)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
