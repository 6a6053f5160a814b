"""Model registry: shipped reference models by name, and checkpoints by path.

Two tables, filled in ONE place (the "built-in registrations" section at the end of this file;
later model families, e.g. super-resolution networks, add their lines there):

* architectures -- :func:`register_arch`: a name -> builder (``**config -> nn.Module``) plus the
  defaults that describe what the network is (task, CAM target layer, input size, classes) and
  optionally how to recover its config from a bare state dict;
* models -- :func:`register`: a name -> architecture + weights file shipped in
  ``lamcam/zoo/weights/`` + static metadata.

:func:`load` returns an ``eval()`` model carrying ``model.lamcam_meta`` (a dict with at least
``name``, ``arch``, ``task``, ``classes``, ``input_size``, ``default_layer``). Checkpoints are
``.safetensors`` (read by :mod:`lamcam._safetensors`) or ``.pth``/``.pt`` files read with
``torch.load(weights_only=True)`` only -- never unpickling arbitrary objects. State dicts that
no registered architecture recognises go to spandrel, if installed
(:mod:`lamcam.zoo.spandrel_compat`).

A checkpoint is data from anywhere, so nothing in it is trusted before it is checked:

* its tensors hold at most :data:`MAX_MODEL_ELEMENTS` elements in all, and a ``.pth`` zip does
  not inflate beyond :data:`MAX_PTH_INFLATION` times its size (checked from the zip directory
  before ``torch.load``);
* a config read from the metadata or inferred from tensor shapes must be plain data without
  negative sizes (and without zero sizes when inferred);
* an architecture is first built on the ``meta`` device (no memory), under a guard that stops
  the construction as soon as it registers far more modules/tensors than the checkpoint holds
  (:data:`BUILD_REGISTRATIONS_PER_TENSOR`) or more than :data:`MAX_MODEL_ELEMENTS` elements;
  its keys and shapes are compared with the checkpoint, and only then is it built on the CPU;
* every failure on the way is a :class:`ZooError` naming the file (the cause chained).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.resources
import json
import math
import os
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lamcam import _safetensors

__all__ = [
    "model_meta",
    "input_mode",
    "input_hw",
    "ZooError",
    "UnknownModelError",
    "ArchSpec",
    "ModelEntry",
    "register_arch",
    "register",
    "list_models",
    "list_archs",
    "info",
    "load",
    "samples",
    "sample_annotations",
    "sr_samples",
]

PathLike = str | os.PathLike

#: Largest model :func:`load` builds, and largest checkpoint it accepts, in parameter + buffer
#: elements: 2**30, about 1.07 billion (4 GiB as float32), ~2,500x lamcam's largest shipped
#: model and far above the image-restoration networks spandrel loads (tens of millions). Set
#: ``lamcam.zoo.registry.MAX_MODEL_ELEMENTS`` higher to load larger models on purpose.
MAX_MODEL_ELEMENTS = 2**30

#: While an architecture is built for a checkpoint of ``n`` tensors, the construction is stopped
#: once it has registered more than ``BUILD_REGISTRATIONS_PER_TENSOR * n`` +
#: ``BUILD_REGISTRATION_SLACK`` modules, parameters and buffers: such a model cannot match the
#: checkpoint's state dict (lamcam's models register 1.5 to 2.5 per state-dict tensor). This
#: stops a config such as ``blocks=20000`` long before the construction itself becomes costly.
BUILD_REGISTRATIONS_PER_TENSOR = 8
BUILD_REGISTRATION_SLACK = 1024

#: ``torch.save`` stores zip entries uncompressed; a ``.pth`` whose entries inflate to more than
#: this many times the file size (a zip bomb) is refused before ``torch.load`` reads it.
MAX_PTH_INFLATION = 4


class ZooError(ValueError):
    """A model could not be loaded: corrupt file, unknown architecture, mismatched weights..."""


class UnknownModelError(ZooError, KeyError):
    """A name is neither a registered model nor an existing file."""

    def __str__(self) -> str:  # KeyError would show the message repr()-quoted
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: how to build it and what its models are.

    Attributes:
        name: architecture name, as stored in checkpoint metadata ``arch``.
        builder: ``builder(**config) -> nn.Module``.
        task: e.g. ``"classification"`` or ``"super_resolution"``.
        default_layer: dotted module name of the default attribution target layer.
        input_size: native input side in pixels (None if any).
        classes: default class names (classification), used when a checkpoint has none.
        infer_config: ``state_dict -> config`` for checkpoints without a stored config.
        defaults: extra metadata every model of this architecture gets (e.g. ``scale``).
    """

    name: str
    builder: Callable[..., nn.Module]
    task: str
    default_layer: str | None = None
    input_size: int | None = None
    classes: tuple[str, ...] | None = None
    infer_config: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: architecture + weights file + static metadata.

    ``weights_file`` is a file name inside the package's ``zoo/weights/`` directory, or an
    absolute path.
    """

    name: str
    arch: str
    weights_file: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


_ARCHS: dict[str, ArchSpec] = {}
_MODELS: dict[str, ModelEntry] = {}


def register_arch(
    name: str,
    builder: Callable[..., nn.Module] | None = None,
    *,
    task: str,
    default_layer: str | None = None,
    input_size: int | None = None,
    classes: tuple[str, ...] | None = None,
    infer_config: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Any:
    """Register an architecture; usable directly or as a class/function decorator.

    ``register_arch("Net", Net, task="classification", default_layer="layer3")`` or::

        @register_arch("Net", task="classification", default_layer="layer3")
        class Net(nn.Module): ...
    """

    def _do(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ARCHS and _ARCHS[name].builder is not fn:
            raise ValueError(f"architecture {name!r} is already registered")
        _ARCHS[name] = ArchSpec(
            name, fn, task, default_layer, input_size, classes, infer_config, dict(defaults or {})
        )
        return fn

    return _do(builder) if builder is not None else _do


def register(
    name: str,
    *,
    arch: str,
    weights_file: str,
    meta: Mapping[str, Any] | None = None,
    description: str = "",
) -> None:
    """Register a model ``name`` of architecture ``arch`` whose weights are ``weights_file``.

    ``meta`` overrides the architecture defaults (and is itself overridden by the metadata
    stored in the weights file).
    """
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = ModelEntry(name, arch, weights_file, dict(meta or {}), description)


def list_models(task: str | None = None) -> list[str]:
    """Sorted names of the registered models, e.g. ``["shapes_resnet", "shapes_vgg", ...]``.

    Args:
        task: only models of this task (``"classification"``, ``"sr"``); None = all.
    """
    if task is None:
        return sorted(_MODELS)
    return sorted(n for n, e in _MODELS.items() if _task_of(e) == task)


def _task_of(entry: ModelEntry) -> str | None:
    task = entry.meta.get("task")
    if task is None and entry.arch in _ARCHS:
        task = _ARCHS[entry.arch].task
    return task


def list_archs() -> list[str]:
    """Sorted names of the registered architectures."""
    return sorted(_ARCHS)


# --------------------------------------------------------------------------------------------
# metadata helpers
# --------------------------------------------------------------------------------------------
_JSON_KEYS = {"classes", "config", "heldout", "train_images", "heldout_images"}
_INT_KEYS = {
    "input_size", "num_params", "seed", "train_seed", "eval_seed", "eval_n", "n_train",
    "epochs", "scale", "in_channels", "steps", "planned_steps", "batch_size", "lr_patch",
}  # fmt: skip
_FLOAT_KEYS = {"accuracy", "train_time_s", "input_range", "psnr_y_gain", "lr"}


def _parse_meta(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Turn stored (string) metadata into Python values: JSON lists/dicts, ints, floats."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, str):
            try:
                if k in _JSON_KEYS:
                    v = json.loads(v)
                elif k in _INT_KEYS:
                    v = int(v)
                elif k in _FLOAT_KEYS:
                    v = float(v)
                elif k == "receptive_field":  # LR pixels, or "global"
                    v = int(v) if v.strip().isdigit() else v
            except (ValueError, RecursionError):  # malformed, or a JSON recursion bomb
                if k == "classes":  # tolerate "a,b,c"
                    v = [c.strip() for c in v.split(",") if c.strip()]
        out[k] = v
    classes = out.get("classes")
    if isinstance(classes, str):  # e.g. '"a,b"' decoded to a str
        out["classes"] = [c.strip() for c in classes.split(",") if c.strip()]
    elif isinstance(classes, list | tuple) and all(
        isinstance(c, str | int | float) for c in classes
    ):
        out["classes"] = [str(c) for c in classes]
    elif classes is not None:  # a number, an object, nested lists: not class names
        del out["classes"]
    return out


def _unknown_name(name: str) -> UnknownModelError:
    names = list_models()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownModelError(
        f"unknown model {name!r} (and no such file).{hint} Available models: "
        f"{', '.join(names) or '(none)'}; or pass the path of a .safetensors / .pth checkpoint."
    )


def _entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise _unknown_name(name)
    return _MODELS[name]


@contextlib.contextmanager
def _weights_path(entry: ModelEntry) -> Iterator[Path]:
    if os.path.isabs(entry.weights_file):
        yield Path(entry.weights_file)
        return
    res = importlib.resources.files("lamcam.zoo").joinpath("weights").joinpath(entry.weights_file)
    with importlib.resources.as_file(res) as p:
        yield Path(p)


def _missing_weights(entry: ModelEntry, path: Path) -> FileNotFoundError:
    script = "train_sr" if _task_of(entry) == "sr" else "train_classifiers"
    return FileNotFoundError(
        f"weights of model {entry.name!r} not found at {path}. The package data is missing: "
        f"reinstall lamcam, or regenerate them with "
        f"`python -m lamcam.zoo.{script} --model {entry.name} --out {path.parent}`."
    )


def info(name: str) -> dict[str, Any]:
    """Describe registered model ``name`` without building it (reads only the file header).

    Returns the metadata :func:`load` would attach, plus ``description``, ``weights_file``
    (absolute path), ``weights_bytes`` and ``available`` (whether the weights file exists).
    """
    entry = _entry(name)
    spec = _ARCHS.get(entry.arch)
    meta = _defaults(spec) if spec is not None else {"arch": entry.arch}
    meta.update(_parse_meta(entry.meta))
    with _weights_path(entry) as path:
        available = path.is_file()
        if available:
            meta.update(_parse_meta(_safetensors.read_metadata(path)))
        meta.update(
            name=name,
            arch=entry.arch,
            description=entry.description,
            weights_file=str(path),
            weights_bytes=path.stat().st_size if available else None,
            available=available,
        )
    return meta


# --------------------------------------------------------------------------------------------
# checkpoint reading
# --------------------------------------------------------------------------------------------
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "params_ema", "params", "net")
_META_KEYS = ("lamcam_meta", "meta", "metadata")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return _safetensors.load_file(path), _safetensors.read_metadata(path)


def _check_zip_inflation(path: Path) -> None:
    """Refuse a zip ``.pth`` whose entries inflate far beyond the file (reads its directory)."""
    if not zipfile.is_zipfile(path):
        return  # legacy (non-zip) torch.save format: torch reads it as it is
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except Exception as e:  # noqa: BLE001 - a zip directory Python cannot read: refuse it
        raise ZooError(f"its zip directory is unreadable ({type(e).__name__}: {e})") from e
    size = path.stat().st_size
    if declared > MAX_PTH_INFLATION * size + 2**20:
        raise ZooError(
            f"its zip entries inflate to {declared:,} bytes from a {size:,}-byte file (more than "
            f"MAX_PTH_INFLATION = {MAX_PTH_INFLATION}x; torch.save never compresses): refused as "
            "a zip bomb; re-save the state dict with torch.save or as .safetensors"
        )


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    _check_zip_inflation(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise ZooError(f"torch.load gave a {type(obj).__name__}, not a dict / state dict")
    meta: dict[str, Any] = {}
    for key in _META_KEYS:
        if isinstance(obj.get(key), Mapping):
            meta.update(obj[key])
    if isinstance(obj.get("arch"), str):
        meta.setdefault("arch", obj["arch"])
    state: Any = obj
    for key in _CONTAINER_KEYS:
        if isinstance(obj.get(key), Mapping):
            state = obj[key]
            break
    keys = [k for k in state if not isinstance(k, str)]
    if keys:
        raise ZooError(f"not a state dict: {len(keys)} keys are not str (e.g. {keys[:3]!r})")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ZooError(
            f"not a state dict: {len(bad)} entries are not tensors (e.g. {bad[:3]}); expected "
            f"a raw state dict or one under one of the keys {list(_CONTAINER_KEYS)}"
        )
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, meta


#: Longest reason :func:`_first_line` passes on from another library's exception.
REASON_MAX_CHARS = 120

_ANSI = r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]"
#: Sentences of torch's text that must never reach a user: advice to disable the safe loader.
_UNSAFE_ADVICE = (r"weights_only\s*(?:set\s+to\s+|=\s*)[`'\"]?False|trust the source|"
                  r"two options|add_safe_globals|safe_globals|allowlist")


def _first_line(e: BaseException) -> str:
    """A short, clean reason from ``str(e)``: ANSI escape codes stripped, torch's advice to load
    with ``weights_only=False`` dropped (never given for files of unknown origin), the first
    sentence of the first non-empty line, at most :data:`REASON_MAX_CHARS` characters (a
    :class:`ZooError`, lamcam's own wording, keeps its whole first line); a placeholder for an
    empty message."""
    import re

    text = re.sub(_ANSI, "", str(e))
    if "Weights only load failed" in text or "Unsupported global" in text:
        return ("it holds pickled Python objects besides tensors, which lamcam never unpickles "
                "(unpickling can run arbitrary code)")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    if isinstance(e, ZooError):  # lamcam's own reasons are written to be shown whole
        return lines[0]
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", lines[0])
                 if not re.search(_UNSAFE_ADVICE, s, re.IGNORECASE)]
    reason = sentences[0] if sentences else "(no usable message)"
    if len(reason) > REASON_MAX_CHARS:
        reason = reason[: REASON_MAX_CHARS - 3].rstrip() + "..."
    return reason


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``path`` with every loader that may apply (the suffix decides the order)."""
    loaders: list[tuple[str, Callable[[Path], tuple[dict, dict]]]] = [
        ("safetensors", _read_safetensors),
        ("torch.load(weights_only=True)", _read_torch),
    ]
    if path.suffix.lower() != ".safetensors":
        loaders.reverse()
    errors = []
    for label, fn in loaders:
        try:
            return fn(path)
        except Exception as e:  # noqa: BLE001 - every failure is reported below
            reason = _first_line(e).removeprefix(f"{path}: ").rstrip(".")
            if " " not in reason:  # a bare key or code (KeyError: 101) says nothing alone
                reason = f"{type(e).__name__} {reason}"
            errors.append(f"{label}: {reason}")
    raise ZooError(
        f"cannot read checkpoint {path}: it is corrupt, truncated or not a supported format ("
        + "; ".join(errors)
        + "). Fix: re-save the weights as a state dict, with torch.save(model.state_dict(), "
        "path) or safetensors.torch.save_file."
    )


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------
def _defaults(spec: ArchSpec) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "arch": spec.name,
        "task": spec.task,
        "default_layer": spec.default_layer,
        "input_size": spec.input_size,
    }
    if spec.classes is not None:
        meta["classes"] = list(spec.classes)
    meta.update(spec.defaults)
    return meta


