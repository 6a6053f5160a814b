"""``lamcam demo``: every bundled sample through every bundled classifier and CAM method.

The demo is a list of *report builders*. Each builder runs one kind of study, writes its figures
under the output directory and returns :class:`~lamcam.viz.report.Section` objects plus
one-line summaries; :func:`run_demo` concatenates the sections into ``index.html``. The CAM
study is :func:`classifier_sections`; a LAM (super-resolution) study is meant to be added as a
further builder with the same shape and appended in :func:`run_demo`.

Output layout::

    <out>/index.html                    report (relative links only)
    <out>/<model>/<sample-stem>.png     one figure per (model, image): input + 7 methods
    <out>/thumbs/                       downscaled copies shown in the report

Example:
    >>> from lamcam.demo import run_demo                       # doctest: +SKIP
    >>> print(run_demo("lamcam-out", models=["shapes_vgg"]).format())   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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
    "run_demo",
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


def _explainer(method: str, model: torch.nn.Module, layer: str | None) -> Any:
    import inspect

    import lamcam

    cls = lamcam.METHODS[method]
    try:
        takes_layer = "layer" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes_layer = True
    return cls(model, layer=layer) if takes_layer else cls(model)


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
        for name in models:
            t0 = time.perf_counter()
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
                results[m] = _explainer(m, model, layer)(x, target=None)
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
                caption = (
                    f"{s.path.name}\ntrue: {s.truth_text()}\n"
                    f"pred: {cname(p_cls)} (p={float(probs[b, p_cls]):.3f})"
                )
                status = None if ok is None else ("ok" if ok else "bad")
                images.append(ReportImage(fig_path.relative_to(out_dir), caption, status))
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
                "CAM-family panels show the [0, 1] map over the image (jet, alpha 0.5); "
                "guided panels show the signed input gradient (mean-centred, std-scaled, "
                "grey = 0). Boxes on the input: ground-truth instances. Green frame: correct "
                "prediction, red: wrong. Click a figure for full size.\n\n"
                "Caveat: Guided Backprop and the guided Grad-CAM variants fail the "
                "model-randomisation sanity check (Adebayo et al., 2018); their fine detail "
                "largely reflects image edges rather than what the weights learned."
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


def run_demo(
    out_dir: str | os.PathLike = "lamcam-out",
    models: Sequence[str] | None = None,
    max_images: int | None = None,
    methods: Sequence[str] = DEMO_METHODS,
    progress: bool | None = None,
) -> DemoSummary:
    """Run the whole demo and write ``<out_dir>/index.html``.

    Args:
        out_dir: output directory (created).
        models: classifier names (default: every bundled classifier, :func:`default_models`).
        max_images: use only the first N bundled samples.
        methods: CAM methods per figure (default: all seven).
        progress: tqdm progress bar (``None``: when stderr is a terminal).

    Returns:
        :class:`DemoSummary`; ``summary.format()`` is the printed summary.
    """
    from lamcam import __version__

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = list(default_models() if models is None else models)
    samples = load_samples()
    if max_images is not None:
        samples = samples[:max_images]
    if not samples:
        raise ValueError("no sample images found (lamcam.zoo.samples() is empty)")

    sections, summaries = classifier_sections(out, models, samples, methods, progress)
    # Further studies (e.g. LAM for super-resolution models) append their sections here.
    index = write_index_html(
        out,
        [_overview(summaries, methods), *sections],
        title="lamcam demo",
        subtitle=(
            f"lamcam {__version__} · torch {torch.__version__} · {len(samples)} sample images · "
            f"{len(models)} model(s)"
        ),
    )
    return DemoSummary(out, index, summaries, time.perf_counter() - t0)
