"""Evaluate explanation methods on one model and a set of images: the engine of ``lamcam eval``.

:func:`evaluate` runs every method on every image (in batches, with a progress bar) and scores the
maps with :mod:`lamcam.metrics`:

* ``faithfulness`` — ``Y`` and ``O`` per image (SPEC §3), from which Average Drop %, % Increase in
  Confidence and the pairwise Win % follow;
* ``deletion`` — deletion and insertion AUC (and the mean curves, for plotting);
* ``localisation`` — pointing game, energy pointing game, IoU at δ = 0.25 and 0.5, and instance
  coverage; these need per-instance ground-truth masks.

Gradient-type methods (guided backprop, guided Grad-CAM(++)) give signed per-channel maps; they are
scored through their saliency ``max_c |map|``, min-max normalised per image to [0, 1].

The result, :class:`Evaluation`, keeps one record per (method, image) and turns them into tables
(markdown, CSV) and figures.

Example:
    >>> import torch, torch.nn as nn
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 3)).eval()
    >>> masks = [torch.zeros(1, 8, 8, dtype=torch.bool) for _ in range(2)]
    >>> for m in masks: m[0, 2:5, 2:5] = True
    >>> ev = evaluate(net, torch.rand(2, 3, 8, 8), ["gradcam", "gradcam++"], layer="0",
    ...               instance_masks=masks, steps=4, progress=False)
    >>> len(ev.records), sorted(ev.summary()[0])[:3]
    (4, ['average_drop', 'coverage', 'deletion'])
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lamcam import metrics as M
from lamcam._progress import show
from lamcam.cam import make_explainer
from lamcam.maps import normalize_minmax

__all__ = ["METRIC_GROUPS", "COLUMNS", "Evaluation", "MetricUnavailableError", "evaluate",
           "method_saliency"]

#: What each metric group adds to a record.
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "faithfulness": ("y", "o", "drop", "increase"),
    "deletion": ("deletion", "insertion"),
    "localisation": ("pointing", "energy", "iou25", "iou50", "coverage"),
}

#: Summary columns: (key, header, higher is better?)
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("average_drop", "Avg Drop % ↓", False),
    ("increase", "Incr. Conf. % ↑", True),
    ("deletion", "Deletion AUC ↓", False),
    ("insertion", "Insertion AUC ↑", True),
    ("pointing", "Pointing ↑", True),
    ("energy", "Energy PG ↑", True),
    ("iou25", "IoU@0.25 ↑", True),
    ("iou50", "IoU@0.5 ↑", True),
    ("coverage", "Inst. coverage ↑", True),
)


class MetricUnavailableError(ValueError):
    """A metric was asked of a method or a data set that cannot provide it."""


def method_saliency(res: Any) -> Tensor:
    """``(B, H, W)`` map in [0, 1] from a :class:`lamcam.CAMResult` of a single target per image.

    CAM-type maps are returned as they are; gradient-type maps ``(B, C, H, W)`` become
    ``max_c |map|``, min-max normalised per image.
    """
    maps = res.maps.detach()
    if getattr(res, "kind", "cam") == "gradient":
        return normalize_minmax(maps.abs().amax(dim=1), ndim=maps.ndim - 2)
    return maps


@dataclass
class Evaluation:
    """Per-(method, image) records of an evaluation, and what to make of them.

    Attributes:
        records: one dict per (method, image): ``method``, ``image`` (id), ``target``,
            ``n_instances`` (or None) and the metric values of the groups evaluated.
        methods: the methods, in the order given.
        groups: the metric groups evaluated.
        input: "raw" or "normalised", what the images tensor was (for Average Drop).
        curves: method -> ``(deletion_curve, insertion_curve)`` mean over images, ``(steps + 1,)``.
        config: the settings used.
    """

    records: list[dict[str, Any]]
    methods: list[str]
    groups: list[str]
    input: str = "raw"
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    # ---- summaries ------------------------------------------------------------------------
    def _of(self, method: str, key: str, where: Callable[[dict], bool] | None = None) -> list[float]:
        return [float(r[key]) for r in self.records
                if r["method"] == method and r.get(key) is not None and (where is None or where(r))]

    def summary(self, where: Callable[[dict], bool] | None = None) -> list[dict[str, Any]]:
        """One row per method: ``method``, ``n`` and the mean of every metric (NaN if absent).

        Average Drop and Increase in Confidence are in percent; the pointing game is a share.
        """
        rows = []
        for m in self.methods:
            n = sum(1 for r in self.records if r["method"] == m and (where is None or where(r)))
            row: dict[str, Any] = {"method": m, "n": n}
            drops = self._of(m, "drop", where)
            row["average_drop"] = 100 * float(np.mean(drops)) if drops else math.nan
            inc = self._of(m, "increase", where)
            row["increase"] = 100 * float(np.mean(inc)) if inc else math.nan
            for key in ("deletion", "insertion", "pointing", "energy", "iou25", "iou50", "coverage"):
                v = self._of(m, key, where)
                row[key] = float(np.mean(v)) if v else math.nan
            rows.append(row)
        return rows

    def win_matrix(self) -> list[list[float]]:
        """``W[i][j]`` = Win % of method i over method j (share of images where i's relative drop
        ``max(0, Y − O)/Y`` is smaller by more than 1e-6; ties count for neither)."""
        if "faithfulness" not in self.groups:
            raise MetricUnavailableError("Win % needs the 'faithfulness' metrics")
        drops = {m: {r["image"]: r["drop"] for r in self.records if r["method"] == m}
                 for m in self.methods}
        out = []
        for a in self.methods:
            row = []
            for b in self.methods:
                common = sorted(set(drops[a]) & set(drops[b]))
                if a == b or not common:
                    row.append(math.nan)
                    continue
                win, _, _ = M.win_percent(torch.tensor([drops[a][i] for i in common]),
                                          torch.tensor([drops[b][i] for i in common]))
                row.append(win)
            out.append(row)
        return out

    def by_instances(self, key: str = "coverage") -> dict[int, dict[str, float]]:
        """``{n_instances: {method: mean key}}`` for images with known instance counts."""
        counts = sorted({r["n_instances"] for r in self.records if r.get("n_instances")})
        out: dict[int, dict[str, float]] = {}
        for n in counts:
            out[n] = {}
            for m in self.methods:
                v = self._of(m, key, lambda r, n=n: r.get("n_instances") == n)
                out[n][m] = float(np.mean(v)) if v else math.nan
        return out

    # ---- output ---------------------------------------------------------------------------
    def _present_columns(self) -> list[tuple[str, str, bool]]:
        have = {k for g in self.groups for k in METRIC_GROUPS[g]}
        need = {"average_drop": "drop", "increase": "increase"}
        return [c for c in COLUMNS if need.get(c[0], c[0]) in have]

    def markdown(self, digits: int = 3) -> str:
        """The summary table (best value per column in bold), Win % and instance-count tables."""
        from lamcam._files import md_table

        cols = self._present_columns()
        rows = self.summary()
        best = {}
        for key, _, higher in cols:
            vals = [r[key] for r in rows if not math.isnan(r[key])]
            if vals:
                best[key] = max(vals) if higher else min(vals)
        body = []
        for r in rows:
            cells: list[Any] = [r["method"], r["n"]]
            for key, _, _ in cols:
                v = r[key]
                d = 1 if key in ("average_drop", "increase") else digits
                s = "n/a" if math.isnan(v) else f"{v:.{d}f}"
                top = key in best and s == f"{best[key]:.{d}f}" and len(rows) > 1
                cells.append(f"**{s}**" if top else s)
            body.append(cells)
        text = md_table(["method", "N"] + [h for _, h, _ in cols], body)
        if "faithfulness" in self.groups and len(self.methods) > 1:
            w = self.win_matrix()
            text += "\nWin % (row method's relative drop smaller than column method's; ties count "
            text += "for neither):\n\n"
            text += md_table(["", *self.methods],
                             [[a, *(math.nan if math.isnan(v) else v for v in w[i])]
                              for i, a in enumerate(self.methods)], digits=1)
        if "localisation" in self.groups and self.by_instances():
            for key, title in (("coverage", "Instance coverage"), ("energy", "Energy pointing game")):
                tab = self.by_instances(key)
                text += f"\n{title} by number of instances in the image:\n\n"
                ns = sorted(tab)
                counts = {n: sum(1 for r in self.records if r["method"] == self.methods[0]
                                 and r.get("n_instances") == n) for n in ns}
                text += md_table(["method", *(f"{n} (N={counts[n]})" for n in ns)],
                                 [[m, *(tab[n][m] for n in ns)] for m in self.methods], digits)
        return text

    def csv(self) -> tuple[str, str]:
        """``(per-image CSV, summary CSV)`` text."""
        from lamcam._files import csv_text

        keys = ["method", "image", "target", "n_instances"] + [
            k for g in self.groups for k in METRIC_GROUPS[g]]
        per_image = csv_text(keys, ([r.get(k) for k in keys] for r in self.records))
        cols = ["method", "n"] + [k for k, _, _ in self._present_columns()]
        summary = csv_text(cols, ([r[k] for k in cols] for r in self.summary()))
        return per_image, summary

    def figures(self) -> dict[str, Any]:
        """Matplotlib figures by file name: metric bars, deletion/insertion curves, coverage by
        instance count (only those the evaluated groups support)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        figs: dict[str, Any] = {}
        cols = self._present_columns()
        rows = self.summary()
        if cols:
            fig, axes = plt.subplots(1, len(cols), figsize=(2.3 * len(cols), 2.8), squeeze=False)
            colors = plt.get_cmap("tab10")(np.arange(len(rows)) % 10)
            for ax, (key, head, _) in zip(axes[0], cols, strict=True):
                ax.bar(range(len(rows)), [r[key] for r in rows], color=colors)
                ax.set_title(head, fontsize=9)
                ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=60, fontsize=7,
                              ha="right")
                ax.tick_params(axis="y", labelsize=7)
            fig.tight_layout()
            figs["metrics.png"] = fig
        if self.curves:
            fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
            for m, (dc, ic) in self.curves.items():
                x = np.linspace(0, 1, len(dc))
                axes[0].plot(x, dc, label=m)
                axes[1].plot(x, ic, label=m)
            axes[0].set(title="Deletion (lower is better)", xlabel="fraction of pixels removed",
                        ylabel="p(target)")
            axes[1].set(title="Insertion (higher is better)", xlabel="fraction of pixels inserted")
            axes[1].legend(fontsize=7)
            fig.tight_layout()
            figs["deletion_insertion.png"] = fig
        tab = self.by_instances("coverage") if "localisation" in self.groups else {}
        if len(tab) > 1:
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            ns = sorted(tab)
            for m in self.methods:
                ax.plot(ns, [tab[n][m] for n in ns], marker="o", label=m)
            ax.set(xlabel="instances in the image", ylabel="instance coverage", xticks=ns,
                   title="Share of instances holding a map peak")
            ax.legend(fontsize=7)
            fig.tight_layout()
            figs["coverage_by_instances.png"] = fig
        return figs

    def write(self, out_dir: str | os.PathLike, title: str = "lamcam eval") -> list[Path]:
        """Write ``summary.md``, ``summary.csv``, ``per_image.csv`` and the figures to ``out_dir``
        (each file atomically). Returns the paths written."""
        from lamcam._files import atomic_write_bytes, atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        per_image, summary = self.csv()
        figs = self.figures()
        md = f"# {title}\n\n" + _config_text(self) + "\n" + self.markdown()
        md += "".join(f"\n![{n}]({n})\n" for n in figs)
        paths = [atomic_write_text(out / "summary.md", md), atomic_write_text(out / "summary.csv", summary),
                 atomic_write_text(out / "per_image.csv", per_image)]
        import io

        import matplotlib.pyplot as plt

        for name, fig in figs.items():
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            paths.append(atomic_write_bytes(out / name, buf.getvalue()))
        return paths