class _BuildLimit(Exception):
    """Raised inside a model's construction by :func:`_build_guard`."""


_REGISTRATION_HOOKS = tuple(
    getattr(torch.nn.modules.module, f"register_module_{kind}_registration_hook", None)
    for kind in ("module", "parameter", "buffer")
)


@contextlib.contextmanager
def _build_guard(n_tensors: int) -> Iterator[None]:
    """Stop a model construction in this thread that cannot fit a checkpoint of ``n_tensors``.

    Global registration hooks count the modules, parameters and buffers the construction
    registers, and the elements of the parameters and buffers. :class:`_BuildLimit` is raised
    (from inside the constructor, before the next tensor is initialised) once the count exceeds
    ``BUILD_REGISTRATIONS_PER_TENSOR * n_tensors + BUILD_REGISTRATION_SLACK`` or the elements
    exceed :data:`MAX_MODEL_ELEMENTS`. Other threads' constructions are not counted.
    """
    owner = threading.get_ident()
    limit = BUILD_REGISTRATIONS_PER_TENSOR * n_tensors + BUILD_REGISTRATION_SLACK
    max_elements = MAX_MODEL_ELEMENTS
    count = elements = 0

    def _add(numel: int) -> None:
        nonlocal count, elements
        if threading.get_ident() != owner:
            return
        count += 1
        elements += numel
        if count > limit:
            raise _BuildLimit(
                f"its construction registered more than {limit:,} modules, parameters and "
                f"buffers, but the checkpoint holds only {n_tensors:,} tensors, so they cannot "
                "match (limit: BUILD_REGISTRATIONS_PER_TENSOR * tensors + "
                "BUILD_REGISTRATION_SLACK)"
            )
        if elements > max_elements:
            raise _BuildLimit(
                f"the model needs more than MAX_MODEL_ELEMENTS = {max_elements:,} parameter and "
                "buffer elements; raise lamcam.zoo.registry.MAX_MODEL_ELEMENTS to build it "
                "on purpose"
            )

    def on_module(module: nn.Module, name: str, sub: Any) -> None:
        _add(0)

    def on_tensor(module: nn.Module, name: str, t: Any) -> None:
        _add(t.numel() if isinstance(t, torch.Tensor) else 0)

    hooks = (on_module, on_tensor, on_tensor)
    handles = [
        register(hook)
        for register, hook in zip(_REGISTRATION_HOOKS, hooks, strict=True)
        if register is not None
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _state_elements(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())


def _model_elements(model: nn.Module) -> int:
    return sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())


