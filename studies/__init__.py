"""Studies that test the papers' claims on lamcam's own reference models.

Each study is one command, ``python -m studies.NAME``, that resumes when re-run, and
publishes its tables and figures into ``docs/results.md`` (see :mod:`studies._common`):

* ``cam_compare`` — CAM vs Grad-CAM vs Grad-CAM++ (and guided variants) on multi-instance shapes;
* ``sanity`` — cascading model randomisation for every method;
* ``lam_zoo`` — LAM across the SR zoo: Diffusion Index, PSNR, receptive field, content;
* ``distill`` — a student trained with Grad-CAM++ explanation matching (SPEC §4);
* ``video`` — Grad-CAM vs Grad-CAM++ on a Conv3d classifier of moving-shape clips;
* ``caption`` — explaining a whole caption of an image → token model.
"""

STUDIES: tuple[str, ...] = ("cam_compare", "sanity", "lam_zoo", "distill", "video", "caption")