def _config_text(ev: Evaluation) -> str:
    items = [f"{k}: {v}" for k, v in ev.config.items()]
    return "Settings — " + "; ".join(items) + f"; input tensor: {ev.input}.\n"


def evaluate(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[str],
    *,
    labels: Tensor | Sequence[int] | None = None,
    instance_masks: Sequence[Tensor | np.ndarray] | None = None,
    layer: Any = None,
    target: str = "pred",
    groups: Iterable[str] | None = None,
    input: str = "raw",
    steps: int = 32,
    substrate: str = "zeros",
    batch_size: int = 16,
    image_ids: Sequence[Any] | None = None,
    progress: bool | None = None,
) -> Evaluation:
    """Score ``methods`` on ``model`` over ``images``.

    Args:
        model: a classifier in eval mode, ``(B, C, H, W) -> (B, classes)``.
        images: ``(N, C, H, W)``, what the model takes.
        methods: keys of :data:`lamcam.METHODS`, e.g. ``["cam", "gradcam", "gradcam++"]``.
        labels: ``(N,)`` true classes (needed for ``target="label"``).
        instance_masks: per image a bool ``(n_i, H, W)`` mask per object instance (needed for
            the localisation metrics; a 2-D mask counts as one instance). Masks of another size
            than the images are compared after resizing the maps (with a warning).
        layer: target layer for CAM methods (None: the last feature map before the head).
        target: "pred" explains the predicted class, "label" the true class.
        groups: metric groups (:data:`METRIC_GROUPS`); default: all those the data supports.
        input: "raw" or "normalised": what ``images`` is (recorded; see SPEC §3).
        steps: deletion/insertion steps; substrate: "zeros" or "blur" for deletion.
        batch_size: images per explanation call.
        image_ids: ids for the records (default 0..N-1).
        progress: show a tqdm bar; ``None`` (default): iff stderr is a terminal.

    Raises:
        MetricUnavailableError: a requested group cannot be computed (localisation without
            masks), or a method cannot explain this model (e.g. CAM without a GAP → linear head).
    """
    n = images.shape[0]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if target not in ("pred", "label"):
        raise ValueError(f"target must be 'pred' or 'label', got {target!r}")
    if target == "label" and labels is None:
        raise ValueError("target='label' needs labels; pass labels= or use target='pred'")
    if labels is not None:
        labels = torch.as_tensor(labels).long()
        if labels.shape != (n,):
            raise ValueError(f"labels must be ({n},), got {tuple(labels.shape)}")
    masks: list[Tensor] | None = None
    if instance_masks is not None:
        if len(instance_masks) != n:
            raise ValueError(f"{len(instance_masks)} masks for {n} images")
        masks = []
        for i, mk in enumerate(instance_masks):
            t = torch.as_tensor(np.asarray(mk)).bool()
            t = t[None] if t.ndim == 2 else t
            if t.ndim != 3 or not bool(t.any()):
                raise ValueError(f"mask of image {i} is empty or not (n, H, W): an image without an "
                                 "object has no localisation score; leave it out")
            masks.append(t)
    all_groups = list(METRIC_GROUPS)
    if groups is None:
        groups = [g for g in all_groups if g != "localisation" or masks is not None]
    groups = list(groups)
    for g in groups:
        if g not in METRIC_GROUPS:
            raise ValueError(f"unknown metric group {g!r}; choose from {all_groups}")
    if "localisation" in groups and masks is None:
        raise MetricUnavailableError(
            "the localisation metrics need ground-truth instance masks; pass instance_masks= "
            "(lamcam eval: --shapes N generates images with masks, or put <image>_mask.png beside "
            "the images) or leave 'localisation' out")
    ids = list(range(n)) if image_ids is None else list(image_ids)
    explainers = {}
    for m in methods:
        try:
            explainers[m] = make_explainer(m, model, layer)
            if hasattr(explainers[m], "progress"):  # Score-/Ablation-CAM: eval's bar counts maps
                explainers[m].progress = False
            explainers[m](images[:1])  # fail early, before the long loop
        except (ValueError, TypeError, RuntimeError) as e:
            raise MetricUnavailableError(f"method {m!r} cannot explain this model: {e}") from e

    records: list[dict[str, Any]] = []
    curves: dict[str, list[list[Tensor]]] = {m: [[], []] for m in methods}
    total = n * len(methods)
    with tqdm(total=total, desc="eval", unit="map", disable=not show(progress)) as bar:
        for s in range(0, n, batch_size):
            x = images[s:s + batch_size]
            with torch.no_grad():
                pred = model(x).argmax(1)
            t = pred if target == "pred" else labels[s:s + batch_size]
            for m in methods:
                res = explainers[m](x, target=t)
                sal = method_saliency(res).float()
                recs = [{"method": m, "image": ids[s + i], "target": int(t[i]),
                         "n_instances": int(masks[s + i].shape[0]) if masks is not None else None}
                        for i in range(x.shape[0])]
                if "faithfulness" in groups:
                    cs = M.confidence_scores(model, x, sal.clamp(0, 1), t, input=input)
                    for i, r in enumerate(recs):
                        y, o = float(cs.y[i]), float(cs.o[i])
                        r.update(y=y, o=o, drop=max(0.0, y - o) / y if y > 0 else 0.0, increase=float(y < o))
                if "deletion" in groups:
                    d, ins, dc, ic = M.deletion_insertion(model, x, sal, t, steps=steps, substrate=substrate,
                                                          return_curves=True)
                    curves[m][0].append(dc)
                    curves[m][1].append(ic)
                    for i, r in enumerate(recs):
                        r.update(deletion=float(d[i]), insertion=float(ins[i]))
                if "localisation" in groups:
                    assert masks is not None
                    for i, r in enumerate(recs):
                        mk = masks[s + i]
                        mp = sal[i]
                        r.update(pointing=float(M.pointing_game(mp, mk)),
                                 energy=M.energy_pointing_game(mp, mk), iou25=M.iou_at(mp, mk, 0.25),
                                 iou50=M.iou_at(mp, mk, 0.5),
                                 coverage=M.instance_coverage(mp, mk))
                records.extend(recs)
                bar.update(x.shape[0])
    mean_curves = {m: (torch.cat(c[0]).mean(0).tolist(), torch.cat(c[1]).mean(0).tolist())
                   for m, c in curves.items() if c[0]}
    config = {"methods": ", ".join(methods), "images": n, "target": target,
              "layer": layer if isinstance(layer, str) or layer is None else repr(layer)}
    if "deletion" in groups:
        config.update(steps=steps, substrate=substrate)
    return Evaluation(records, list(methods), groups, input, mean_curves, config)
