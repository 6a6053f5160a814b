"""The HTML report of a batch job: ``OUT/report.html`` with its plots under ``OUT/report/``.

:func:`write_report` turns a :class:`lamcam.batch.engines.BatchSummary` into a static page
(through :func:`lamcam.viz.report.write_index_html`): an overview of the run and the job's
parameters, the failed items with their errors, then per-method (CAM) or per-model (LAM) tables
of means and a few plots. The full table is ``results.parquet`` beside the page; the report only
summarises it.

Means ignore missing values (``None``, which is how NaN is stored); a cell without any value shows
``–``. Numbers are shown with three significant digits. The page holds no time stamp and the
plots are drawn in a fixed order, so the same rows give the same page. Plots use matplotlib's Agg
canvas directly (never pyplot) and are written atomically.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamcam.viz.report import ReportImage, Section, write_index_html

if TYPE_CHECKING:
    from lamcam.batch.engines import BatchSummary

__all__ = ["write_report"]

#: Where the plots go, relative to the output folder.
PLOT_DIR = "report"
#: Every plot file this module may write (a rerun removes the ones it does not write again).
PLOT_FILES = ("cam_localisation.png", "cam_area50.png", "cam_instances.png", "lam_di.png",
              "lam_di_psnr.png")
#: Failed items listed in the report (the rest are counted).
MAX_FAILURES = 200
#: The localisation columns of a CAM row, with their labels.
LOCALISATION = (("pointing_game", "pointing game"), ("energy_pointing", "energy pointing"),
                ("iou50", "IoU@50"), ("instance_coverage", "instance coverage"))
DASH = "–"
DPI = 110

_CAM_COLUMNS = (
    "Columns of results.parquet: one row per image × method (× rank with a top-k target). "
    "status is ok or failed (then error says why); target_index / target_class is the explained "
    "class, score its logit and probability its softmax probability; predicted_* is the model's "
    "top class. map_mean, map_std and map_area50 (share of pixels at or above half the maximum) "
    "describe the map, map_peak_row/col its maximum. With a *_mask.png ground truth: n_instances, "
    "pointing_game (the map's maximum lies on the object), energy_pointing (share of the map's mass "
    "on the object), iou50 (IoU of the region at or above half the maximum with the object) and "
    "instance_coverage (share of instances holding a local maximum of the map); localisation_note "
    "says why a mask was not used. seconds and worker say how long and where a row was computed."
)
_LAM_COLUMNS = (
    "Columns of results.parquet: one row per image × model × window (row, col: its top-left "
    "corner in SR pixels; window: its side; window_source and edge_energy: how it was chosen). "
    "status is ok or failed (then error says why). diffusion_index (DI, from the Gini coefficient "
    "of the map over all LR pixels; higher: the SR network uses more of the input) measures how "
    "spread the attribution is, pixels95 is the number of LR pixels holding 95% of it, "
    "completeness_error the relative error of the attribution's sum against the objective's change "
    "(objective_input − objective_baseline), local_psnr the PSNR (dB) of the SR "
    "output against the HR image inside the window (when there is one). sigma, kernel_size, steps "
    "and quadrature are the blur path; seconds and worker say how long and where a row was "
    "computed."
)


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    """A cell: ``–`` for a missing value, integers as they are, floats with 3 significant digits
    (whole numbers from 1000 on)."""
    if v is None or isinstance(v, bool):
        return DASH if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return DASH
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if 1000 <= abs(v) < 1e6:
            return f"{v:.0f}"
        return f"{v:.3g}"
    return str(v)


def _values(rows: Iterable[dict[str, Any]], col: str, finite: bool = False) -> list[float]:
    """The column's values, without missing ones (``None``, NaN) and, with ``finite``, infinite
    ones."""
    out = []
    for r in rows:
        v = r.get(col)
        if v is None or isinstance(v, bool):
            continue
        v = float(v)
        if math.isnan(v) or (finite and math.isinf(v)):
            continue
        out.append(v)
    return out


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _ordered(first: Iterable[Any], seen: Iterable[Any]) -> list[str]:
    """``first`` (the job's order) then any other value of ``seen``, sorted; without ``None``."""
    out = [str(v) for v in first if v is not None]
    out = list(dict.fromkeys(out))
    rest = sorted({str(v) for v in seen if v is not None} - set(out))
    return out + rest


def _short(name: str) -> str:
    """A model's label in a plot: a checkpoint path shows its file name."""
    return Path(name).name if ("/" in name or "\\" in name) else name


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(width, 8.5), height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out: Path, name: str, written: list[str]) -> str:
    from lamcam._files import atomic_save_figure

    fig.tight_layout()
    atomic_save_figure(out / PLOT_DIR / name, fig, dpi=DPI, format="png", facecolor="white")
    written.append(name)
    return f"{PLOT_DIR}/{name}"


