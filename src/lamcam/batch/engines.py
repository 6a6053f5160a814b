"""Running a job: in this process (the default), or on Ray Data for a cluster.

Both engines hand the same items to the same :class:`lamcam.batch.jobs.Worker` code and store the
rows through the same :class:`lamcam.batch.store.RunStore`, so they produce the same table.

**Local**: one worker in this process, a tqdm bar, rows stored every ``chunk`` items.

**Ray**: ``ray.data.from_items(items).map_batches(RayWorker, compute=ActorPoolStrategy(size=n),
num_cpus=..., batch_size=...)``. Each actor builds its worker once (the model is loaded once per
actor), runs torch on one thread (``n`` actors share the machine's cores instead of
oversubscribing them) and keeps autograd on: attribution needs gradients, so nothing here uses
``torch.inference_mode``, which Ray's own batch-inference examples do. The driver streams the
finished batches back and stores them as they arrive, so an interrupted run keeps what finished.
Ray is used, not re-implemented: scheduling, retries of dead actors and spreading over nodes are
Ray's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamcam.batch.jobs import SCHEMAS, make_worker
from lamcam.batch.store import RunStore

__all__ = ["BatchSummary", "run_job", "RayWorker", "import_ray"]


@dataclass
class BatchSummary:
    """What a run did.

    Attributes:
        out: the results folder; ``table``: its ``results.parquet``.
        rows: every item's latest rows (also those of earlier runs).
        items, skipped, processed, failed: item counts (``skipped``: finished in an earlier run;
            ``failed``: items whose latest rows failed, with ``errors`` ``{item_id: error}``).
        seconds: this run's wall time; ``engine``: ``"local"`` or ``"ray"``.
        message: what the store said when it opened (a changed configuration), if anything.
    """

    out: Path
    table: Path
    rows: list[dict[str, Any]]
    items: int
    skipped: int
    processed: int
    failed: int
    seconds: float
    engine: str
    errors: dict[str, str] = field(default_factory=dict)
    message: str | None = None
    report: Path | None = None

    @property
    def items_per_second(self) -> float:
        """Processed items per second of this run."""
        return self.processed / self.seconds if self.seconds > 0 else float("nan")


def import_ray():  # noqa: ANN201
    """``ray``, or an ImportError naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError("the Ray engine needs Ray Data: pip install 'lamcam[ray]'") from e
    return ray