def _check_state_size(state: Mapping[str, torch.Tensor], src: str) -> None:
    """Refuse a checkpoint of more than :data:`MAX_MODEL_ELEMENTS` elements before any build."""
    n = _state_elements(state)
    if n > MAX_MODEL_ELEMENTS:
        raise ZooError(
            f"{src} holds {n:,} tensor elements, more than MAX_MODEL_ELEMENTS = "
            f"{MAX_MODEL_ELEMENTS:,}: refused before building anything. If this model is "
            "meant to be that large, raise lamcam.zoo.registry.MAX_MODEL_ELEMENTS."
        )


def _config_problem(config: Any, *, inferred: bool) -> str | None:
    """Why ``config`` may not be passed to a builder, or None if it may.

    A config is a mapping str -> plain JSON-like values (None, bool, int, float, str and lists
    or mappings of them, nested at most 8 levels). Negative ints and non-finite floats are
    refused everywhere; zero ints too in a config inferred from tensor shapes, where a zero
    size can only come from an empty or lying tensor.
    """
    if not isinstance(config, Mapping):
        return f"it is a {type(config).__name__}, not a mapping of keyword arguments"
    todo: list[tuple[str, Any, int]] = [(repr(k), v, 0) for k, v in config.items()]
    if any(not isinstance(k, str) for k in config):
        return "its keys are not all strings"
    while todo:
        where, v, depth = todo.pop()
        if depth > 8:
            return f"{where} is nested too deeply"
        if v is None or isinstance(v, bool | str):
            continue
        if isinstance(v, int):
            if v < 0 or (inferred and v == 0):
                return f"{where} = {v} is not a valid size or count"
        elif isinstance(v, float):
            if not math.isfinite(v):
                return f"{where} = {v} is not finite"
        elif isinstance(v, list | tuple):
            todo.extend((f"{where}[{i}]", x, depth + 1) for i, x in enumerate(v))
        elif isinstance(v, Mapping):
            if any(not isinstance(k, str) for k in v):
                return f"{where} has keys that are not strings"
            todo.extend((f"{where}[{k!r}]", x, depth + 1) for k, x in v.items())
        else:
            return f"{where} is a {type(v).__name__}, not plain data"
    return None


