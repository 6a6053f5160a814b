"""``lamcam demo``: the CAM family on the bundled classifiers, LAM on the bundled SR models.

The demo is a list of *report builders*. Each builder runs one kind of study, writes its figures
under the output directory and returns :class:`~lamcam.viz.report.Section` objects plus
one-line summaries; :func:`run_demo` concatenates the sections into ``index.html``. The CAM
study is :func:`classifier_sections` (every bundled sample through every classifier and CAM
method); the LAM study is :func:`lam_sections` (every super-resolution model explained on the
same window of a bundled SR sample, with a comparison figure and a DI/PSNR table).

Output layout::

    <out>/index.html                         report (relative links only)
    <out>/<model>/<sample-stem>.png          one figure per (classifier, image): input + 7 methods
    <out>/lam/<sample>_<model>_lam.png       the LAM panel of each SR model
    <out>/lam/<sample>_lam_comparison.png    all SR models on the same window, DI bar chart
    <out>/thumbs/                            downscaled copies shown in the report
    <out>/.lamcam-demo-manifest.json         the files the last run wrote (see below)

Re-running into the same folder refreshes it: every file the previous run listed in the
manifest and the new run did not write again is deleted (stale figures of a model or sample
no longer shown); files the demo did not write are never touched. Progress: one line per step
on stderr (``progress=False``: none), plus a bar when stderr is a terminal.

Example:
    >>> from lamcam.demo import run_demo                       # doctest: +SKIP
    >>> print(run_demo("lamcam-out", models=["shapes_vgg"]).format())   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lamcam.cam import make_explainer
from lamcam.viz.report import ReportImage, Section, write_index_html

__all__ = [
    "DEMO_METHODS",
    "METHOD_TITLES",
    "DEFAULT_MODELS",
    "SampleInfo",
    "ModelSummary",
    "DemoSummary",
    "load_samples",
    "default_models",
    "classifier_sections",
    "default_sr_models",
    "pick_lam_window",
    "psnr_y",
    "lam_sections",
    "run_demo",
    "refresh_outputs",
    "MANIFEST",
]

#: Methods shown in every demo figure, in display order.
DEMO_METHODS: tuple[str, ...] = (
    "cam",
    "gradcam",
    "gradcam++",
    "gradcam++softmax",
    "guided-backprop",
    "guided-gradcam",
    "guided-gradcam++",
)

#: Human-readable panel titles.
METHOD_TITLES: dict[str, str] = {
    "cam": "CAM",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "gradcam++softmax": "Grad-CAM++ (softmax)",
    "guided-backprop": "Guided Backprop",
    "guided-gradcam": "Guided Grad-CAM",
    "guided-gradcam++": "Guided Grad-CAM++",
    "hirescam": "HiResCAM",
    "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM",
    "scorecam": "Score-CAM",
    "ablationcam": "Ablation-CAM",
    "eigencam": "Eigen-CAM",
}

#: Bundled classifiers used when no model list is given.
DEFAULT_MODELS: tuple[str, ...] = ("shapes_vgg", "shapes_resnet")


@dataclass
class SampleInfo:
    """A sample image and its ground truth (from ``samples.json`` when available)."""

    path: Path
    label: int | None = None
    class_name: str | None = None
    instances: int | None = None
    boxes: list[list[float]] | None = None

    def truth_text(self) -> str:
        """``"circle x2"``-style ground-truth caption, or ``"unknown"``.

        Example:
            >>> SampleInfo(Path("a.png"), 0, "circle", 2).truth_text()
            'circle (2 instances)'
        """
        if self.class_name is None and self.label is None:
            return "unknown"
        name = self.class_name if self.class_name is not None else f"class {self.label}"
        if self.instances is None:
            return name
        return f"{name} ({self.instances} instance{'s' if self.instances != 1 else ''})"


@dataclass
class ModelSummary:
    """Outcome of the CAM study for one model."""

    model: str
    n_images: int
    n_correct: int | None
    seconds: float
    layer: str
    figures: list[Path] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        """Fraction of samples classified correctly (``None`` without ground truth)."""
        if self.n_correct is None or self.n_images == 0:
            return None
        return self.n_correct / self.n_images

    def format(self) -> str:
        """One summary line.

        Example:
            >>> ModelSummary("m", 4, 3, 1.25, "layer3").format()
            'm: accuracy 3/4 (75%) on the samples, layer layer3, 1.2 s'
        """
        acc = (
            "no ground truth"
            if self.accuracy is None
            else f"accuracy {self.n_correct}/{self.n_images} ({100 * self.accuracy:.0f}%)"
        )
        return f"{self.model}: {acc} on the samples, layer {self.layer}, {self.seconds:.1f} s"


@dataclass
class DemoSummary:
    """Everything :func:`run_demo` produced."""

    out_dir: Path
    index: Path
    models: list[ModelSummary]
    seconds: float
    lines: list[str] = field(default_factory=list)

    def format(self) -> str:
        """The short printed summary: one line per model, total time, report location."""
        out = [s.format() for s in self.models] + list(self.lines)
        out.append(f"total {self.seconds:.1f} s; report: {self.index}")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------
# samples
# --------------------------------------------------------------------------------------------


MANIFEST = ".lamcam-demo-manifest.json"


def _say(progress: bool | None, msg: str) -> None:
    """One progress line on stderr (unless ``progress`` is False); above a running bar, if any."""
    if progress is not False:
        from tqdm.auto import tqdm

        tqdm.write(f"lamcam demo: {msg}", file=sys.stderr)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative posix path: (inode, mtime_ns)}`` of the files under ``root``."""
    ids: dict[str, tuple[int, int]] = {}
    if root.is_dir():
        for p in root.rglob("*"):
            try:
                if p.is_file() and not p.is_symlink():
                    st = p.stat()
                    ids[p.relative_to(root).as_posix()] = (st.st_ino, st.st_mtime_ns)
            except OSError:
                continue
    return ids


