"""The two batch jobs: what an item is, and the rows a worker makes of it.

An *item* is a small JSON-able dict (paths and numbers, never tensors), so that the local engine
and Ray's workers receive exactly the same work; a *worker* is built from the job's
configuration alone (it loads the model itself, once) and turns an item into table rows. Both
engines call the same :meth:`Worker.rows`, so they produce the same rows.

* :class:`CAMJob`: one item per image; one row per method (and per rank with a top-k target):
  target, score, probability, layer, map statistics, and localisation metrics when the image has
  a ``*_mask.png`` ground truth.
* :class:`LAMSurvey`: one item per image × SR model × window; one row each: DI, pixels95,
  completeness error, local PSNR against the HR image when there is one, every parameter.

An item that fails (unreadable image, window off the image...) becomes one row with
``status="failed"`` and the error; the other items go on.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lamcam.batch.inputs import InputEntry

__all__ = ["CAMJob", "LAMSurvey", "Worker", "CAMWorker", "LAMWorker", "SCHEMAS", "make_worker",
           "job_from_config"]

#: Columns of each job's table, in order, with their Arrow types.
SCHEMAS: dict[str, list[tuple[str, str]]] = {
    "cam": [
        ("item_id", "string"), ("image", "string"), ("status", "string"), ("error", "string"),
        ("method", "string"), ("rank", "int64"), ("model", "string"), ("layer", "string"),
        ("target", "string"), ("target_index", "int64"), ("target_class", "string"),
        ("score", "float64"), ("probability", "float64"), ("predicted_index", "int64"),
        ("predicted_class", "string"), ("fit", "string"),
        ("map_mean", "float64"), ("map_std", "float64"), ("map_area50", "float64"),
        ("map_peak_row", "int64"), ("map_peak_col", "int64"),
        ("raw_min", "float64"), ("raw_max", "float64"),
        ("mask", "string"), ("n_instances", "int64"), ("pointing_game", "float64"),
        ("energy_pointing", "float64"), ("iou50", "float64"), ("instance_coverage", "float64"),
        ("localisation_note", "string"),
        ("map_file", "string"), ("overlay_file", "string"), ("seconds", "float64"),
        ("worker", "string"),
    ],
    "lam": [
        ("item_id", "string"), ("image", "string"), ("hr", "string"), ("model", "string"),
        ("status", "string"), ("error", "string"),
        ("row", "int64"), ("col", "int64"), ("window", "int64"), ("window_source", "string"),
        ("edge_energy", "float64"), ("scale", "int64"), ("lr_height", "int64"),
        ("lr_width", "int64"),
        ("diffusion_index", "float64"), ("pixels95", "int64"), ("completeness_error", "float64"),
        ("objective_input", "float64"), ("objective_baseline", "float64"),
        ("local_psnr", "float64"),
        ("sigma", "float64"), ("kernel_size", "int64"), ("steps", "int64"),
        ("quadrature", "string"), ("crop", "string"), ("attribution_file", "string"),
        ("seconds", "float64"), ("worker", "string"),
    ],
}

#: Columns that describe how a row was computed (which process, how long), not what: they differ
#: between runs and engines and are left out when rows are compared.
VOLATILE = ("seconds", "worker")


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _file_sha256(path: str) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stem(item_id: str, image: str) -> str:
    """A file-name-safe, collision-free stem for an item's saved files."""
    import re

    base = re.sub(r"[^A-Za-z0-9.+-]+", "_", Path(image).stem).strip("_") or "image"
    return f"{base}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"