def _construct(
    spec: ArchSpec, config: Mapping[str, Any], n_tensors: int, *, meta: bool = True
) -> tuple[nn.Module, bool]:
    """``(spec.builder(**config), on_meta)``, built under :func:`_build_guard`.

    With ``meta``, the model is built on the meta device (no memory); an architecture whose
    constructor cannot run there (e.g. it calls ``.item()``) is built on the default device
    instead, still under the guard. Raises _BuildLimit, or whatever the builder raises.
    """
    if meta:
        try:
            with _build_guard(n_tensors), torch.device("meta"):
                return spec.builder(**config), True
        except _BuildLimit:
            raise
        except Exception:  # noqa: BLE001 - retried off the meta device just below
            pass
    with _build_guard(n_tensors):
        return spec.builder(**config), False


def _matches(model: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    ref = model.state_dict()
    return ref.keys() == state.keys() and all(ref[k].shape == state[k].shape for k in ref)


def _infer_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    """The single registered architecture whose state-dict keys and shapes match, if any.

    Candidates are built on the meta device under :func:`_build_guard`, so a lying checkpoint
    costs neither memory nor time here.
    """
    matches = []
    for spec in _ARCHS.values():
        if spec.infer_config is None:
            continue
        try:
            config = spec.infer_config(state)
            if _config_problem(config, inferred=True) is not None:
                continue
            ref = _construct(spec, config, len(state))[0]
        except Exception:  # noqa: BLE001 - this architecture does not fit
            continue
        if _matches(ref, state):
            matches.append(spec.name)
    return matches[0] if len(matches) == 1 else None


def _check_state(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, src: str) -> None:
    ref = model.state_dict()
    missing = [k for k in ref if k not in state]
    unexpected = [k for k in state if k not in ref]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(ref[k].shape)}"
        for k in ref
        if k in state and state[k].shape != ref[k].shape
    ]
    if not (missing or unexpected or shapes):
        return

    def _few(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f", ... (+{len(items) - 5} more)" if len(items) > 5 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys [{_few(missing)}]")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys [{_few(unexpected)}]")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches [{_few(shapes)}]")
    raise ZooError(
        f"the weights in {src} do not fit architecture {arch!r}: " + "; ".join(parts) + ". "
        "Check that arch= names the network these weights were trained for (and that its "
        "config, e.g. num_classes/width, matches)."
    )


_FIX = (
    "Check that arch= (or the metadata 'arch') names the network these weights were trained "
    "for, and that the metadata 'config', if any, holds its constructor keyword arguments."
)


def _short(obj: Any, limit: int = 200) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _checked_config(
    spec: ArchSpec, stored: Any, state: Mapping[str, torch.Tensor], src: str
) -> dict[str, Any]:
    """The builder's kwargs: the metadata's ``config`` if it is a mapping, else inferred from
    the tensor shapes; validated by :func:`_config_problem`. Raises ZooError."""
    inferred = not isinstance(stored, Mapping)
    if not inferred:
        config = stored
    elif spec.infer_config is None:
        config = {}
    else:
        try:
            config = spec.infer_config(state)
        except Exception as e:  # noqa: BLE001 - KeyError, IndexError, ZeroDivisionError, ...
            raise ZooError(
                f"cannot infer the config of architecture {spec.name!r} from the tensors of "
                f"{src} ({type(e).__name__}: {_first_line(e)}): the weights do not look like a "
                f"{spec.name}. {_FIX}"
            ) from e
    problem = _config_problem(config, inferred=inferred)
    if problem is not None:
        origin = "inferred from its tensor shapes" if inferred else "stored in its metadata"
        raise ZooError(
            f"refusing to build {spec.name!r} for {src}: the config {origin} "
            f"({_short(config)}) is invalid: {problem}. {_FIX}"
        )
    return dict(config)


def _build_checked(
    spec: ArchSpec, config: dict[str, Any], state: Mapping[str, torch.Tensor], src: str
) -> nn.Module:
    """Build ``spec`` with ``config`` and load ``state`` into it, checking before allocating.

    1. build on the meta device under :func:`_build_guard` (stops oversized constructions);
    2. compare its size with :data:`MAX_MODEL_ELEMENTS`, its keys and shapes with ``state``;
    3. only then build it on the CPU and copy the weights in.
    Every failure is a ZooError naming ``src``, with the cause chained.
    """
    arch = spec.name
    try:
        model, on_meta = _construct(spec, config, len(state))
    except _BuildLimit as e:
        raise ZooError(
            f"refusing to build {arch!r} with config {_short(config)} for {src}: {e}. {_FIX}"
        ) from e
    except Exception as e:  # noqa: BLE001 - whatever the builder raises, even with no message
        raise ZooError(
            f"cannot build {arch!r} with config {_short(config)} from {src}: "
            f"{type(e).__name__}: {_first_line(e)}. {_FIX}"
        ) from e
    n = _model_elements(model)
    if n > MAX_MODEL_ELEMENTS:  # the guard stops most earlier; this also covers odd builders
        raise ZooError(
            f"refusing to build {arch!r} with config {_short(config)} for {src}: it would hold "
            f"{n:,} parameter and buffer elements, more than MAX_MODEL_ELEMENTS = "
            f"{MAX_MODEL_ELEMENTS:,} (raise lamcam.zoo.registry.MAX_MODEL_ELEMENTS to build it)"
        )
    _check_state(model, state, arch, src)
    if on_meta:
        try:
            model = _construct(spec, config, len(state), meta=False)[0]
        except Exception as e:  # noqa: BLE001 - it built on meta, so this is unexpected
            raise ZooError(
                f"cannot build {arch!r} with config {_short(config)} from {src}: "
                f"{type(e).__name__}: {_first_line(e)}"
            ) from e
    try:
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - e.g. a dtype that cannot be copied
        raise ZooError(
            f"cannot copy the weights of {src} into {arch!r}: {type(e).__name__}: "
            f"{_first_line(e)}"
        ) from e
    return model


