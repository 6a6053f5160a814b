"""Reference model zoo: small classifiers trained on a generated multi-instance shapes data set.

>>> import lamcam.zoo
>>> lamcam.zoo.list_models()
['shapes_resnet', 'shapes_vgg']
>>> model = lamcam.zoo.load("shapes_vgg")          # eval mode, CPU
>>> model.lamcam_meta["default_layer"], model.lamcam_meta["classes"][:2]
('features.20', ['circle', 'square'])

See ``docs/zoo.md`` for the data generator, the architectures and how the weights were trained.
"""

from lamcam.zoo.registry import (
    ArchSpec,
    ModelEntry,
    UnknownModelError,
    ZooError,
    info,
    list_archs,
    list_models,
    load,
    register,
    register_arch,
    sample_annotations,
    samples,
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
    "list_archs",
    "list_models",
    "load",
    "make_dataset",
    "make_sample",
    "register",
    "register_arch",
    "sample_annotations",
    "samples",
]