def _grouped_bars(ax: Any, groups: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]]
                  ) -> None:
    """Bars of each series side by side within each group (missing values leave a gap)."""
    import numpy as np

    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for k, (label, vals) in enumerate(series):
        heights = [np.nan if v is None else v for v in vals]
        ax.bar(x - 0.4 + width * (k + 0.5), heights, width, label=label, color=f"C{k % 10}")
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20 if len(groups) > 4 else 0,
                       ha="right" if len(groups) > 4 else "center")


def _plot_cam_localisation(out: Path, methods: Sequence[str], means: dict[str, dict[str, float | None]],
                           written: list[str]) -> str:
    fig = _figure(3.5 + 1.2 * len(methods), 4.2)
    ax = fig.add_subplot()
    _grouped_bars(ax, methods, [(label, [means[m][col] for m in methods]) for col, label in LOCALISATION])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("method")
    ax.set_ylabel("mean over images with a mask")
    ax.set_title("Localisation metrics per method")
    ax.legend(fontsize="small", ncols=2, loc="upper right", framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "cam_localisation.png", written)


def _plot_cam_area(out: Path, methods: Sequence[str], means: dict[str, dict[str, float | None]],
                   written: list[str]) -> str:
    fig = _figure(3.5 + 0.9 * len(methods), 4.0)
    ax = fig.add_subplot()
    _grouped_bars(ax, methods, [("map_area50", [means[m]["map_area50"] for m in methods])])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("method")
    ax.set_ylabel("mean share of pixels ≥ half the maximum")
    ax.set_title("Map area (map_area50) per method")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "cam_area50.png", written)


def _plot_cam_instances(out: Path, methods: Sequence[str], rows: Sequence[dict[str, Any]],
                        written: list[str]) -> str | None:
    have = [r for r in rows if r.get("n_instances") is not None and _values([r], "instance_coverage")]
    counts = sorted({int(r["n_instances"]) for r in have})
    if not counts:
        return None
    images = {k: len({r["item_id"] for r in have if int(r["n_instances"]) == k}) for k in counts}
    series = []
    for m in methods:
        mine = [r for r in have if r.get("method") == m]
        series.append((m, [_mean(_values([r for r in mine if int(r["n_instances"]) == k],
                                         "instance_coverage")) for k in counts]))
    fig = _figure(3.5 + 0.25 * len(methods) * len(counts) + 0.6 * len(counts), 4.0)
    ax = fig.add_subplot()
    _grouped_bars(ax, [f"{k}\n({images[k]} image{'s' if images[k] != 1 else ''})" for k in counts],
                  series)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("instances in the mask")
    ax.set_ylabel("mean instance coverage")
    ax.set_title("Instance coverage by instance count")
    ax.legend(fontsize="small", title="method", loc="upper right", framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "cam_instances.png", written)