def _build(
    state: dict[str, torch.Tensor],
    file_meta: Mapping[str, Any],
    *,
    arch: str | None,
    name: str,
    base_meta: Mapping[str, Any],
    src: str,
) -> nn.Module:
    _check_state_size(state, src)
    meta = _parse_meta(file_meta)
    arch = arch or meta.get("arch") or _infer_arch(state)
    if arch is None:
        raise ZooError(
            f"cannot tell the architecture of {src}: its metadata has no 'arch' and its keys "
            f"match no registered architecture. Pass arch= one of {list_archs()}."
        )
    if not isinstance(arch, str) or arch not in _ARCHS:
        raise ZooError(
            f"unknown architecture {arch!r} for {src}. Registered architectures: "
            f"{list_archs()}; pass arch= one of them (or arch='spandrel' for the architectures "
            "spandrel detects), or register yours with lamcam.zoo.register_arch()."
        )
    spec = _ARCHS[arch]
    config = _checked_config(spec, meta.get("config"), state, src)
    model = _build_checked(spec, config, state, src)
    model.eval()

    full = _defaults(spec)
    if callable(getattr(model, "meta_defaults", None)):  # config-dependent facts (e.g. SR models)
        full.update(model.meta_defaults())
    full.update(_parse_meta(base_meta))
    full.update(meta)
    full.update(name=name, arch=arch, config=dict(config), source=src)
    n_out = config.get("num_classes")
    if spec.task == "classification" and isinstance(n_out, int):
        classes = full.get("classes")
        if not isinstance(classes, list) or len(classes) != n_out:
            full["classes"] = [f"class_{i}" for i in range(n_out)]
    full.setdefault("classes", [])
    full["num_params"] = sum(p.numel() for p in model.parameters())
    model.lamcam_meta = full
    return model


def load(
    name_or_path: str | os.PathLike, *, arch: str | None = None, call: str | None = None
) -> nn.Module:
    """Load a registered model by name, or a checkpoint file by path.

    Which loader reads a checkpoint file:

    * ``arch=`` one of :func:`list_archs`, or an ``arch`` in the file's metadata that is
      registered: that lamcam architecture;
    * ``arch="spandrel"``: spandrel (``pip install 'lamcam[sr]'``), see
      :mod:`lamcam.zoo.spandrel_compat`;
    * otherwise the keys decide. If exactly one lamcam architecture recognises them and spandrel
      detects none, lamcam's; if spandrel also detects an architecture, **both are built and
      run on a seeded probe image** (8 px, or the smallest size spandrel's model accepts):
      if their outputs (spandrel's without its clamp) agree to :data:`PROBE_RTOL` (relative to
      the output's magnitude), lamcam's model is returned (``call=`` given: spandrel's) with
      ``lamcam_meta["loader_evidence"]`` saying so; if they differ, ZooError says by how much
      and asks for ``arch=`` -- a guess never silently changes the function. Keys no lamcam
      architecture recognises go to spandrel.

    Args:
        name_or_path: a name from :func:`list_models`, or the path of a ``.safetensors`` file
            or a ``.pth``/``.pt`` state dict (raw, or under ``"state_dict"``/``"model"``).
        arch: architecture name (see :func:`list_archs`), the name of a registered model
            (``"shapes_vgg"`` stands for its architecture ``"ShapesVGG"``), or ``"spandrel"``;
            see above.
        call: for models loaded through spandrel, what the returned module computes:
            ``"spandrel"`` (the default for them) -- exactly what spandrel's
            ``descriptor(image)`` computes: pad to the architecture's size requirements, run,
            clamp to [0, 1] (gradients vanish where the output saturates), crop; or
            ``"module"`` -- the network on the input as given (no padding, no clamp; sizes
            that violate the requirements raise ValueError). Passing ``call=`` for a model
            lamcam builds itself (registered names, lamcam architectures, which have neither
            padding nor clamp) raises ZooError; when both loaders read a file and agree,
            ``call=`` selects spandrel's.

    Returns:
        The model on CPU in eval mode, with ``model.lamcam_meta`` (dict: ``name``, ``arch``,
        ``task``, ``classes``, ``input_size``, ``default_layer``, ``config``, ``source``,
        ``num_params`` and whatever else the checkpoint's metadata holds; SR models add
        ``scale``, ``in_channels``, ``input_range``, ``receptive_field``; ``loader_evidence``
        when two loaders were compared). A checkpoint loaded through spandrel is a
        :class:`~lamcam.zoo.spandrel_compat.SpandrelModel` with ``source == "spandrel"``,
        ``call``, ``call_doc`` (one sentence: what its forward computes) and
        ``size_requirements``.

    Raises:
        UnknownModelError: not a registered name and not an existing file (lists the names).
        FileNotFoundError: a path (or a registered model's weights) does not exist.
        ValueError: ``call`` is not None, ``"spandrel"`` or ``"module"``.
        ZooError: corrupt file, unknown architecture, weights that do not fit, loaders that
            disagree, or ``call=`` for a model that is not loaded through spandrel.
    """
    if call is not None and call not in ("spandrel", "module"):
        raise ValueError(f"call must be 'spandrel', 'module' or None, got {call!r}")
    if isinstance(arch, str) and arch not in _ARCHS and arch in _MODELS:
        arch = _MODELS[arch].arch  # a registered model's name stands for its architecture
    if isinstance(name_or_path, str) and name_or_path in _MODELS:
        entry = _MODELS[name_or_path]
        if call is not None and arch != "spandrel":
            raise _call_not_spandrel(name_or_path, entry.arch)
        with _weights_path(entry) as path:
            if not path.is_file():
                raise _missing_weights(entry, path)
            state, meta = _read_checkpoint(path)
        if arch == "spandrel":
            return _no_surprises(str(path), lambda: _build_or_spandrel(
                state, meta, arch=arch, name=entry.name, src=str(path), call=call))
        return _no_surprises(str(path), lambda: _build(
            state, meta, arch=arch or entry.arch, name=entry.name, base_meta=entry.meta,
            src=str(path),
        ))
    path = Path(name_or_path)
    if not path.exists():
        text = str(name_or_path)
        looks_like_name = "/" not in text and os.sep not in text and not path.suffix
        if isinstance(name_or_path, str) and looks_like_name:
            raise _unknown_name(text)
        raise FileNotFoundError(
            f"{path}: no such checkpoint file (registered model names: {', '.join(list_models())})"
        )
    if not path.is_file():
        raise ZooError(f"{path} is a directory; pass a .safetensors or .pth file")
    state, meta = _read_checkpoint(path)
    return _no_surprises(
        str(path),
        lambda: _build_or_spandrel(state, meta, arch=arch, name=path.stem, src=str(path), call=call),
    )


