"""The runnable examples in the core modules' docstrings are part of the test suite."""

import doctest
import importlib

import pytest

MODULES = [
    "lamcam", "lamcam.cam", "lamcam.hooks", "lamcam.layout", "lamcam.maps", "lamcam.targets", "lamcam.guided",
    "lamcam.paths", "lamcam.integrate", "lamcam.lam", "lamcam.metrics.diffusion", "lamcam.attribution",
    "lamcam.metrics.faithfulness", "lamcam.metrics.localisation", "lamcam.metrics.sanity",
    "studies._common", "lamcam.evaluation", "lamcam._files", "studies.distill",
    "studies.clips", "studies.captions",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