def _plot_lam_di(out: Path, models: Sequence[str], by_model: dict[str, list[dict[str, Any]]],
                 written: list[str]) -> str | None:
    import numpy as np

    data = [(i, _values(by_model[m], "diffusion_index")) for i, m in enumerate(models)]
    data = [(i, v) for i, v in data if v]
    if not data:
        return None
    fig = _figure(3.5 + 1.0 * len(models), 4.2)
    ax = fig.add_subplot()
    ax.boxplot([v for _, v in data], positions=[i + 1 for i, _ in data], widths=0.55,
               showfliers=False, medianprops={"color": "black"})
    rng = np.random.default_rng(0)  # a fixed jitter: the same rows draw the same picture
    for i, v in data:
        ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(v)), v, s=12, alpha=0.6, color=f"C{i % 10}",
                   zorder=3)
    ax.set_xticks(range(1, len(models) + 1))
    ax.set_xticklabels([_short(m) for m in models], rotation=20 if len(models) > 3 else 0,
                       ha="right" if len(models) > 3 else "center")
    ax.set_xlim(0.4, len(models) + 0.6)
    ax.set_xlabel("model")
    ax.set_ylabel("diffusion index (DI)")
    ax.set_title("DI distribution per model (one point per window)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "lam_di.png", written)


def _plot_lam_psnr(out: Path, models: Sequence[str], by_model: dict[str, list[dict[str, Any]]],
                   written: list[str]) -> str | None:
    points = []
    for i, m in enumerate(models):
        pairs = [(float(r["local_psnr"]), float(r["diffusion_index"])) for r in by_model[m]
                 if _values([r], "local_psnr", finite=True) and _values([r], "diffusion_index")]
        if pairs:
            points.append((i, m, pairs))
    if not points:
        return None
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    for i, m, pairs in points:
        ax.scatter([p for p, _ in pairs], [d for _, d in pairs], s=16, alpha=0.75,
                   color=f"C{i % 10}", label=f"{_short(m)} ({len(pairs)})")
    ax.set_xlabel("local PSNR against HR (dB)")
    ax.set_ylabel("diffusion index (DI)")
    ax.set_title("DI against local PSNR (one point per window)")
    ax.legend(fontsize="small", title="model (windows)", framealpha=0.9)
    ax.grid(alpha=0.3)
    return _save(fig, out, "lam_di_psnr.png", written)


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def _params(job: Any, kind: str) -> list[list[str]]:
    def get(name: str, default: Any = None) -> Any:
        return getattr(job, name, default)

    inputs = get("inputs")
    rows = [["inputs", str(len(inputs)) if inputs is not None else DASH]]
    if kind == "cam":
        rows += [["model", str(get("model", DASH))],
                 ["methods", ", ".join(map(str, get("methods") or [])) or DASH],
                 ["layer", str(get("layer") or "the model's default")],
                 ["target", str(get("target", "pred"))]]
        if get("arch"):
            rows.append(["arch", str(get("arch"))])
    elif kind == "lam":
        rows += [["models", ", ".join(map(str, get("models") or [])) or DASH],
                 ["windows", str(get("windows", DASH))],
                 ["window (SR pixels)", _fmt(get("window"))],
                 ["sigma", _fmt(get("sigma"))], ["kernel size", _fmt(get("kernel_size"))],
                 ["steps", _fmt(get("steps"))], ["quadrature", str(get("quadrature", DASH))]]
    return rows


def _overview(summary: Any, job: Any, kind: str, n_ok: int) -> Section:
    ips = summary.items_per_second
    table: list[list[Any]] = [
        ["", "value"],
        ["job", {"cam": "CAM job", "lam": "LAM survey"}.get(kind, kind or DASH)],
        ["engine", str(summary.engine)],
        ["items", str(summary.items)],
        ["done earlier", str(summary.skipped)],
        ["processed now", str(summary.processed)],
        ["failed", str(summary.failed)],
        ["rows (ok / failed)", f"{len(summary.rows)} ({n_ok} / {len(summary.rows) - n_ok})"],
        ["wall time of this run", f"{_fmt(float(summary.seconds))} s"],
        ["items per second (this run)", _fmt(float(ips))],
    ]
    table += _params(job, kind)
    text = []
    if summary.message:
        text.append(f"Note: {summary.message}")
    if n_ok == 0:
        text.append("No row succeeded: there is nothing to summarise beyond the failures below."
                    if summary.rows else "The table has no rows.")
    return Section("Overview", "\n\n".join(text), table=table)


def _failures(summary: Any) -> Section | None:
    """Failed items of the table, this run's first (``summary.errors``), then any failed item the
    table keeps from an earlier run whose item list differed."""
    errors: dict[str, str] = {}
    for r in summary.rows:
        if r.get("status") != "ok" and r.get("item_id") is not None:
            errors.setdefault(str(r["item_id"]), str(r.get("error") or "unknown error"))
    current = {str(k): str(e) for k, e in (summary.errors or {}).items()}
    for k, e in current.items():
        errors.setdefault(k, e)
    if not errors:
        return None
    # with errors given (or none failed), a failed row of another item is not one of this run's
    stale = ([k for k in errors if k not in current] if current or not summary.failed else [])
    order = [k for k in errors if k not in stale] + stale
    shown = order[:MAX_FAILURES]
    more = len(order) - len(shown)
    text = f"{len(errors)} item(s) failed; a rerun with the same configuration tries them again."
    if stale:
        text += (f" {len(stale)} of them (listed last) are not among this run's items: results.parquet "
                 "keeps them from an earlier run of the same configuration.")
    if more:
        text += f"\n\nThe first {len(shown)} are listed; {more} more are in results.parquet."
    return Section("Failures", text, table=[["item", "error"]] + [[k, errors[k]] for k in shown])


def _cam_sections(summary: Any, job: Any, ok: list[dict[str, Any]], written: list[str]
                  ) -> list[Section]:
    methods = _ordered(getattr(job, "methods", None) or [], (r.get("method") for r in ok))
    ranked = any((r.get("rank") or 1) > 1 for r in ok)
    top = [r for r in ok if (r.get("rank") or 1) == 1]
    by_method = {m: [r for r in top if r.get("method") == m] for m in methods}
    localised = any(_values(top, col) for col, _ in LOCALISATION)
    cols = ["score", "probability", "map_area50"] + ([c for c, _ in LOCALISATION] if localised else [])
    means = {m: {c: _mean(_values(rs, c)) for c in cols} for m, rs in by_method.items()}
    header = ["method", "images", "mean score", "mean probability", "mean map_area50"]
    if localised:
        header += ["images with a mask"] + [f"mean {label}" for _, label in LOCALISATION]
    table: list[list[Any]] = [header]
    for m in methods:
        rs = by_method[m]
        row = [m, str(len({r.get("item_id") for r in rs}))] + [_fmt(means[m][c]) for c in cols[:3]]
        if localised:
            masked = {r.get("item_id") for r in rs if any(_values([r], c) for c, _ in LOCALISATION)}
            row += [str(len(masked))] + [_fmt(means[m][c]) for c, _ in LOCALISATION]
        table.append(row)
    text = ("One row per method; means over the images it succeeded on (missing values are left "
            "out, – where there are none).")
    if ranked:
        text += (" The target is top-k: the means are over rank 1 (each image's top class); "
                 "results.parquet holds every rank.")
    if localised:
        text += (" Localisation metrics are means over the images that have a usable "
                 "*_mask.png ground truth.")
    else:
        text += " No image had a usable *_mask.png ground truth, so there are no localisation metrics."
    notes = sorted({str(r["localisation_note"]) for r in ok if r.get("localisation_note")})
    if notes:
        text += f"\n\n{len(notes)} distinct mask note(s), e.g.: {notes[0]}"
    sections = [Section("Methods", text, table=table)]
    images = []
    if localised:
        images.append(ReportImage(_plot_cam_localisation(summary.out, methods, means, written),
                                  alt="metric bars per method"))
        inst = _plot_cam_instances(summary.out, methods, top, written)
        if inst:
            images.append(ReportImage(inst, alt="instance coverage by instance count"))
    elif any(means[m]["map_area50"] is not None for m in methods):
        images.append(ReportImage(_plot_cam_area(summary.out, methods, means, written),
                                  alt="mean map_area50 per method"))
    if images:
        sections.append(Section("Plots", "", images=images))
    return sections


def _lam_sections(summary: Any, job: Any, rows: list[dict[str, Any]], ok: list[dict[str, Any]],
                  written: list[str]) -> list[Section]:
    models = _ordered(getattr(job, "models", None) or [], (r.get("model") for r in ok))
    by_model = {m: [r for r in ok if r.get("model") == m] for m in models}
    failed = {m: sum(1 for r in rows if r.get("status") != "ok" and r.get("model") == m)
              for m in models}
    has_psnr = any(r.get("local_psnr") is not None for r in ok)
    header = ["model", "windows", "failed", "mean DI", "median DI", "mean pixels95",
              "mean completeness error"] + (["mean local PSNR (dB)"] if has_psnr else [])
    table: list[list[Any]] = [header]
    n_inf = 0
    for m in models:
        rs = by_model[m]
        di = _values(rs, "diffusion_index")
        row = [m, str(len(rs)), str(failed[m]), _fmt(_mean(di)), _fmt(_median(di)),
               _fmt(_mean(_values(rs, "pixels95"))), _fmt(_mean(_values(rs, "completeness_error")))]
        if has_psnr:
            n_inf += len(_values(rs, "local_psnr")) - len(_values(rs, "local_psnr", finite=True))
            row.append(_fmt(_mean(_values(rs, "local_psnr", finite=True))))
        table.append(row)
    text = ("One row per model, in the job's order; windows: its successful windows, failed: its "
            "failed rows. Means and medians leave missing values out (– where there are none).")
    if has_psnr:
        text += (" Local PSNR is against the HR image inside the window, where there is one"
                 + (f"; {n_inf} window(s) identical to the HR image (infinite PSNR) are left out of "
                    "its mean and of the scatter plot." if n_inf else "."))
    sections = [Section("Models", text, table=table)]
    images = []
    di_plot = _plot_lam_di(summary.out, models, by_model, written)
    if di_plot:
        images.append(ReportImage(di_plot, alt="DI distribution per model"))
    if has_psnr:
        psnr_plot = _plot_lam_psnr(summary.out, models, by_model, written)
        if psnr_plot:
            images.append(ReportImage(psnr_plot, alt="DI against local PSNR"))
    if images:
        sections.append(Section("Plots", "", images=images))
    return sections


def write_report(summary: BatchSummary, job: Any) -> Path:
    """Write ``summary.out / "report.html"`` (plots under ``summary.out / "report/"``).

    Args:
        summary: the run's :class:`lamcam.batch.engines.BatchSummary` (its ``rows`` are every
            item's latest rows, also those of earlier runs).
        job: the :class:`lamcam.batch.jobs.CAMJob` or :class:`lamcam.batch.jobs.LAMSurvey` (its
            parameters and its order of methods / models).

    Returns:
        The path of ``report.html``.
    """
    out = Path(summary.out)
    kind = str(getattr(job, "kind", "") or "")
    rows = list(summary.rows)
    ok = [r for r in rows if r.get("status") == "ok"]
    written: list[str] = []
    sections = [_overview(summary, job, kind, len(ok))]
    fail = _failures(summary)
    if fail is not None:
        sections.append(fail)
    if ok and kind == "cam":
        sections += _cam_sections(summary, job, ok, written)
    elif ok and kind == "lam":
        sections += _lam_sections(summary, job, rows, ok, written)
    if ok:
        columns = {"cam": _CAM_COLUMNS, "lam": _LAM_COLUMNS}.get(kind, "")
        sections.append(Section(
            "Full table",
            "The full table, one row per result with every parameter, is results.parquet in this "
            "folder (read it with pyarrow, pandas or lamcam.batch.read_table)."
            + (f"\n\n{columns}" if columns else "")))
    for name in PLOT_FILES:  # plots of an earlier run that this one did not draw
        if name not in written:
            (out / PLOT_DIR / name).unlink(missing_ok=True)
    label = {"cam": "CAM", "lam": "LAM"}.get(kind, kind)
    subtitle = (f"{label} job in {out.name or out}: {summary.items} item(s), {len(rows)} row(s), "
                f"{summary.engine} engine")
    return write_index_html(out, sections, title=f"lamcam batch report ({label})".replace(" ()", ""),
                            subtitle=subtitle, thumbnails=False, filename="report.html")