def _call_not_spandrel(src: str, arch: str) -> ZooError:
    return ZooError(
        f"call= applies to models loaded through spandrel, but {src} loads as lamcam's {arch!r}, "
        "which computes the network itself (no padding, no clamp). Omit call=, or pass "
        "arch='spandrel' to run the checkpoint as spandrel does."
    )


def _no_surprises(src: str, fn: Callable[[], nn.Module]) -> nn.Module:
    """``fn()``, with any exception that is not already a ZooError turned into one (chained).

    The checks in :func:`_build` name their problems; this is the net under them, so that a
    checkpoint never surfaces as a bare IndexError, KeyError or RuntimeError.
    """
    try:
        return fn()
    except ZooError:
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise ZooError(
            f"cannot load {src}: {type(e).__name__}: {_first_line(e)}. The checkpoint does not "
            f"fit what its metadata or tensor shapes announce. {_FIX}"
        ) from e


#: Two loaders "agree" on a checkpoint when their outputs on the probe differ by at most this,
#: relative to the largest output magnitude (float32 reorderings stay near 1e-7).
PROBE_RTOL = 1e-5

#: Side of the seeded probe image (raised to what spandrel's model requires).
PROBE_SIZE = 8


def _probe_difference(ours: nn.Module, theirs: nn.Module) -> tuple[float, str]:
    """Relative max difference of the two networks on a seeded probe, and the probe's size.

    ``theirs`` is a :class:`~lamcam.zoo.spandrel_compat.SpandrelModel`; its network is run
    without clamp (its call function on the probe, which satisfies its size requirements).
    """
    h, w = theirs.padded_size(PROBE_SIZE, PROBE_SIZE)
    channels = int(theirs.lamcam_meta["in_channels"])
    x = torch.rand(1, channels, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ours(x.clone())
        b = theirs._run(x.clone())
    if a.shape != b.shape:
        return math.inf, f"{channels}x{h}x{w}"
    scale = max(float(b.abs().max()), 1e-12)
    return float((a - b).abs().max()) / scale, f"{channels}x{h}x{w}"


def _build_or_spandrel(
    state: dict[str, torch.Tensor],
    file_meta: Mapping[str, Any],
    *,
    arch: str | None,
    name: str,
    src: str,
    call: str | None = None,
) -> nn.Module:
    """Our registered architectures or spandrel, as :func:`load` documents.

    ``arch="spandrel"`` goes to spandrel directly. An explicit unknown ``arch=`` is an error; an
    architecture named only in the file's metadata that we do not know, or no architecture at
    all, is handed to spandrel (if installed). Keys that both a lamcam architecture and
    spandrel recognise are cross-checked on a probe (:func:`_cross_check`).
    """
    from lamcam.zoo import spandrel_compat as sc

    _check_state_size(state, src)
    if arch == "spandrel":
        try:
            with _build_guard(len(state)):
                return sc.load_with_spandrel(state, name=name, source=src, call=call or "spandrel")
        except (sc.SpandrelUnavailable, sc.SpandrelUnsupported, _BuildLimit) as e:
            raise ZooError(f"cannot load {src} with spandrel (arch='spandrel'): {e}") from e
    stored = _parse_meta(file_meta).get("arch")
    if stored is not None and not isinstance(stored, str):
        raise ZooError(
            f"the metadata 'arch' of {src} is a {type(stored).__name__}, not an architecture "
            f"name; pass arch= one of {list_archs()} (or arch='spandrel')."
        )
    if arch is not None or (stored is not None and stored in _ARCHS):
        chosen = arch or stored
        if call is not None:
            raise _call_not_spandrel(src, str(chosen))
        return _build(state, file_meta, arch=chosen, name=name, base_meta={}, src=src)
    inferred = _infer_arch(state) if stored is None else None
    if inferred is not None:
        return _cross_check(state, file_meta, inferred, name=name, src=src, call=call)
    if stored is not None:
        ours = f"its metadata names architecture {stored!r}, which is not registered"
    else:
        ours = (f"its keys match none of the registered architectures with key inference "
                f"({', '.join(n for n in list_archs() if _ARCHS[n].infer_config) or 'none'})")
    try:
        with _build_guard(len(state)):
            return sc.load_with_spandrel(
                state, name=name, source=src, extra_meta=file_meta, call=call or "spandrel"
            )
    except sc.SpandrelUnavailable as e:
        theirs = f"not available ({e})"
    except (sc.SpandrelUnsupported, _BuildLimit) as e:
        theirs = str(e)
    except Exception as e:  # noqa: BLE001 - spandrel choking on odd keys or shapes
        theirs = f"failed: {type(e).__name__}: {_first_line(e)}"
    example = ", ".join(list(state)[:4]) + (", ..." if len(state) > 4 else "")
    raise ZooError(
        f"cannot tell the architecture of {src}: pass arch= one of {list_archs()} (or "
        f"arch='spandrel'), or register yours with lamcam.zoo.register_arch(). Loaders tried:\n"
        f"  - lamcam registry: {ours}\n"
        f"  - spandrel: {theirs}\n"
        f"The file holds {len(state)} tensors ({example})."
    )


def _cross_check(
    state: dict[str, torch.Tensor],
    file_meta: Mapping[str, Any],
    inferred: str,
    *,
    name: str,
    src: str,
    call: str | None,
) -> nn.Module:
    """Keys recognised by lamcam's ``inferred`` architecture: also ask spandrel (see load).

    spandrel detecting nothing (or not installed) -> ours. spandrel detecting an architecture ->
    build both (each under the registry's guards), run both on a seeded probe, and return ours
    (or spandrel's when ``call`` is given) if they agree to :data:`PROBE_RTOL`; raise ZooError
    if they differ. ``lamcam_meta["loader_evidence"]`` records what was found.
    """
    from lamcam.zoo import spandrel_compat as sc

    other = sc.detected_arch(state)
    if other is None:
        if call is not None:
            raise _call_not_spandrel(src, inferred)
        model = _build(state, file_meta, arch=inferred, name=name, base_meta={}, src=src)
        model.lamcam_meta["loader_evidence"] = (
            f"lamcam {inferred} recognised the keys; spandrel detects no architecture in them "
            "(or is not installed)")
        return model
    ours = _build(state, file_meta, arch=inferred, name=name, base_meta={}, src=src)
    try:
        with _build_guard(len(state)):
            theirs = sc.load_with_spandrel(
                state, name=name, source=src, extra_meta=file_meta, call=call or "spandrel"
            )
    except (sc.SpandrelUnavailable, sc.SpandrelUnsupported, _BuildLimit) as e:
        if call is not None:
            raise ZooError(
                f"call= asks for spandrel's model, but spandrel cannot build {src}: {e}"
            ) from e
        ours.lamcam_meta["loader_evidence"] = (
            f"lamcam {inferred} recognised the keys; spandrel detected {other} but could not "
            f"build it ({_first_line(e)})")
        return ours
    their_arch = theirs.lamcam_meta["arch"]
    diff, probe = _probe_difference(ours, theirs)
    if not diff <= PROBE_RTOL:
        raise ZooError(
            f"both loaders read {src}, but their outputs differ: lamcam's {inferred!r} and "
            f"spandrel's {their_arch!r} differ by {diff:.3g} (max difference relative to the "
            f"output's magnitude, on a seeded {probe} probe; agreement means <= {PROBE_RTOL:g}). "
            f"One of them misreads this checkpoint (e.g. an rgb_range or layer it cannot see in "
            f"the keys). Pass arch={inferred!r} or arch='spandrel' explicitly to choose."
        )
    evidence = (f"lamcam {inferred} and spandrel {their_arch} both read the file and agree to "
                f"{diff:.1g} (relative) on a seeded {probe} probe")
    chosen = theirs if call is not None else ours
    chosen.lamcam_meta["loader_evidence"] = evidence + (
        "; spandrel's used (call= given)" if call is not None else "; lamcam's used")
    return chosen


# --------------------------------------------------------------------------------------------
# bundled samples
# --------------------------------------------------------------------------------------------
def _samples_dir() -> Path:
    res = importlib.resources.files("lamcam.zoo").joinpath("samples")
    return Path(str(res))


def samples() -> list[Path]:
    """Paths of the bundled sample images (held-out shapes images at the models' input size).

    Sorted by name; ``*_mask.png`` files (instance-id masks) are not included. Their labels,
    instance counts and boxes are in :func:`sample_annotations`.
    """
    d = _samples_dir()
    return sorted(p for p in d.glob("*.png") if not p.name.endswith("_mask.png"))


def sample_annotations() -> dict[str, dict[str, Any]]:
    """``samples/samples.json``: file name -> {label, class_name, n_instances, boxes, ...}."""
    path = _samples_dir() / "samples.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall lamcam")
    return json.loads(path.read_text())