class RayWorker:
    """The callable class of ``map_batches``: one per actor, holding one job worker.

    Batches arrive as numpy columns (``{"item": array of JSON strings}``) and leave as a pyarrow
    table of the job's rows.
    """

    def __init__(self, kind: str, config: dict[str, Any], out_dir: str, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(int(threads))
        self.kind = kind
        self.worker = make_worker(kind, config, out_dir)

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        from lamcam.batch.store import _schema

        rows = []
        for text in batch["item"]:
            rows += self.worker.rows(json.loads(str(text)))
        return pa.Table.from_pylist(rows, schema=_schema(self.kind))


def run_job(
    job: Any,
    out: str | Path,
    *,
    engine: str = "local",
    workers: int = 2,
    batch_size: int = 4,
    cpus_per_worker: float = 1.0,
    address: str | None = None,
    threads: int | None = None,
    chunk: int = 16,
    progress: bool | None = None,
    say: Callable[[str], None] | None = None,
    report: bool = True,
) -> BatchSummary:
    """Run ``job`` (:class:`CAMJob` or :class:`LAMSurvey`) into the folder ``out``.

    Args:
        engine: ``"local"`` (this process) or ``"ray"``.
        workers: Ray actors (each loads the model once).
        batch_size: items per Ray batch (explicit, as Ray recommends for actors).
        cpus_per_worker: CPUs Ray reserves per actor.
        address: a Ray cluster's address (``ray start --head`` prints it); ``None`` with
            ``engine="ray"`` starts a local Ray with ``workers * cpus_per_worker`` CPUs.
        threads: torch threads of the local engine (default: torch's own); Ray actors use one.
        chunk: the local engine stores rows every ``chunk`` items.
        progress: a bar (``None``: iff stderr is a terminal).
        say: where notes go (a changed configuration, the engine's start).
        report: write ``report.html`` at the end.

    Returns:
        A :class:`BatchSummary`. Items that failed are in the table with their error; the run
        itself raises only for what concerns all items (the model cannot be loaded, Ray cannot
        start, the folder cannot be written).
    """
    from lamcam._progress import show

    say = say or (lambda _msg: None)
    t0 = time.perf_counter()
    config = job.config()
    store = RunStore(out, job.kind, config)
    store.open()
    if store.message:
        say(store.message)
    items = job.items()
    order = [it["item_id"] for it in items]
    done = store.done()
    todo = [it for it in items if it["item_id"] not in done]
    skipped = len(items) - len(todo)
    if skipped:
        say(f"resuming: {skipped} of {len(items)} item(s) already done, {len(todo)} to go")
    bar = None
    if show(progress) and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"{job.kind} ({engine})", unit="item")
    try:
        if not todo:
            pass
        elif engine == "local":
            _run_local(job.kind, config, todo, store, threads, chunk, bar)
        elif engine == "ray":
            _run_ray(job.kind, config, todo, store, workers, batch_size, cpus_per_worker, address,
                     bar, say)
        else:
            raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    except BaseException:
        # interrupted or broken: still leave a whole table of what finished, without letting a
        # second failure hide the first
        try:
            store.consolidate(order)
        except Exception:  # noqa: BLE001, S110 - the original exception is what matters
            pass
        raise
    finally:
        if bar is not None:
            bar.close()
    rows = store.consolidate(order)
    current = set(order)
    latest: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        latest.setdefault(r["item_id"], []).append(r)
    errors = {k: next(r["error"] for r in rs if r["status"] != "ok") for k, rs in latest.items()
              if k in current and any(r["status"] != "ok" for r in rs)}
    summary = BatchSummary(Path(out), Path(out) / "results.parquet", rows, len(items), skipped,
                           len(todo), len(errors), time.perf_counter() - t0, engine, errors,
                           store.message)
    if report:
        from lamcam.batch.report import write_report

        summary.report = write_report(summary, job)
    return summary


def _run_local(kind: str, config: dict[str, Any], todo: list[dict[str, Any]], store: RunStore,
               threads: int | None, chunk: int, bar: Any) -> None:
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        worker = make_worker(kind, config, str(store.out))
        pending: list[dict[str, Any]] = []
        for i, item in enumerate(todo, 1):
            pending += worker.rows(item)
            if bar is not None:
                bar.update(1)
            if i % chunk == 0:
                store.write_part(pending)
                pending = []
        if pending:
            store.write_part(pending)
    finally:
        torch.set_num_threads(before)


def _run_ray(kind: str, config: dict[str, Any], todo: list[dict[str, Any]], store: RunStore,
             workers: int, batch_size: int, cpus_per_worker: float, address: str | None, bar: Any,
             say: Callable[[str], None]) -> None:
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
            say(f"ray: connected to {address}")
        else:
            ray.init(num_cpus=max(1, int(round(workers * cpus_per_worker))),
                     include_dashboard=False, log_to_driver=False)
            say(f"ray: started a local Ray with {workers} worker(s)")
        started = True
    try:
        import warnings

        with warnings.catch_warnings():  # Ray's own deprecated defaults, not ours
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts items
        # one block per batch: Ray hands blocks to actors, and a single block (from_items' choice
        # for a small list) would keep every actor but one idle
        n_blocks = max(1, -(-len(todo) // int(batch_size)))
        ds = ray.data.from_items([{"item": json.dumps(it)} for it in todo],
                                 override_num_blocks=n_blocks)
        out = ds.map_batches(
            RayWorker,
            fn_constructor_kwargs={"kind": kind, "config": config, "out_dir": str(store.out),
                                   "threads": 1},
            # no more actors than blocks: an actor without a block would only load the model
            compute=ray.data.ActorPoolStrategy(size=min(int(workers), n_blocks)),
            num_cpus=cpus_per_worker,
            batch_size=int(batch_size),
            batch_format="numpy",
        )
        names = [n for n, _ in SCHEMAS[kind]]
        for batch in out.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.select(names).to_pylist()
            if rows:
                store.write_part(rows)
                if bar is not None:
                    bar.update(len({r["item_id"] for r in rows}))
    finally:
        if started:
            ray.shutdown()
