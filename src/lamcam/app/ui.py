"""The explorer's pages (Gradio 6): LAM (click a patch, see its LAM per model) and CAM.

The pages only collect choices and show results; the work is :mod:`lamcam.app.engine`'s.
Errors the user can fix are raised as ``gr.Error`` (a message box in the page); the server
goes on serving.

No ``from __future__ import annotations`` here: Gradio finds the ``gr.Request``,
``gr.SelectData`` and ``gr.Progress`` parameters of the event functions from their evaluated
annotations.
"""

from pathlib import Path
from typing import Any

from lamcam._files import md_table
from lamcam.app import engine as E

__all__ = ["build_app", "CSS"]

#: Page styling, passed to ``launch(css=...)`` (Gradio 6 takes theme and CSS there).
CSS = """
#lam-view img, #cam-input img { image-rendering: pixelated; cursor: crosshair; }
#lam-window, #lam-status, #cam-status { font-family: ui-monospace, monospace; font-size: 0.9em; }
.lamcam-table table { font-size: 0.9em; }
"""

_CHECKPOINT_TYPES = [".safetensors", ".pth", ".pt", ".ckpt", ".bin"]
_IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"]


def _paths(files: Any) -> list[str]:
    if files is None:
        return []
    if isinstance(files, str | Path):
        return [str(files)]
    return [str(getattr(f, "name", f)) for f in files]


def _clear() -> None:
    """An event output of ``None``: empties an upload box."""
    return None


