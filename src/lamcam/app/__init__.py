"""``lamcam serve``: the web explorer (Gradio), LAM and CAM pages.

Needs the ``app`` extra: ``pip install 'lamcam[app]'``. The computations live in
:mod:`lamcam.app.engine` (no web framework needed); the pages in :mod:`lamcam.app.ui`.

Example:
    >>> from lamcam.app import serve  # doctest: +SKIP
    >>> serve(port=7860)              # doctest: +SKIP  (blocks; Ctrl-C stops and cleans up)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lamcam.app.engine import AppError, Limits, ModelCache, SessionFiles

__all__ = ["serve", "import_gradio", "Limits", "AppError", "ModelCache", "SessionFiles"]

#: The Gradio major version the pages are written for (``pip install 'lamcam[app]'`` pins it).
GRADIO_MAJOR = 6


def import_gradio():  # noqa: ANN201
    """``gradio``, or an ImportError that names the install command."""
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError("the lamcam explorer needs Gradio: pip install 'lamcam[app]'") from e
    major = int(gr.__version__.split(".")[0])
    if major != GRADIO_MAJOR:
        raise ImportError(f"the lamcam explorer is written for Gradio {GRADIO_MAJOR}.x, found "
                          f"{gr.__version__}: pip install 'lamcam[app]'")
    return gr


def serve(host: str = "127.0.0.1", port: int = 7860, *, limits: Limits | None = None,
          lam_workers: int = 1, cam_workers: int = 2, max_queue: int = 64,
          temp_dir: str | os.PathLike | None = None, quiet: bool = False) -> int:
    """Run the explorer until Ctrl-C; returns 0 after a clean shutdown.

    Args:
        host: the interface to bind; ``127.0.0.1`` (the default) serves this machine only, use
            ``0.0.0.0`` to serve a network.
        port: the TCP port.
        limits: upload bounds in bytes and pixels (:class:`lamcam.app.engine.Limits`).
        lam_workers, cam_workers: runs computed at once per page; others queue.
        max_queue: requests that may wait; more are refused with "queue full".
        temp_dir: the root for every session's files (a fresh temporary directory by default);
            removed on shutdown.
    """
    limits = limits or Limits()
    files = SessionFiles(temp_dir)
    # Gradio reads its cache location when it is imported: uploads and served files stay under
    # our root too, so one rmtree on shutdown removes everything the server wrote.
    os.environ["GRADIO_TEMP_DIR"] = str(files.root / "gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import_gradio()
        from lamcam.app.ui import CSS, build_app

        demo = build_app(files, limits, lam_workers=lam_workers, cam_workers=cam_workers)
        demo.queue(max_size=max_queue, default_concurrency_limit=1)
        if not quiet:
            print(f"lamcam explorer on http://{host}:{port}  (session files in {files.root}; "
                  "Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            demo.launch(server_name=host, server_port=port, max_file_size=max(
                limits.upload_bytes, limits.checkpoint_bytes), allowed_paths=[str(files.root)],
                css=CSS, ssr_mode=False, quiet=True, show_error=True, inbrowser=False,
                footer_links=["gradio"])
        except KeyboardInterrupt:
            pass
        finally:
            demo.close()
    finally:
        files.close()
    if not quiet:
        print(f"lamcam explorer stopped; {Path(files.root)} removed", file=sys.stderr, flush=True)
    return 0
