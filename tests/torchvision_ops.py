"""Import PyPI's torchvision beside the CPU torch wheel, for tests and benchmarks only.

PyPI's torchvision 0.28 wheel links its compiled ops (``torchvision._C``) against the CUDA
libraries. Beside the CPU build of torch 2.13 that extension fails to load, which torchvision
tolerates (``torchvision.extension._has_ops()`` is then False), but its
``_meta_registrations`` module still registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` unconditionally, and that raises
``RuntimeError: operator torchvision::nms does not exist``. Everything else in torchvision, the
model definitions included, is pure Python.

:func:`import_torchvision` first tries the real import. Only if it fails with exactly that error
does it *declare* the two operator schemas (no kernels), so the registrations succeed, and import
again. Nothing is faked beyond the schemas: calling ``torchvision.ops.nms`` still raises
torchvision's own "Couldn't load custom C++ ops" error, and the model code that the tests use
(ResNet, ViT, Swin, and timm / transformers, which import torchvision) is torchvision's and
timm's real code. A user whose torchvision matches their torch never goes through this path.
"""

from __future__ import annotations

import sys
import types

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None


def import_torchvision() -> types.ModuleType:
    """``import torchvision``, declaring the compiled ops' schemas if the wheel cannot load them."""
    global _library
    try:
        import torchvision

        return torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")  # kept alive: schemas stay defined
        for schema in _SCHEMAS:
            _library.define(schema)
    import torchvision

    return torchvision