def build_app(files: E.SessionFiles, limits: E.Limits | None = None, *, lam_workers: int = 1,
              cam_workers: int = 2, cache: E.ModelCache | None = None) -> Any:
    """The ``gr.Blocks`` of ``lamcam serve`` (not launched).

    Args:
        files: where every session's outputs go (see :class:`lamcam.app.engine.SessionFiles`).
        limits: upload bounds in bytes and pixels.
        lam_workers, cam_workers: how many LAM / CAM runs compute at once; more wait in the
            queue, and the page shows their place in it.
        cache: the model cache shared by all sessions (a new one by default).
    """
    import gradio as gr

    from lamcam.cam import METHODS
    from lamcam.integrate import QUADRATURES
    from lamcam.lam import LAM

    limits = limits or E.Limits()
    cache = cache or E.ModelCache()
    lr_images = E.bundled_lr_images()
    cam_images = E.bundled_cam_images()
    sr_models = E.bundled_models("sr")
    classifiers = E.bundled_models("classification")

    def fail(e: BaseException) -> gr.Error:
        return gr.Error(E.user_message(e) if not isinstance(e, E.AppError) else str(e),
                        duration=None, print_exception=False)

    # ---------------------------------------------------------------- LAM page
    def lam_models(choices: list[str] | None, uploads: Any) -> list[tuple[str, Any, bool]]:
        specs = list(choices or []) + _paths(uploads)
        if not specs:
            raise E.AppError("choose at least one SR model (or upload a checkpoint)")
        names = E.model_names(specs)
        out = []
        for name, spec in zip(names, specs, strict=True):
            model, new = cache.get(spec, max_bytes=limits.checkpoint_bytes)
            out.append((name, model, new))
        return out

    def lam_images(state: dict[str, Any], models: list[tuple[str, Any, bool]]) -> dict[str, Any]:
        modes = {E.input_mode(m) for _, m, _ in models}
        return {mode: E.load_lr_image(state["image"], mode, limits, uploaded=state["uploaded"])
                for mode in modes}

    def prepare(image_choice: str | None, upload: Any, choices: list[str] | None, uploads: Any,
                window: float, state: dict[str, Any] | None) -> tuple[Any, str, str, dict]:
        """A new image or model set: load (cached), check the scale, show the image at SR size."""
        state = dict(state or {})
        try:
            up = _paths(upload)
            if up:
                path, name, uploaded = up[0], Path(up[0]).name, True
            elif image_choice in lr_images:
                path, name, uploaded = str(lr_images[image_choice]), image_choice, False
            else:
                raise E.AppError("choose a bundled image or upload one")
            models = lam_models(choices, uploads)
            new = {"image": path, "image_name": name, "uploaded": uploaded}
            images = lam_images(new, models)
            scales = {}
            for mname, model, _ in models:
                x = images[E.input_mode(model)]
                try:
                    scales[mname] = LAM(model, progress=False).scale_of(x)
                except (ValueError, RuntimeError, TypeError) as e:
                    raise E.AppError(f"{mname} cannot run on this image: {E.user_message(e)}") from e
            if len(set(scales.values())) > 1:
                raise E.AppError("the models have different scales (" + ", ".join(
                    f"{k} x{v}" for k, v in scales.items()) + "); compare models of one scale")
        except E.AppError as e:
            raise fail(e) from e
        if uploaded and E.image_channels(path) == 1 and any(
                E.input_mode(m) == "RGB" for _, m, _ in models):
            gr.Warning("The image is grayscale and the model takes RGB: its one channel is "
                       "repeated into R, G and B.")
        scale = next(iter(scales.values()))
        x = next(iter(images.values()))
        sr_hw = [int(x.shape[-2]) * scale, int(x.shape[-1]) * scale]
        new.update(scale=scale, sr_hw=sr_hw, zoom=E.view_zoom(sr_hw),
                   specs=list(choices or []) + _paths(uploads))
        same = state.get("image") == path and state.get("sr_hw") == sr_hw
        new["centre"] = state.get("centre") if same else None  # new models keep the window
        loaded = [n for n, _, fresh in models if fresh]
        status = (f"{name}: LR {x.shape[-1]}x{x.shape[-2]}, SR {sr_hw[1]}x{sr_hw[0]} (x{scale}); "
                  f"models {', '.join(n for n, _, _ in models)}"
                  + (f" (loaded now: {', '.join(loaded)})" if loaded else " (all cached)"))
        view, text = draw(new, window, x)
        return view, text, status, new

    def window_of(state: dict[str, Any], window: float) -> tuple[int, int]:
        """The window's top-left (SR pixels) for the clicked centre and the current size."""
        x, y = state["centre"]
        return E.place_window(x, y, int(window), state["sr_hw"])

    def draw(state: dict[str, Any], window: float, image: Any = None) -> tuple[Any, str]:
        """The view with the window's box (if one was placed) and the coordinates line."""
        if image is None:
            image = E.load_lr_image(state["image"], "RGB", limits, uploaded=state["uploaded"])
        if state.get("centre") is None:
            return (E.window_view(image, state["scale"], None, state["zoom"]),
                    "Click the image to place the window (the click is its centre).")
        row, col = window_of(state, window)
        return (E.window_view(image, state["scale"], (row, col, int(window)), state["zoom"]),
                E.window_text(row, col, int(window), state["scale"]))

    def click(state: dict[str, Any] | None, window: float, evt: gr.SelectData) -> tuple[Any, str,
                                                                                         dict]:
        """Place the window at once (red box); the LAM run follows."""
        if not state or "scale" not in state:
            raise fail(E.AppError("choose an image and a model first"))
        zoom = int(state["zoom"])
        centre = [int(v) // zoom for v in evt.index[:2]]  # display pixel -> SR pixel (x, y)
        state = {**state, "centre": centre}
        try:
            view, text = draw(state, window)
        except E.AppError as e:
            raise fail(e) from e
        return view, text, state

    def resize(state: dict[str, Any] | None, window: float) -> tuple[Any, str]:
        """A new window size: the box is redrawn around the same centre."""
        if not state or "scale" not in state:
            return gr.update(), gr.update()
        try:
            return draw(state, window)
        except E.AppError as e:
            raise fail(e) from e

    def explain(state: dict[str, Any] | None, window: float, sigma: float, steps: float,
                quadrature: str, request: gr.Request,
                progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:  # noqa: B008
        if not state or state.get("centre") is None:
            raise fail(E.AppError("click the image to place the window first"))
        try:
            options = E.LAMOptions(window=int(window), sigma=float(sigma), steps=int(steps),
                                   quadrature=quadrature)
            options.check()
            row, col = window_of(state, options.window)
            specs = state["specs"]
            names = E.model_names(specs)
            models = []
            for name, spec in zip(names, specs, strict=True):
                model, _ = cache.get(spec, max_bytes=limits.checkpoint_bytes)
                models.append((name, model, False))
            images = lam_images(state, models)
            out = files.new_run(request.session_hash, "lam")
            run = E.run_lam([(n, m) for n, m, _ in models], images, state["image_name"], row, col,
                            options, out,
                            progress=lambda i, n, text: progress((i, n), desc=text), step_bars=True)
        except E.AppError as e:
            raise fail(e) from e
        table = md_table(E.LAMRun.HEADER, run.rows)
        head = (f"**{state['image_name']}**, {E.window_text(row, col, options.window, state['scale'])}"
                f"; σ {options.sigma:g}, {options.steps} steps ({options.quadrature})")
        return f"{head}\n\n{table}", run.comparison, run.files

    def explain_on_click(auto: bool, state: dict[str, Any] | None, window: float, sigma: float,
                         steps: float, quadrature: str, request: gr.Request,
                         progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:  # noqa: B008
        if not auto:
            return (gr.update(),) * 3
        return explain(state, window, sigma, steps, quadrature, request, progress)

    # ---------------------------------------------------------------- CAM page
    def cam_model(choice: str | None, upload: Any) -> tuple[Any, str]:
        up = _paths(upload)
        spec = up[0] if up else choice
        if not spec:
            raise E.AppError("choose a classifier or upload a checkpoint")
        model, _ = cache.get(spec, max_bytes=limits.checkpoint_bytes)
        return model, spec

    def cam_model_changed(choice: str | None, upload: Any) -> tuple[Any, Any, str]:
        try:
            model, spec = cam_model(choice, upload)
            layers, default = E.layer_choices(model)
        except E.AppError as e:
            raise fail(e) from e
        except (ValueError, RuntimeError, TypeError) as e:
            raise fail(E.AppError(f"the model cannot run on a dummy input: {E.user_message(e)}")
                       ) from e
        classes = [str(c) for c in (E.model_meta(model).get("classes") or [])]
        text = (f"{Path(spec).name}: {type(model).__name__}, {len(layers)} layers with a map; "
                f"default {default}")
        return (gr.update(choices=layers, value=default),
                gr.update(choices=classes, value=classes[0] if classes else None), text)

    def cam_image(choice: str | None, upload: Any) -> tuple[str, str, bool]:
        up = _paths(upload)
        if up:
            return up[0], Path(up[0]).name, True
        if choice in cam_images:
            return str(cam_images[choice]), choice, False
        raise E.AppError("choose a bundled image or upload one")

    def cam_preview(choice: str | None, upload: Any) -> Any:
        from lamcam.io import load_image

        try:
            path, name, uploaded = cam_image(choice, upload)
            if uploaded:
                E.check_upload(path, limits.upload_bytes, "image")
            x = load_image(path, max_pixels=limits.image_pixels)
        except E.AppError as e:
            raise fail(e) from e
        except ValueError as e:  # ImageLoadError and friends
            raise fail(E.AppError(E.user_message(e))) from e
        from lamcam.viz import to_pil

        im = to_pil(x)
        return im.resize((max(256, im.width), max(256, im.height)), 0) if im.width < 256 else im

    def cam_explain(choice: str | None, upload: Any, img_choice: str | None, img_upload: Any,
                    methods: list[str], layer: str | None, target_kind: str, k: float,
                    class_name: str | None, request: gr.Request,
                    progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        from lamcam.targets import TopK

        try:
            model, spec = cam_model(choice, upload)
            path, name, uploaded = cam_image(img_choice, img_upload)
            x, fit = E.load_cam_image(path, model, limits, uploaded=uploaded)
            classes = [str(c) for c in (E.model_meta(model).get("classes") or [])]
            if target_kind == "top-k":
                target: Any = TopK(max(1, int(k)))
            elif target_kind == "class":
                if class_name in classes:
                    target = classes.index(class_name)
                elif class_name is not None and str(class_name).strip().isdigit():
                    target = int(str(class_name).strip())
                else:
                    raise E.AppError(f"unknown class {class_name!r}; choose one of the list")
            else:
                target = None
            out = files.new_run(request.session_hash, "cam")
            run = E.run_cam(model, x, name, list(methods or []), layer or None, target, out,
                            progress=lambda i, n, text: progress((i, n), desc=text))
        except E.AppError as e:
            raise fail(e) from e
        note = f" ({fit})" if fit else ""
        head = f"**{name}**{note}; layer {layer or 'auto'}; target {target_kind}"
        return run.overlays, head + "\n\n" + md_table(E.CAMRun.HEADER, run.rows), run.files

    def forget(request: gr.Request) -> None:
        files.drop(request.session_hash)

    # ---------------------------------------------------------------- layout
    with gr.Blocks(title="lamcam explorer", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# lamcam explorer\nWhy did the network answer as it did? **LAM**: click a "
                    "patch of an image and see which LR pixels each SR network used. **CAM**: "
                    "see where a classifier looked.")
        with gr.Tabs():
            with gr.Tab("LAM (super-resolution)", id="lam"):
                state = gr.State({})
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        img_choice = gr.Dropdown(list(lr_images), value="chelsea",
                                                 label="Bundled LR image", elem_id="lam-image")
                        img_upload = gr.File(label=f"…or upload an LR image (≤ {limits.lam_pixels:,} "
                                             "pixels)", file_types=_IMAGE_TYPES,
                                             elem_id="lam-upload")
                        model_choice = gr.CheckboxGroup(sr_models, value=["sr_fsrcnn", "sr_edsr"],
                                                        label="Bundled SR models",
                                                        elem_id="lam-models")
                        model_upload = gr.File(label="…and/or upload SR checkpoints (.safetensors, "
                                               ".pth; any spandrel architecture)",
                                               file_count="multiple", file_types=_CHECKPOINT_TYPES,
                                               elem_id="lam-checkpoints")
                        with gr.Accordion("Options", open=True):
                            window = gr.Slider(4, 64, value=16, step=1, label="window (SR px)",
                                               elem_id="lam-window-size")
                            sigma = gr.Number(1.2, label="σ of the blur path", minimum=0.01,
                                              maximum=50, elem_id="lam-sigma")
                            steps = gr.Slider(1, 200, value=50, step=1, label="steps",
                                              elem_id="lam-steps")
                            quadrature = gr.Radio(list(QUADRATURES), value="riemann",
                                                  label="quadrature", elem_id="lam-quadrature")
                            auto = gr.Checkbox(True, label="explain on click", elem_id="lam-auto")
                        run_btn = gr.Button("Explain window", variant="primary",
                                            elem_id="lam-run")
                    with gr.Column(scale=2):
                        view = gr.Image(label="Click a patch: it becomes the window's centre "
                                        "(the LR image at SR size; top-left is row 0, col 0)",
                                        type="pil", interactive=False, format="png",
                                        elem_id="lam-view", height=E.VIEW_PIXELS + 24)
                        win_text = gr.Markdown("", elem_id="lam-window")
                        status = gr.Markdown("", elem_id="lam-status")
                table = gr.Markdown("", elem_id="lam-table", elem_classes="lamcam-table")
                comparison = gr.Image(label="LAM per model: the paper's panels and the DI, with "
                                      "the DI bar chart across models", type="filepath",
                                      interactive=False, elem_id="lam-figure", format="png")
                downloads = gr.File(label="Downloads: PNG figures, .npy attributions, JSON with "
                                    "every parameter", file_count="multiple", elem_id="lam-files",
                                    interactive=False)

            with gr.Tab("CAM (classifiers)", id="cam"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        cam_choice = gr.Dropdown(classifiers, value=classifiers[0] if classifiers
                                                 else None, label="Bundled classifier",
                                                 elem_id="cam-model")
                        cam_upload = gr.File(label="…or upload a classifier checkpoint",
                                             file_types=_CHECKPOINT_TYPES, elem_id="cam-checkpoint")
                        cam_img_choice = gr.Dropdown(list(cam_images), value="3_cross",
                                                     label="Bundled image", elem_id="cam-image")
                        cam_img_upload = gr.File(label="…or upload an image",
                                                 file_types=_IMAGE_TYPES, elem_id="cam-upload")
                        methods = gr.CheckboxGroup(list(METHODS), value=["gradcam", "gradcam++"],
                                                   label="Methods", elem_id="cam-methods")
                        layer = gr.Dropdown([], label="Layer (default marked)", elem_id="cam-layer",
                                            allow_custom_value=False)
                        target_kind = gr.Radio(["predicted", "top-k", "class"], value="predicted",
                                               label="Target", elem_id="cam-target")
                        k = gr.Number(3, label="k (top-k)", minimum=1, maximum=20, precision=0,
                                      elem_id="cam-k")
                        class_name = gr.Dropdown([], label="class (by name)", elem_id="cam-class",
                                                 allow_custom_value=True)
                        cam_btn = gr.Button("Explain", variant="primary", elem_id="cam-run")
                    with gr.Column(scale=2):
                        cam_input = gr.Image(label="Input", type="pil", interactive=False,
                                             elem_id="cam-input", height=280, format="png")
                        cam_status = gr.Markdown("", elem_id="cam-status")
                        overlays = gr.Gallery(label="Overlays", columns=4, elem_id="cam-overlays",
                                              object_fit="contain", height="auto", format="png")
                        cam_table = gr.Markdown("", elem_id="cam-table", elem_classes="lamcam-table")
                        cam_files = gr.File(label="Downloads: overlays (PNG), maps (.npy), JSON",
                                            file_count="multiple", interactive=False,
                                            elem_id="cam-files")

        # ------------------------------------------------------------ events
        prep_in = [img_choice, img_upload, model_choice, model_upload, window, state]
        prep_out = [view, win_text, status, state]
        light: dict[str, Any] = {"concurrency_limit": None, "show_progress": "minimal"}
        demo.load(prepare, prep_in, prep_out, **light)
        for comp in (img_choice, model_choice):
            comp.input(prepare, prep_in, prep_out, **light)
        for comp in (img_upload, model_upload):
            # a refused upload is shown, then removed from its box (the page goes back to the
            # bundled choices instead of repeating the error on every change)
            comp.change(prepare, prep_in, prep_out, **light).failure(
                _clear, None, [comp], queue=False)
        lam_in = [state, window, sigma, steps, quadrature]
        lam_out = [table, comparison, downloads]
        # the progress bar shows under the image too, where the user just clicked
        lam_kw: dict[str, Any] = {"concurrency_limit": lam_workers, "concurrency_id": "lam",
                                  "show_progress_on": [status, table, comparison]}
        # a click places the box at once; the LAM run follows as a queued event
        view.select(click, [state, window], [view, win_text, state], **light).success(
            explain_on_click, [auto, *lam_in], lam_out, **lam_kw)
        window.change(resize, [state, window], [view, win_text], **light)
        run_btn.click(explain, lam_in, lam_out, **lam_kw)

        cam_kw: dict[str, Any] = {"concurrency_limit": cam_workers, "concurrency_id": "cam"}
        demo.load(cam_model_changed, [cam_choice, cam_upload], [layer, class_name, cam_status],
                  **light)
        demo.load(cam_preview, [cam_img_choice, cam_img_upload], [cam_input], **light)
        cam_choice.input(cam_model_changed, [cam_choice, cam_upload], [layer, class_name,
                                                                       cam_status], **light)
        cam_upload.change(cam_model_changed, [cam_choice, cam_upload], [layer, class_name,
                                                                        cam_status], **light
                          ).failure(_clear, None, [cam_upload], queue=False)
        cam_img_choice.input(cam_preview, [cam_img_choice, cam_img_upload], [cam_input], **light)
        cam_img_upload.change(cam_preview, [cam_img_choice, cam_img_upload], [cam_input], **light
                              ).failure(_clear, None, [cam_img_upload], queue=False)
        cam_btn.click(cam_explain, [cam_choice, cam_upload, cam_img_choice, cam_img_upload,
                                    methods, layer, target_kind, k, class_name],
                      [overlays, cam_table, cam_files], **cam_kw)
        demo.unload(forget)
    return demo