def _error_text(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------


@dataclass
class CAMJob:
    """A CAM-family job over images.

    Attributes:
        inputs: the images (see :func:`lamcam.batch.inputs.find_inputs`).
        model: bundled name or checkpoint path; ``arch`` for a checkpoint without metadata.
        methods: keys of :data:`lamcam.METHODS`.
        layer: the layer(s) (dotted name, comma-separated for fusion); ``None``: the model's
            default.
        target: ``"pred"``, a class index or name, or ``"topK"`` (as ``lamcam cam --target``).
        save_maps, save_overlays: also write each map as ``.npy`` / each overlay as PNG.
    """

    inputs: list[InputEntry]
    model: str
    methods: list[str]
    layer: str | None = None
    target: str = "pred"
    arch: str | None = None
    save_maps: bool = False
    save_overlays: bool = False
    kind: str = field(default="cam", init=False)

    def config(self) -> dict[str, Any]:
        """What determines the rows (hashed to decide whether a rerun may resume)."""
        return {"kind": "cam", "model": self.model, "model_sha256": _file_sha256(self.model),
                "arch": self.arch, "methods": list(self.methods), "layer": self.layer,
                "target": self.target, "save_maps": self.save_maps,
                "save_overlays": self.save_overlays}

    def items(self) -> list[dict[str, Any]]:
        """One item per image."""
        return [{"item_id": e.key, "image": e.image, "mask": e.mask} for e in self.inputs]


@dataclass
class LAMSurvey:
    """LAM over images × SR models × windows.

    Attributes:
        inputs: LR images, with their HR images where known (for the local PSNR and the edge
            criterion).
        models: bundled names or checkpoint paths.
        windows: ``"grid:STRIDE"`` (every STRIDE SR pixels), ``"edges:K"`` (the K highest
            edge-energy windows, non-overlapping: the studies' criterion, on the HR image, else
            on the bicubic-upscaled LR image), or ``"list:r,c;r,c"`` (top-left corners in SR
            pixels).
        window: the window side in SR pixels; ``sigma``, ``steps``, ``quadrature``,
            ``kernel_size``: the blur path (the paper's defaults).
        save_maps: also write each attribution as ``.npy``.
    """

    inputs: list[InputEntry]
    models: list[str]
    windows: str = "edges:4"
    window: int = 16
    sigma: float = 1.2
    steps: int = 50
    quadrature: str = "riemann"
    kernel_size: int = 9
    save_maps: bool = False
    kind: str = field(default="lam", init=False)

    def config(self) -> dict[str, Any]:
        """What determines the rows (hashed to decide whether a rerun may resume)."""
        return {"kind": "lam", "models": list(self.models),
                "models_sha256": [_file_sha256(m) for m in self.models], "windows": self.windows,
                "window": self.window, "sigma": self.sigma, "steps": self.steps,
                "quadrature": self.quadrature, "kernel_size": self.kernel_size,
                "save_maps": self.save_maps}

    def items(self) -> list[dict[str, Any]]:
        """One item per image × model × window (windows are decided here, on the driver)."""
        from lamcam.batch.windows import edge_windows, grid_windows, parse_windows
        from lamcam.io import load_image

        kind, _, arg = self.windows.partition(":")
        scales = self._scales()
        items: list[dict[str, Any]] = []
        for e in self.inputs:
            try:
                from PIL import Image

                with Image.open(e.image) as im:
                    lr_w, lr_h = im.size
            except Exception as err:  # noqa: BLE001 - recorded as the image's failure
                for m in self.models:
                    items.append({"item_id": f"{e.key}|{m}", "image": e.image, "hr": e.hr,
                                  "model": m, "error": _error_text(err)})
                continue
            by_scale: dict[int, list[tuple[int, int, float | None]] | str] = {}
            for m in self.models:
                s = scales[m]
                if s not in by_scale:
                    sr_hw = (lr_h * s, lr_w * s)
                    try:
                        if kind == "grid":
                            by_scale[s] = [(r, c, None) for r, c in
                                           grid_windows(sr_hw, self.window, int(arg))]
                        elif kind == "list":
                            by_scale[s] = [(r, c, None) for r, c in parse_windows(arg)]
                        else:
                            ref = (load_image(e.hr) if e.hr else _upscaled(load_image(e.image), s))
                            by_scale[s] = list(edge_windows(ref, int(arg), self.window, scale=s))
                    except Exception as err:  # noqa: BLE001 - recorded as the image's failure
                        by_scale[s] = _error_text(err)
                wins = by_scale[s]
                if isinstance(wins, str):  # no windows for this image: one failed item per model
                    items.append({"item_id": f"{e.key}|{m}", "image": e.image, "hr": e.hr,
                                  "model": m, "error": wins})
                    continue
                for r, c, en in wins:
                    items.append({"item_id": f"{e.key}|{m}|{r},{c}|{self.window}",
                                  "image": e.image, "hr": e.hr, "model": m, "row": r, "col": c,
                                  "edge_energy": en, "window_source": kind})
        return items

    def _scales(self) -> dict[str, int]:
        """Each model's scale, from one probe on a small input (models are loaded once here)."""
        from lamcam import zoo
        from lamcam.lam import LAM

        out = {}
        for m in self.models:
            model = zoo.load(m)
            meta = zoo.model_meta(model)
            if isinstance(meta.get("scale"), int):
                out[m] = int(meta["scale"])
                continue
            ch = 1 if zoo.input_mode(meta) == "L" else 3
            out[m] = LAM(model, progress=False).scale_of(torch.rand(ch, 32, 32))
        return out


def _upscaled(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic ``scale``× upscale of an LR image, clamped to [0, 1] (the edge criterion's
    stand-in for an HR image)."""
    return torch.nn.functional.interpolate(lr[None], scale_factor=scale, mode="bicubic",
                                           align_corners=False)[0].clamp(0, 1)


def job_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a job's configuration a worker needs (it is built from this alone)."""
    return {k: v for k, v in config.items() if not k.endswith("sha256")}


# --------------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------------


class Worker:
    """Turns items into rows; built from a configuration, so each engine builds its own."""

    kind = ""

    def __init__(self, config: dict[str, Any], out_dir: str) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.name = _worker_name()

    def rows(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows of one item; an exception becomes one failed row (never raised)."""
        t0 = time.perf_counter()
        try:
            if item.get("error"):
                raise _ItemError(item["error"])
            rows = self._rows(item)
        except Exception as e:  # noqa: BLE001 - one failed item must not stop the job
            row = self._failed(item, e)
            row["seconds"] = time.perf_counter() - t0
            return [_complete(self.kind, row)]
        dt = (time.perf_counter() - t0) / max(1, len(rows))
        return [_complete(self.kind, {**r, "status": "ok", "seconds": dt, "worker": self.name})
                for r in rows]

    def _failed(self, item: dict[str, Any], e: BaseException) -> dict[str, Any]:
        keep = {k: item.get(k) for k in ("item_id", "image", "hr", "model", "row", "col")
                if k in dict(SCHEMAS[self.kind])}
        text = str(e) if isinstance(e, _ItemError) else _error_text(e)
        return {**keep, "status": "failed", "error": text, "worker": self.name}

    def _rows(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError


class _ItemError(Exception):
    """An item that was already known to fail when it was listed."""


def _complete(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every column of the schema (missing ones ``None``), NaN stored as ``None``."""
    out = {}
    for name, typ in SCHEMAS[kind]:
        v = row.get(name)
        if isinstance(v, float) and math.isnan(v):
            v = None  # undefined (e.g. a completeness error of a flat window); inf stays
        if v is not None and typ == "int64":
            v = int(v)
        elif v is not None and typ == "float64":
            v = float(v)
        out[name] = v
    return out


class CAMWorker(Worker):
    """Rows of :class:`CAMJob`: the model and its explainers are built once."""

    kind = "cam"

    def __init__(self, config: dict[str, Any], out_dir: str) -> None:
        super().__init__(config, out_dir)
        from lamcam import zoo
        from lamcam.cam import make_explainer
        from lamcam.targets import parse_target

        self.model = zoo.load(config["model"], arch=config.get("arch"))
        self.model.eval()
        meta = zoo.model_meta(self.model)
        self.classes = [str(c) for c in (meta.get("classes") or [])]
        self.hw = zoo.input_hw(meta)
        self.mode = zoo.input_mode(meta)
        layer = config.get("layer") or meta.get("default_layer")
        if isinstance(layer, str) and "," in layer:
            layer = [s.strip() for s in layer.split(",") if s.strip()]
        self.layer = layer
        self.target = parse_target(str(config.get("target", "pred")), self.classes or None)
        self.explainers = {m: make_explainer(m, self.model, layer) for m in config["methods"]}

    def _rows(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        from lamcam._files import atomic_write_many, image_bytes, npy_bytes
        from lamcam.io import load_fitted

        x, fit = load_fitted(item["image"], mode=self.mode, size=self.hw)
        masks, note = self._masks(item, tuple(x.shape[-2:]))
        rows: list[dict[str, Any]] = []
        stem = _stem(item["item_id"], item["image"])
        for method, explainer in self.explainers.items():
            res = explainer(x[None], target=self.target)
            probs = torch.softmax(res.logits.detach().float(), dim=1)[0]
            pred = int(probs.argmax())
            maps = res.maps[0] if res.multi else res.maps[0:1]
            tgts = res.targets[0].reshape(-1).tolist() if res.targets is not None else []
            scores = res.scores[0].reshape(-1).tolist()
            raw = res.raw[0] if isinstance(res.raw, tuple) else res.raw
            raw0 = raw[0].detach().float()
            pics = res.overlay() if self.config.get("save_overlays") else None
            files: dict[Path, bytes] = {}
            for k, (t, s) in enumerate(zip(tgts, scores, strict=True)):
                m = maps[k].detach().float()
                if res.kind == "gradient":  # guided backprop: |Σ_c g|, normalised
                    m = m.sum(0).abs()
                    m = m / m.max() if float(m.max()) > 0 else m
                suffix = f"_top{k + 1}" if len(tgts) > 1 else ""
                base = f"{stem}_{method.replace('++', 'pp')}{suffix}"
                row = {
                    "item_id": item["item_id"], "image": item["image"], "method": method,
                    "rank": k + 1, "model": self.config["model"],
                    "layer": ",".join(res.layer_names) if res.layer_names else None,
                    "target": str(self.config.get("target", "pred")), "target_index": int(t),
                    "target_class": self._class(int(t)), "score": float(s),
                    "probability": float(probs[int(t)]), "predicted_index": pred,
                    "predicted_class": self._class(pred), "fit": fit or None,
                    **_map_stats(m),
                    "raw_min": float(raw0.min()), "raw_max": float(raw0.max()),
                    "mask": item.get("mask"), "localisation_note": note,
                    **_localisation(m, masks),
                }
                if self.config.get("save_maps"):
                    files[self.out_dir / "maps" / f"{base}.npy"] = npy_bytes(
                        maps[k].detach().cpu().float().numpy())
                    row["map_file"] = f"maps/{base}.npy"
                if pics is not None:
                    files[self.out_dir / "overlays" / f"{base}.png"] = image_bytes(pics[k])
                    row["overlay_file"] = f"overlays/{base}.png"
                rows.append(row)
            if files:
                atomic_write_many(files)
        return rows

    def _class(self, idx: int) -> str:
        return self.classes[idx] if 0 <= idx < len(self.classes) else f"class {idx}"

    def _masks(self, item: dict[str, Any], hw: tuple[int, ...]) -> tuple[Any, str | None]:
        """The instance masks at the size the image is explained at, or why there are none."""
        from lamcam.io import ImageLoadError, load_instance_masks

        if not item.get("mask"):
            return None, None
        try:
            masks = load_instance_masks(item["mask"])
        except ImageLoadError as e:
            return None, f"mask not used: {e.reason}"
        if tuple(masks.shape[-2:]) != hw:
            return None, (f"mask not used: it is {masks.shape[-1]}x{masks.shape[-2]} and the image "
                          f"is explained at {hw[1]}x{hw[0]} (masks are never resampled)")
        return masks, None


def _map_stats(m: torch.Tensor) -> dict[str, Any]:
    """Mean, spread, share of pixels at or above half the maximum, and the peak (raster-first)."""
    m = m.double()
    peak = int(m.flatten().argmax())
    return {"map_mean": float(m.mean()), "map_std": float(m.std(unbiased=False)),
            "map_area50": float((m >= 0.5).double().mean()),
            "map_peak_row": peak // m.shape[-1], "map_peak_col": peak % m.shape[-1]}


def _localisation(m: torch.Tensor, masks: Any) -> dict[str, Any]:
    from lamcam.metrics.localisation import (
        energy_pointing_game,
        instance_coverage,
        iou_at,
        pointing_game,
    )

    if masks is None:
        return {}
    union = masks.any(0)
    return {"n_instances": int(masks.shape[0]),
            "pointing_game": float(pointing_game(m, union)),
            "energy_pointing": float(energy_pointing_game(m, union)),
            "iou50": float(iou_at(m, union, 0.5)),
            "instance_coverage": float(instance_coverage(m, masks))}


class LAMWorker(Worker):
    """Rows of :class:`LAMSurvey`: models are loaded on first use and kept; the last image too."""

    kind = "lam"

    def __init__(self, config: dict[str, Any], out_dir: str) -> None:
        super().__init__(config, out_dir)
        self._models: dict[str, Any] = {}
        self._images: dict[tuple[str, str], torch.Tensor] = {}

    def _lam(self, spec: str) -> Any:
        from lamcam import zoo
        from lamcam.lam import LAM

        if spec not in self._models:
            model = zoo.load(spec)
            model.eval()
            meta = zoo.model_meta(model)
            c = self.config
            self._models[spec] = LAM(
                model, sigma=c["sigma"], kernel_size=c["kernel_size"], steps=c["steps"],
                quadrature=c["quadrature"], input_range=float(meta.get("input_range", 1.0)),
                progress=False)
        return self._models[spec]

    def _image(self, path: str, mode: str) -> torch.Tensor:
        from lamcam.io import load_image

        key = (path, mode)
        if key not in self._images:
            if len(self._images) >= 4:
                self._images.clear()
            self._images[key] = load_image(path, mode=mode)
        return self._images[key]

    def _rows(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        from lamcam._files import atomic_write_bytes, npy_bytes
        from lamcam.viz.lam import crop_statement
        from lamcam.zoo import input_mode

        lam = self._lam(item["model"])
        mode = input_mode(lam.model)
        x = self._image(item["image"], mode)
        w = int(self.config["window"])
        r = lam(x, int(item["row"]), int(item["col"]), w, coords="sr")
        p = r.params
        scale = int(p.get("scale", r.sr.shape[-1] // x.shape[-1]))
        row = {
            "item_id": item["item_id"], "image": item["image"], "hr": item.get("hr"),
            "model": item["model"], "row": item["row"], "col": item["col"], "window": w,
            "window_source": item.get("window_source"), "edge_energy": item.get("edge_energy"),
            "scale": scale, "lr_height": int(x.shape[-2]), "lr_width": int(x.shape[-1]),
            "diffusion_index": r.diffusion_index, "pixels95": r.pixels95,
            "completeness_error": r.completeness_error, "objective_input": r.objective_input,
            "objective_baseline": r.objective_baseline,
            "local_psnr": self._psnr(item, r.sr, mode, w),
            "sigma": self.config["sigma"], "kernel_size": self.config["kernel_size"],
            "steps": self.config["steps"], "quadrature": self.config["quadrature"],
            "crop": crop_statement(p, short=True) or "whole image",
        }
        if self.config.get("save_maps"):
            name = f"maps/{_stem(item['item_id'], item['image'])}_{_safe(item['model'])}.npy"
            atomic_write_bytes(self.out_dir / name, npy_bytes(r.attribution.detach().cpu()
                                                              .float().numpy()))
            row["attribution_file"] = name
        return [row]

    def _psnr(self, item: dict[str, Any], sr: torch.Tensor, mode: str, w: int) -> float | None:
        """PSNR (dB) of the SR output against the HR image inside the window (values in [0, 1],
        SR clamped to [0, 1], all channels); ``None`` without an HR image of the SR size."""
        if not item.get("hr"):
            return None
        hr = self._image(item["hr"], mode)
        if tuple(hr.shape[-2:]) != tuple(sr.shape[-2:]):
            raise ValueError(f"the HR image {Path(item['hr']).name} is {hr.shape[-1]}x{hr.shape[-2]}"
                             f" but the SR output is {sr.shape[-1]}x{sr.shape[-2]}")
        r, c = int(item["row"]), int(item["col"])
        a = sr.detach().float().clamp(0, 1)[..., r:r + w, c:c + w].double()
        b = hr[..., r:r + w, c:c + w].double()
        mse = float(((a - b) ** 2).mean())
        return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _safe(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9.+-]+", "_", Path(text).stem if "/" in text else text).strip("_")


def make_worker(kind: str, config: dict[str, Any], out_dir: str) -> Worker:
    """The worker of job ``kind`` (``"cam"`` or ``"lam"``) for ``config``."""
    cls = {"cam": CAMWorker, "lam": LAMWorker}[kind]
    return cls(job_from_config(config), out_dir)


def rows_of(worker: Worker, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """All rows of ``items``, in order."""
    return [row for item in items for row in worker.rows(item)]


def describe(job: CAMJob | LAMSurvey) -> dict[str, Any]:
    """The job as a JSON-able dict (for the report)."""
    d = asdict(job)
    d["inputs"] = len(job.inputs)
    return d

