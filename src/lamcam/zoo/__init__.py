"""Reference model zoo: small classifiers trained on a generated multi-instance shapes data set,
and small x4 super-resolution networks of four designs (plain CNN, residual CNN, channel
attention, window self-attention) trained on scikit-image's public-domain images.

>>> import lamcam.zoo
>>> lamcam.zoo.list_models(task="classification")
['shapes_resnet', 'shapes_vgg']
>>> model = lamcam.zoo.load("shapes_vgg")          # eval mode, CPU
>>> model.lamcam_meta["default_layer"], model.lamcam_meta["classes"][:2]
('features.20', ['circle', 'square'])
>>> lamcam.zoo.list_models(task="sr")
['sr_edsr', 'sr_fsrcnn', 'sr_rcan', 'sr_swinir']
>>> sr = lamcam.zoo.load("sr_rcan")
>>> sr.lamcam_meta["scale"], sr.lamcam_meta["receptive_field"]
(4, 'global')

Checkpoints of other SR architectures load through spandrel (``pip install 'lamcam[sr]' &&
pip install --no-deps 'spandrel==0.4.2'``: ``--no-deps`` keeps your torch):
``lamcam.zoo.load("4x_SwinIR.pth")``; see :mod:`lamcam.zoo.spandrel_compat`. The LAM paper's
model zoo (CARN, SAN, RNAN, DRLN, FSRCNN, RCAN, EDSR-baseline) loads from its authors' files;
see :mod:`lamcam.zoo.paper_zoo`.
See ``docs/zoo.md`` for the data, the architectures and how the weights were trained.
"""

from lamcam.zoo.registry import (
    ArchSpec,
    ModelEntry,
    UnknownModelError,
    ZooError,
    info,
    input_hw,
    input_mode,
    list_archs,
    list_models,
    load,
    model_meta,
    register,
    register_arch,
    sample_annotations,
    samples,
    sr_samples,
)
from lamcam.zoo.shapes import CLASSES, ShapesDataset, ShapesSample, make_dataset, make_sample

__all__ = [
    "ArchSpec",
    "CLASSES",
    "ModelEntry",
    "ShapesDataset",
    "ShapesSample",
    "UnknownModelError",
    "ZooError",
    "info",
    "input_hw",
    "input_mode",
    "list_archs",
    "list_models",
    "load",
    "model_meta",
    "make_dataset",
    "make_sample",
    "register",
    "register_arch",
    "sample_annotations",
    "samples",
    "sr_samples",
]
