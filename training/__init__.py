"""Training scripts for lamcam's bundled reference models (run from the repository root).

* ``python -m training.train_classifiers`` — the shapes classifiers (``shapes_vgg``, ``shapes_resnet``);
* ``python -m training.train_sr`` — the ×4 super-resolution zoo (needs scikit-image);
* :mod:`training.sr_data` — the SR training and evaluation data (scikit-image's bundled photos).

They use the installed library and write weights into ``src/lamcam/zoo/weights`` (see docs/zoo.md).
Not part of the ``lamcam`` package.
"""