def _read_manifest(root: Path) -> list[str]:
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        files = data.get("files", []) if isinstance(data, dict) else []
        return [f for f in files if isinstance(f, str)]
    except (OSError, ValueError):
        return []


def refresh_outputs(root: str | os.PathLike, before: Mapping[str, tuple[int, int]]) -> list[str]:
    """Record what this run wrote and delete what the previous run wrote and this one did not.

    Written by this run = files under ``root`` that are new or replaced since the ``before``
    snapshot (every lamcam writer renames a new file over the old one, so a rewritten file has a
    new inode). Deleted = paths listed in the previous manifest, not written now, that still are
    plain files inside ``root``; directories emptied by that are removed too. Files that no
    manifest lists (the user's) are never touched.

    Returns:
        The deleted paths (relative, posix).
    """
    root = Path(root)
    old = _read_manifest(root)
    now = _snapshot(root)
    written = sorted(k for k, v in now.items() if before.get(k) != v and k != MANIFEST)
    keep = set(written)
    base = root.resolve()
    removed: list[str] = []
    for rel in old:
        if rel in keep or rel == MANIFEST:
            continue
        path = root / rel
        try:
            resolved = path.resolve()
            if base not in resolved.parents or path.is_symlink() or not path.is_file():
                continue
            path.unlink()
            removed.append(rel)
        except OSError:
            continue
        parent = path.parent
        while parent.resolve() != base:
            try:
                parent.rmdir()  # only if empty
            except OSError:
                break
            parent = parent.parent
    from lamcam._files import atomic_write_text

    atomic_write_text(root / MANIFEST, json.dumps({"tool": "lamcam demo", "files": written},
                                                  indent=1) + "\n")
    return removed


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def load_samples(paths: Sequence[Path] | None = None) -> list[SampleInfo]:
    """Bundled sample images with their ground truth.

    Args:
        paths: image paths (default: ``lamcam.zoo.samples()``). Ground truth is read from a
            ``samples.json`` beside them, either ``{file_name: {...}}`` or a list of
            ``{"file": ..., ...}`` entries with keys ``label``, ``class`` and ``instances``
            (a few spellings are accepted); missing entries leave the fields ``None``.

    Returns:
        One :class:`SampleInfo` per path, in the given order.
    """
    if paths is None:
        from lamcam import zoo

        paths = zoo.samples()
    paths = [Path(p) for p in paths]
    meta: dict[str, dict[str, Any]] = {}
    for json_path in sorted({p.parent / "samples.json" for p in paths}):
        if not json_path.is_file():
            continue
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            warnings.warn(f"cannot read {json_path}: {e}; no ground truth", stacklevel=2)
            continue
        if isinstance(data, dict) and isinstance(data.get("samples"), list | dict):
            data = data["samples"]
        entries = (
            [{"file": k, **v} for k, v in data.items() if isinstance(v, dict)]
            if isinstance(data, dict)
            else [e for e in data if isinstance(e, dict)]
        )
        for e in entries:
            name = _first(e, "file", "filename", "path", "name")
            if name is not None:
                meta[str(json_path.parent / Path(str(name)).name)] = e
    out = []
    for p in paths:
        e = meta.get(str(p), {})
        label = _first(e, "label", "class_index", "target")
        cname = _first(e, "class", "class_name", "label_name")
        count = _first(e, "instances", "n_instances", "instance_count", "count")
        boxes = e.get("boxes")
        if not (
            isinstance(boxes, list) and all(isinstance(b, list) and len(b) == 4 for b in boxes)
        ):
            boxes = None
        out.append(
            SampleInfo(
                p,
                int(label) if label is not None else None,
                str(cname) if cname is not None else None,
                int(count) if count is not None else None,
                boxes,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# the CAM study
# --------------------------------------------------------------------------------------------


def classifier_sections(
    out_dir: str | os.PathLike,
    models: Sequence[str] = DEFAULT_MODELS,
    samples: Sequence[SampleInfo] | None = None,
    methods: Sequence[str] = DEMO_METHODS,
    progress: bool | None = None,
) -> tuple[list[Section], list[ModelSummary]]:
    """Run ``methods`` on ``samples`` for each classifier and write one figure per (model, image).

    Every method explains the model's predicted class. Images are resized to the model's
    ``input_size`` if needed.

    Args:
        out_dir: report directory; figures go to ``<out_dir>/<model>/<stem>.png``.
        models: bundled model names or checkpoint paths (``lamcam.zoo.load``).
        samples: images with ground truth (default: :func:`load_samples`).
        methods: keys of ``lamcam.METHODS``.
        progress: tqdm progress bar (``None``: only when stderr is a terminal).

    Returns:
        ``(sections, summaries)``: one report section and one :class:`ModelSummary` per model.
    """
    from tqdm.auto import tqdm

    from lamcam import zoo
    from lamcam.io import load_image
    from lamcam.viz.overlay import methods_figure

    out_dir = Path(out_dir)
    samples = list(load_samples() if samples is None else samples)
    sections: list[Section] = []
    summaries: list[ModelSummary] = []
    disable = None if progress is None else not progress
    bar = tqdm(
        total=len(models) * (len(methods) + len(samples)),
        desc="demo",
        unit="step",
        disable=disable,
        leave=False,
    )
    try:
        for k_model, name in enumerate(models, 1):
            t0 = time.perf_counter()
            _say(progress, f"[CAM {k_model}/{len(models)}] {name}: {len(methods)} methods on "
                 f"{len(samples)} image(s)")
            bar.set_description(f"{name}: loading")
            model = zoo.load(name)
            meta = dict(getattr(model, "lamcam_meta", {}) or {})
            model_name = str(meta.get("name", name))
            classes = list(meta.get("classes") or [])
            layer = meta.get("default_layer")
            size = meta.get("input_size")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # resizing notes are expected for the demo
                x = torch.stack([load_image(s.path, size=size) for s in samples])

            results: dict[str, Any] = {}
            for m in methods:
                bar.set_description(f"{model_name}: {m}")
                results[m] = make_explainer(m, model, layer)(x, target=None)
                bar.update(1)
            first = results[methods[0]]
            probs = torch.softmax(first.logits.float(), dim=1)
            pred = probs.argmax(dim=1)
            layer_name = ", ".join(first.layer_names) or str(layer)

            def cname(i: int, classes: list[str] = classes) -> str:
                return classes[i] if 0 <= i < len(classes) else f"class {i}"

            images: list[ReportImage] = []
            figures: list[Path] = []
            n_correct = 0
            have_truth = all(s.label is not None for s in samples)
            for b, s in enumerate(samples):
                bar.set_description(f"{model_name}: figures")
                p_cls = int(pred[b])
                ok = s.label == p_cls if s.label is not None else None
                n_correct += int(bool(ok))
                verdict = "" if ok is None else ("  [correct]" if ok else "  [WRONG]")
                title = (
                    f"{model_name} · {s.path.name} · true: {s.truth_text()} · "
                    f"pred: {cname(p_cls)} (p={float(probs[b, p_cls]):.2f}){verdict}"
                )
                panels = {
                    METHOD_TITLES.get(m, m): (results[m].kind, results[m].maps[b]) for m in methods
                }
                fig_path = out_dir / _safe(model_name) / f"{s.path.stem}.png"
                if b == 0:
                    _say(progress, f"[CAM {k_model}/{len(models)}] {model_name}: writing "
                         f"{len(samples)} figure(s)")
                methods_figure(
                    x[b],
                    panels,
                    title,
                    fig_path,
                    image_title="input + true boxes" if s.boxes else "input",
                    boxes=_scaled_boxes(s, tuple(x.shape[-2:])),
                    title_color="black" if ok in (True, None) else "#b00000",
                )
                figures.append(fig_path)
                status = None if ok is None else ("ok" if ok else "bad")
                # no caption: the figure's title already names the file, truth and prediction
                images.append(ReportImage(fig_path.relative_to(out_dir), "", status, alt=title))
                bar.update(1)
            seconds = time.perf_counter() - t0
            summary = ModelSummary(
                model_name,
                len(samples),
                n_correct if have_truth else None,
                seconds,
                layer_name,
                figures,
            )
            summaries.append(summary)
            arch = meta.get("arch", "?")
            text = (
                f"Architecture {arch}, explained layer {layer_name}, input "
                f"{tuple(x.shape[1:])}. Every method explains the predicted class. "
                f"{summary.format()}.\n\n"
                "CAM-family panels show the [0, 1] map over the image (turbo, alpha 0.5); "
                "guided panels show the signed input gradient (mean-centred, std-scaled, "
                "grey = 0). Boxes on the input: ground-truth instances. Green frame: correct "
                "prediction, red: wrong. Click a figure for full size.\n\n"
                "Caveat: only CAM and Grad-CAM pass the model-randomisation sanity check "
                "(Adebayo et al., 2018) on both bundled classifiers. Grad-CAM++ (the CLI's "
                "default) and its softmax variant fail it on these conv -> GAP -> linear heads: "
                "their maps barely change when the head is randomised. Guided Backprop and "
                "Guided Grad-CAM++ fail it on both models, Guided Grad-CAM on shapes_vgg; their "
                "fine detail largely reflects image edges rather than what the weights learned "
                "(docs/results.md, study b)."
            )
            sections.append(Section(f"{model_name}: CAM-family methods", text, images))
    finally:
        bar.close()
    return sections, summaries


def _scaled_boxes(s: SampleInfo, hw: tuple[int, int]) -> list[list[float]] | None:
    """Ground-truth boxes in the pixels of the (possibly resized) model input."""
    if not s.boxes:
        return None
    from PIL import Image

    with Image.open(s.path) as im:
        w0, h0 = im.size
    sx, sy = hw[1] / w0, hw[0] / h0
    return [[x0 * sx, y0 * sy, x1 * sx, y1 * sy] for x0, y0, x1, y1 in s.boxes]


def default_models() -> list[str]:
    """The bundled classifiers (``task == "classification"`` in ``lamcam.zoo``).

    Falls back to :data:`DEFAULT_MODELS` if the registry cannot be queried.
    """
    from lamcam import zoo

    try:
        names = [m for m in zoo.list_models() if zoo.info(m).get("task") == "classification"]
    except Exception:  # noqa: BLE001 - an older/partial zoo: use the documented defaults
        return list(DEFAULT_MODELS)
    if not names:
        return list(DEFAULT_MODELS)
    known = [m for m in DEFAULT_MODELS if m in names]  # documented order first
    return known + [m for m in names if m not in known]


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._-+" else "_" for c in name).strip("._")
    return keep or "model"


def _overview(summaries: Sequence[ModelSummary], methods: Sequence[str]) -> Section:
    rows: list[list[Any]] = [["model", "layer", "samples", "accuracy", "time (s)"]]
    for s in summaries:
        acc = "-" if s.accuracy is None else f"{s.n_correct}/{s.n_images} ({100 * s.accuracy:.0f}%)"
        rows.append([s.model, s.layer, s.n_images, acc, f"{s.seconds:.1f}"])
    text = (
        "Each figure shows a sample image and the maps of "
        + ", ".join(METHOD_TITLES.get(m, m) for m in methods)
        + " for the model's predicted class."
    )
    return Section("Overview", text, [], rows)


# --------------------------------------------------------------------------------------------
# the LAM study (super-resolution zoo)
# --------------------------------------------------------------------------------------------

#: Task names that mark a registered model as super-resolution.
SR_TASKS: tuple[str, ...] = ("sr", "super_resolution", "super-resolution")

#: Window side (SR pixels) and path steps of the demo's LAM runs: the paper's defaults.
LAM_WINDOW = 16
LAM_STEPS = 50


def _task(name: str) -> str | None:
    from lamcam import zoo

    try:
        return zoo.info(name).get("task")
    except Exception:  # noqa: BLE001 - a checkpoint path or a stand-in: not a registered name
        return None


def default_sr_models() -> list[str]:
    """The bundled super-resolution models (task ``"sr"``) whose weights are installed.

    Ordered plain CNN → attention (FSRCNN, EDSR, RCAN, SwinIR) when those are present; ``[]``
    if there is none.

    Example:
        >>> isinstance(default_sr_models(), list)
        True
    """
    from lamcam import zoo

    try:
        names = list(zoo.list_models(task="sr"))  # type: ignore[call-arg]
    except TypeError:  # a registry without the task filter
        names = [m for m in zoo.list_models() if _task(m) in SR_TASKS]
    except Exception:  # noqa: BLE001 - no usable registry: no SR study
        return []
    def available(name: str) -> bool:
        try:
            return bool(zoo.info(name).get("available", True))
        except Exception:  # noqa: BLE001
            return False

    names = [m for m in names if available(m)]  # registered but weights not (yet) shipped: skip
    order = ("sr_fsrcnn", "sr_edsr", "sr_rcan", "sr_swinir")  # plain CNN -> attention
    return [m for m in order if m in names] + sorted(m for m in names if m not in order)


def pick_lam_window(reference: torch.Tensor, scale: int, window: int = LAM_WINDOW,
                    ) -> tuple[int, int]:
    """The demo's window: the most textured ``window``² SR patch in the central half of the image.

    Among the windows whose top-left corner lies on the LR grid (a multiple of ``scale``) and
    that fit inside the central half of the image (so that the context around them is visible),
    the one with the largest summed edge strength of ``reference`` — LAM's gradient detector
    ``sqrt(dy² + dx²)`` summed over channels — wins (ties: the first in row-major order). With
    the HR image as reference this picks a patch with real detail to reconstruct, the kind the
    paper explains; it is computed once from the bundled sample, so the demo is deterministic.

    Args:
        reference: ``(C, sH, sW)`` image at SR resolution (the HR image, or the bicubic LR).
        scale: the SR factor.
        window: window side in SR pixels.

    Returns:
        ``(row, col)`` of the window's top-left corner in SR pixels.

    Example:
        >>> ref = torch.zeros(3, 64, 64); ref[:, 36:40, 20:44] = 1.0   # a bright bar
        >>> pick_lam_window(ref, scale=4, window=8)    # its bottom-right corner: most edges
        (32, 36)
    """
    g = torch.sqrt((reference[:, :-1, :-1] - reference[:, 1:, :-1]) ** 2
                   + (reference[:, :-1, :-1] - reference[:, :-1, 1:]) ** 2).sum(0).double()
    g = torch.nn.functional.pad(g, (0, 1, 0, 1))
    h, w = g.shape
    if window > min(h, w):
        raise ValueError(f"the window ({window}) is larger than the image ({h}x{w})")
    c = torch.nn.functional.pad(g.cumsum(0).cumsum(1), (1, 0, 1, 0))
    energy = c[window:, window:] - c[:-window, window:] - c[window:, :-window] + c[:-window, :-window]

    def span(n: int) -> list[int]:
        lo, hi = n // 4, 3 * n // 4 - window
        lo = -(-lo // scale) * scale
        cand = list(range(lo, hi + 1, scale))
        return cand or [max(0, (n - window) // 2 // scale * scale)]

    rows, cols = span(h), span(w)
    sub = energy[rows][:, cols]
    k = int(torch.argmax(sub))
    return rows[k // len(cols)], cols[k % len(cols)]


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, shave: int) -> float:
    """PSNR (dB) on the Y channel (ITU-R BT.601, 16..235), the SR literature's protocol.

    Both images are clamped to [0, 1] and quantised to 8 bits first; ``shave`` pixels are cropped
    from every border (the scale, by convention). Sizes may differ: the common top-left part is
    compared.

    Example:
        >>> hr = torch.full((3, 16, 16), 0.4)
        >>> round(psnr_y(hr + 10 / 255, hr, shave=2), 2)   # Y differs by 10 · 219/255 levels
        29.45
    """
    h = min(sr.shape[-2], hr.shape[-2])
    w = min(sr.shape[-1], hr.shape[-1])

    def y(x: torch.Tensor) -> torch.Tensor:
        x = (x[:3, :h, :w].detach().double().cpu().clamp(0, 1) * 255).round()
        if x.shape[0] == 1:
            return x[0]
        coef = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64) / 255.0
        return 16.0 + (coef[:, None, None] * x).sum(0)

    d = (y(sr) - y(hr))[shave:h - shave, shave:w - shave]
    mse = float((d**2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def lam_sections(
    out_dir: str | os.PathLike,
    models: Sequence[str] | None = None,
    sample: Mapping[str, Any] | None = None,
    *,
    window: int | None = None,
    steps: int | None = None,
    progress: bool | None = None,
) -> tuple[list[Section], list[str]]:
    """LAM of every SR model on one bundled sample: figures, a comparison and a report section.

    Every model explains the same ``window`` × ``window`` SR window of the first bundled SR
    sample (``lamcam.zoo.sr_samples()[0]``), chosen by :func:`pick_lam_window` on the HR image
    (paper settings: σ 1.2, 9 × 9 kernel, ``steps`` Riemann steps, gradient detector).

    Args:
        out_dir: report directory; figures go to ``<out_dir>/lam/``.
        models: SR model names or checkpoints (default: :func:`default_sr_models`).
        sample: ``{"name", "lr", "hr"}`` (``hr`` optional; default: the first bundled sample).
        window, steps: LAM window side (SR pixels) and path steps (default: :data:`LAM_WINDOW`,
            :data:`LAM_STEPS`).
        progress: tqdm bars (``None``: only when stderr is a terminal).

    Returns:
        ``(sections, lines)``: one "LAM across the SR zoo" section (a note if there is nothing to
        run) and one summary line per model.
    """
    from lamcam import zoo
    from lamcam.io import load_image
    from lamcam.lam import LAM
    from lamcam.viz.lam import lam_comparison_figure

    title = "LAM across the SR zoo"
    window = LAM_WINDOW if window is None else int(window)
    steps = LAM_STEPS if steps is None else int(steps)
    models = list(default_sr_models() if models is None else models)
    if not models:
        note = ("Skipped: no super-resolution models are registered in lamcam.zoo "
                "(lamcam.zoo.list_models(task='sr') is empty).")
        return [Section(title, note)], ["LAM: skipped (no super-resolution models registered)"]
    if sample is None:
        try:
            samples = list(zoo.sr_samples())  # type: ignore[attr-defined]
        except AttributeError:
            samples = []
        if not samples:
            note = "Skipped: no bundled super-resolution sample (lamcam.zoo.sr_samples())."
            return [Section(title, note)], ["LAM: skipped (no SR sample)"]
        sample = samples[0]
    show = sys.stderr.isatty() if progress is None else bool(progress)
    out = Path(out_dir)
    lam_dir = out / "lam"
    lam_dir.mkdir(parents=True, exist_ok=True)
    lr_path = Path(sample["lr"])
    sname = _safe(str(sample.get("name") or lr_path.stem))
    lr = load_image(lr_path)
    hr = load_image(Path(sample["hr"])) if sample.get("hr") else None

    results: dict[str, Any] = {}
    rows: list[list[Any]] = [["model", "architecture", "parameters", "DI", "pixels95",
                              "completeness error", "PSNR-Y (dB)", "time (s)"]]
    lines: list[str] = []
    images: list[ReportImage] = []
    notes: dict[str, str] = {}
    where: tuple[int, int] | None = None
    scale = None
    for k_model, name in enumerate(models, 1):
        t0 = time.perf_counter()
        _say(progress, f"[LAM {k_model}/{len(models)}] {name}: {steps} path steps")
        model = zoo.load(name)
        meta = dict(getattr(model, "lamcam_meta", {}) or {})
        label = str(meta.get("name") or Path(name).stem) if Path(name).is_file() else name
        lam = LAM(model, steps=steps, input_range=float(meta.get("input_range", 1.0)),
                  progress=show)
        if where is None:  # the window is chosen once, from the first model's scale
            scale = lam.scale_of(lr)
            ref = hr if hr is not None and hr.shape[-2:] == (lr.shape[-2] * scale,
                                                            lr.shape[-1] * scale) else None
            if ref is None:
                ref = torch.nn.functional.interpolate(
                    lr[None], scale_factor=scale, mode="bicubic", align_corners=False)[0]
            where = pick_lam_window(ref, scale, window)
        r = lam(lr, where[0], where[1], window)
        seconds = time.perf_counter() - t0
        results[label] = r
        n_params = sum(p.numel() for p in model.parameters())
        s = int(r.params["scale"])
        psnr = psnr_y(r.sr, hr, shave=s) if hr is not None else None
        if psnr is not None:
            notes[label] = f"PSNR {psnr:.2f} dB"
        fig_path = lam_dir / f"{sname}_{_safe(label)}_lam.png"
        r.figure(path=fig_path, title=f"{label}  ·  {lr_path.name}")
        images.append(ReportImage(fig_path.relative_to(out), "",  # title and DI are in the figure
                                  alt=f"{label}: DI {r.diffusion_index:.2f}"))
        ce = r.completeness_error
        rows.append([
            label, meta.get("arch", "?"), f"{n_params / 1e3:.0f} k", f"{r.diffusion_index:.2f}",
            f"{r.pixels95} / {r.map.numel()}", f"{100 * ce:.2g} %" if ce == ce else "n/a",
            "-" if psnr is None else f"{psnr:.2f}", f"{seconds:.1f}",
        ])
        lines.append(f"LAM {label}: DI {r.diffusion_index:.2f}"
                     + ("" if psnr is None else f", PSNR-Y {psnr:.2f} dB")
                     + f", {seconds:.1f} s")
    bicubic_txt = ""
    if hr is not None and scale is not None:
        bic = torch.nn.functional.interpolate(lr[None], scale_factor=scale, mode="bicubic",
                                              align_corners=False)[0]
        bic_psnr = psnr_y(bic, hr, shave=scale)
        rows.append(["bicubic (reference)", "-", "0", "-", "-", "-", f"{bic_psnr:.2f}", "-"])
        bicubic_txt = f" Bicubic upsampling reaches {bic_psnr:.2f} dB on this image."
    cmp_path = lam_dir / f"{sname}_lam_comparison.png"
    lam_comparison_figure(results, cmp_path, title=f"LAM across the SR zoo  ·  {lr_path.name}",
                          notes=notes)
    images.insert(0, ReportImage(cmp_path.relative_to(out), "all models, same window"))
    first = next(iter(results.values()))
    h, w = first.params["lr_size"]
    text = (
        f"Local Attribution Maps (Gu & Dong, CVPR 2021) of every super-resolution model for the "
        f"same {window}×{window} window of the SR output of {lr_path.name} (LR {h}×{w}, ×{scale}) "
        f"at SR (row {where[0]}, col {where[1]}) — red box — the most textured window of the "
        f"central half of the {'HR' if hr is not None else 'bicubic-upsampled LR'} image. "
        f"Paper settings: blur path σ 1.2, 9×9 kernel, {steps} steps, gradient-detector "
        "objective.\n\n"
        "DI (Diffusion Index) = (1 − Gini) × 100 of the LAM map over all LR pixels: the higher, "
        "the wider the range of LR pixels the network draws on for this window. DI depends on "
        "the LR size, the window and the path settings, so compare it only across models on the "
        "same image and window. pixels95: how many LR pixels hold 95 % of the map's mass; "
        "completeness error: |Σ attribution − (D(F(I)) − D(F(I′)))| relative to the objective "
        "change (the discretisation error of the path integral). PSNR-Y: on this sample (the "
        f"whole {h * scale}×{w * scale} HR crop), BT.601 Y channel, output rounded to 8 bits, "
        f"{scale}-pixel border shaved." + bicubic_txt + "\n\n"
        "The paper reports that attention designs (channel attention with global pooling, "
        "window self-attention) reach higher DI than plain CNNs, and that a higher DI tends to "
        "go with a higher PSNR."
    )
    return [Section(title, text, images, rows)], lines


def run_demo(
    out_dir: str | os.PathLike = "lamcam-out",
    models: Sequence[str] | None = None,
    max_images: int | None = None,
    methods: Sequence[str] = DEMO_METHODS,
    progress: bool | None = None,
    lam: bool = True,
) -> DemoSummary:
    """Run the whole demo and write ``<out_dir>/index.html``.

    Two studies: the CAM family on the classifiers (:func:`classifier_sections`) and LAM on the
    super-resolution models (:func:`lam_sections`).

    Args:
        out_dir: output directory (created).
        models: model names (default: every bundled classifier, :func:`default_models`, and every
            bundled SR model, :func:`default_sr_models`). Registered SR models in the list go to
            the LAM study, everything else to the CAM study.
        max_images: use only the first N bundled (classifier) samples.
        methods: CAM methods per figure (default: all seven).
        progress: tqdm progress bar (``None``: when stderr is a terminal).
        lam: run the LAM study (when there are SR models).

    Returns:
        :class:`DemoSummary`; ``summary.format()`` is the printed summary.
    """
    from lamcam import __version__

    t0 = time.perf_counter()
    out = Path(out_dir)
    before = _snapshot(out)
    out.mkdir(parents=True, exist_ok=True)
    if models is None:
        classifiers, sr_models = default_models(), (default_sr_models() if lam else [])
    else:
        tasks = {m: _task(m) for m in models}
        sr_models = [m for m in models if tasks[m] in SR_TASKS] if lam else []
        classifiers = [m for m in models if tasks[m] not in SR_TASKS]

    sections: list[Section] = []
    summaries: list[ModelSummary] = []
    n_samples = 0
    if classifiers:
        samples = load_samples()
        if max_images is not None:
            samples = samples[:max_images]
        if not samples:
            raise ValueError("no sample images found (lamcam.zoo.samples() is empty)")
        n_samples = len(samples)
        cam_sections, summaries = classifier_sections(out, classifiers, samples, methods,
                                                      progress)
        sections += [_overview(summaries, methods), *cam_sections]
    lines: list[str] = []
    if lam and (models is None or sr_models):
        lam_secs, lines = lam_sections(out, sr_models, progress=progress)
        sections += lam_secs
    _say(progress, "writing index.html")
    index = write_index_html(
        out,
        sections,
        thumb_width=1400,
        title="lamcam demo",
        subtitle=(
            f"lamcam {__version__} · torch {torch.__version__} · {n_samples} classifier sample "
            f"images · {len(classifiers)} classifier(s) · {len(sr_models)} SR model(s) · to click "
            "patches and methods yourself, start the explorer: lamcam serve (pip install "
            "'lamcam[app]'), then open http://127.0.0.1:7860"
        ),
    )
    removed = refresh_outputs(out, before)
    if removed:
        _say(progress, f"removed {len(removed)} stale file(s) of an earlier run: "
             + ", ".join(removed[:4]) + (" ..." if len(removed) > 4 else ""))
    return DemoSummary(out, index, summaries, time.perf_counter() - t0, lines)