def sr_samples() -> list[dict[str, Any]]:
    """Bundled held-out super-resolution test pairs (never used in training), sorted by name.

    Returns:
        One dict per pair: ``name``, ``lr`` (Path of the LR PNG), ``hr`` (Path of the HR PNG,
        exactly 4x the LR size), plus ``source``, ``crop``, ``license``, ``degradation`` from
        ``samples/sr/samples.json``.
    """
    d = _samples_dir() / "sr"
    path = d / "samples.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall lamcam")
    out = []
    for name, entry in sorted(json.loads(path.read_text()).items()):
        item = dict(entry)
        item.update(name=name, lr=d / entry["lr"], hr=d / entry["hr"])
        out.append(item)
    return out


# --------------------------------------------------------------------------------------------
# built-in registrations (the one place where shipped architectures and models are listed)
# --------------------------------------------------------------------------------------------
def _register_builtin() -> None:
    from lamcam.zoo.classifiers import (
        RESNET_DEFAULT_LAYER,
        VGG_DEFAULT_LAYER,
        ShapesResNet,
        ShapesVGG,
    )
    from lamcam.zoo.shapes import CLASSES, DEFAULT_SIZE

    def vgg_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        fc = state["fc.weight"]
        return {"num_classes": int(fc.shape[0]), "width": int(fc.shape[1]) // 4}

    def resnet_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        fc = state["fc.weight"]
        blocks = len({k.split(".")[1] for k in state if k.startswith("layer1.")})
        return {"num_classes": int(fc.shape[0]), "width": int(fc.shape[1]) // 4, "blocks": blocks}

    common = {"task": "classification", "input_size": DEFAULT_SIZE, "classes": CLASSES}
    register_arch(
        "ShapesVGG", ShapesVGG, default_layer=VGG_DEFAULT_LAYER, infer_config=vgg_config, **common
    )
    register_arch(
        "ShapesResNet",
        ShapesResNet,
        default_layer=RESNET_DEFAULT_LAYER,
        infer_config=resnet_config,
        **common,
    )
    register(
        "shapes_vgg",
        arch="ShapesVGG",
        weights_file="shapes_vgg.safetensors",
        description="VGG-style CNN (in-place ReLUs) classifying 64x64 multi-instance shapes",
    )
    register(
        "shapes_resnet",
        arch="ShapesResNet",
        weights_file="shapes_resnet.safetensors",
        description="small ResNet (BasicBlocks) classifying 64x64 multi-instance shapes",
    )
    _register_sr()


#: The RGB means a MeanShift may imply (see ``range_config`` in :func:`_register_sr`): a
#: training set's mean lies well inside (0, 1) (DIV2K: 0.40-0.45). With rgb_range 1 the
#: 255-convention reading gives means below 0.004; with 255 the 1-convention gives means > 1.
MEAN_LOW, MEAN_HIGH = 0.02, 0.98


def _register_sr() -> None:
    """The x4 super-resolution zoo (:mod:`lamcam.zoo.sr`, trained by :mod:`training.train_sr`)."""
    from lamcam.zoo import sr

    def seq_len(state: Mapping[str, torch.Tensor], prefix: str, suffix: str) -> int:
        n = 0
        while f"{prefix}.{n}.{suffix}" in state:
            n += 1
        return n

    def shuffle_scale(state: Mapping[str, torch.Tensor], prefix: str) -> int:
        scale, i = 1, 0
        while f"{prefix}.{i}.weight" in state:
            w = state[f"{prefix}.{i}.weight"]
            scale *= round((w.shape[0] / w.shape[1]) ** 0.5)
            i += 2
        return scale

    def range_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """``norm`` and ``rgb_range`` from the MeanShift layers, assuming no dataset mean.

        MeanShift (EDSR code base): weight = diag(1/std), bias = sign * rgb_range * mean / std.
        The mean itself is in the weights (loaded with them); only ``rgb_range`` is a
        constructor argument. Of the conventions 1 and 255, exactly one may imply an RGB mean
        in [MEAN_LOW, MEAN_HIGH] for all three channels, in both ``sub_mean`` and ``add_mean``
        (which must agree); anything else (both, neither, a non-diagonal or non-positive
        weight, disagreeing layers) raises ValueError, so the file is not claimed.
        """
        if "sub_mean.weight" not in state and "add_mean.weight" not in state:
            return {"norm": False}
        layers = {}
        for layer, sign in (("sub_mean", -1.0), ("add_mean", 1.0)):
            w, b = state.get(f"{layer}.weight"), state.get(f"{layer}.bias")
            # values are read below: check the shapes first, so a lying tensor costs nothing
            if w is None or b is None or w.shape != (3, 3, 1, 1) or b.shape != (3,):
                raise ValueError(f"{layer} is not a 3-channel 1x1 MeanShift")
            w2 = w.reshape(3, 3).double()
            diag = w2.diagonal()
            if bool((w2 - torch.diag(diag)).abs().max() > 1e-6 * diag.abs().max()) or \
                    not bool((diag > 0).all()):
                raise ValueError(f"{layer}.weight is not a positive diagonal (1/std)")
            layers[layer] = sign * b.double() / diag  # = rgb_range * mean
        sub, add = layers["sub_mean"], layers["add_mean"]
        if not bool(torch.allclose(sub, add, rtol=1e-4, atol=1e-6)):
            raise ValueError(f"sub_mean and add_mean imply different means ({sub} vs {add})")
        fits = [r for r in (1.0, 255.0)
                if bool(((sub / r > MEAN_LOW) & (sub / r < MEAN_HIGH)).all())]
        if len(fits) != 1:
            raise ValueError(
                f"MeanShift bias {sub.tolist()} implies a plausible RGB mean for "
                f"{'both' if fits else 'neither'} of rgb_range 1 and 255")
        return {"norm": True, "rgb_range": fits[0]}

    def edsr_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        head = state["head.0.weight"]
        n_feats = int(head.shape[0])
        # res_scale is not stored; the official large EDSR (256 features) was trained with 0.1
        return {
            "n_feats": n_feats, "n_resblocks": seq_len(state, "body", "body.0.weight"),
            "scale": shuffle_scale(state, "tail.0"), "n_colors": int(head.shape[1]),
            "res_scale": 0.1 if n_feats >= 256 else 1.0, **range_config(state),
        }

    def rcan_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        head = state["head.0.weight"]
        squeeze = state["body.0.body.0.body.3.conv_du.0.weight"].shape[0]
        return {
            "n_feats": int(head.shape[0]),
            "n_resgroups": seq_len(state, "body", "body.0.body.0.weight"),
            "n_resblocks": seq_len(state, "body.0.body", "body.0.weight"),
            "reduction": int(head.shape[0]) // int(squeeze),
            "scale": shuffle_scale(state, "tail.0"), "n_colors": int(head.shape[1]),
            **range_config(state),
        }

    def fsrcnn_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {
            "d": int(state["feature.0.weight"].shape[0]),
            "s": int(state["shrink.0.weight"].shape[0]),
            "mapping": len([k for k in state if k.startswith("mapping.") and k.endswith(".bias")]),
            "scale": round((state["upsample.0.weight"].shape[0] / 3) ** 0.5),
        }

    def swinir_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        dim = int(state["conv_first.weight"].shape[0])
        table = state["layers.0.blocks.0.attn.relative_position_bias_table"]
        return {
            "dim": dim,
            "depths": [seq_len(state, f"layers.{i}.blocks", "norm1.weight")
                       for i in range(seq_len(state, "layers", "conv.weight"))],
            "heads": int(table.shape[1]),
            "window": (round(table.shape[0] ** 0.5) + 1) // 2,
            "mlp_ratio": state["layers.0.blocks.0.mlp.0.weight"].shape[0] / dim,
            "scale": round((state["upsample.0.weight"].shape[0] / 3) ** 0.5),
        }

    archs = [
        ("FSRCNN", sr.FSRCNN, fsrcnn_config),
        ("EDSR", sr.EDSR, edsr_config),
        ("RCAN", sr.RCAN, rcan_config),
        ("SwinIRLite", sr.SwinIRLite, swinir_config),
    ]
    for name, cls, infer in archs:
        rf = sr.receptive_field(cls())
        register_arch(
            name, cls, task="sr", infer_config=infer,
            defaults={"scale": 4, "in_channels": 3, "input_range": 1.0,
                      "receptive_field": "global" if rf is None else rf},
        )
    models = [
        ("sr_fsrcnn", "FSRCNN", "FSRCNN-like plain CNN (x4), small receptive field"),
        ("sr_edsr", "EDSR", "EDSR-like residual CNN (x4) in the official EDSR key layout"),
        ("sr_rcan", "RCAN", "RCAN-like channel-attention CNN (x4), spandrel-compatible keys"),
        ("sr_swinir", "SwinIRLite", "SwinIR-like shifted-window self-attention network (x4)"),
    ]
    for name, arch, description in models:
        register(name, arch=arch, weights_file=f"{name}.safetensors", meta={"task": "sr"},
                 description=description)
    from lamcam.zoo import paper_zoo

    paper_zoo.register_all()  # the LAM paper's zoo in its authors' key layouts


_register_builtin()


# --------------------------------------------------------------------------------------------
# what a loaded model's metadata says about its input (one reading for the CLI, app and batch)
# --------------------------------------------------------------------------------------------


def model_meta(model_or_meta: Any) -> dict[str, Any]:
    """A model's ``lamcam_meta`` (a copy; ``{}`` without one); a mapping is copied as it is."""
    meta = model_or_meta if isinstance(model_or_meta, Mapping) else getattr(
        model_or_meta, "lamcam_meta", None)
    return dict(meta) if isinstance(meta, Mapping) else {}


def input_mode(model_or_meta: Any) -> str:
    """``"L"`` for a one-channel model (``channels`` or ``in_channels`` is 1), else ``"RGB"``.

    Example:
        >>> input_mode({"in_channels": 1}), input_mode({}), input_mode(load("sr_edsr"))
        ('L', 'RGB', 'RGB')
    """
    meta = model_meta(model_or_meta)
    return "L" if meta.get("channels", meta.get("in_channels", 3)) == 1 else "RGB"


def input_hw(model_or_meta: Any) -> tuple[int, int] | None:
    """The ``(h, w)`` a classifier takes (``input_size``: an int or a pair), or ``None``.

    Example:
        >>> input_hw({"input_size": 64}), input_hw({"input_size": [32, 48]}), input_hw({})
        ((64, 64), (32, 48), None)
    """
    size = model_meta(model_or_meta).get("input_size")
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))
