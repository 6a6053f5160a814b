"""Study (f): explaining a whole caption with a callable target.

Claim (Grad-CAM, Selvaraju et al. 2017, image captioning; Grad-CAM++, Chattopadhay et al. 2018,
same use): the gradient map of a caption's log-probability w.r.t. the encoder's last conv layer
localises the objects the caption mentions, and a phrase's map localises that phrase's objects.

We train our own captioner (:class:`studies.captions.ShapesCaptioner`) on generated images of one
or two coloured groups of shapes, then on held-out images explain

* the whole ground-truth caption: target = sum of the log-probabilities of its tokens
  (teacher forcing), scored against the union of all instances;
* on two-group images, each group's phrase ("two red squares"): target = sum of the
  log-probabilities of only its three tokens, scored against the mentioned group and, as
  baselines, against the other group and by the other phrase's map,

with Grad-CAM and Grad-CAM++ on ``encoder.relu4``. Explanations run in float64, a precaution so
that very confident tokens (softmax saturating at 1 in float32) still give exact gradients.

Run: ``python -m studies.caption [--quick] [--threads 2]``.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import lamcam
from lamcam.metrics import energy_pointing_game, instance_coverage, pointing_game
from studies._common import (
    StudyRun,
    command_line,
    csv_text,
    md_table,
    publish,
    setup_from_args,
    study_parser,
)
from studies.captions import (
    PAD,
    CaptionDataset,
    ShapesCaptioner,
    TeacherForced,
    make_caption_dataset,
    phrase_positions,
    token_logprob_target,
    token_logprobs,
)

NAME = "caption"
TITLE = "(f) Explaining a whole caption (callable target)"
METHODS: dict[str, type[lamcam.cam.BaseCAM]] = {
    "Grad-CAM": lamcam.GradCAM,
    "Grad-CAM++": lamcam.GradCAMPlusPlus,
}

FULL: dict[str, Any] = {
    "size": 64,
    "train_seed": 7100,
    "eval_seed": 7200,
    "n_train": 16000,
    "epochs": 6,
    "batch": 64,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "widths": [16, 32, 64, 128],
    "hidden": 128,
    "torch_seed": 0,
    "n_acc": 1000,
    "n_explain": 300,
    "chunk": 50,
    "explain_dtype": "float64",
    "n_figure": 6,
}
QUICK: dict[str, Any] = {**FULL, "n_train": 128, "epochs": 1, "n_acc": 16, "n_explain": 12, "chunk": 6,
                         "n_figure": 2}


# --------------------------------------------------------------------------------------------
# training and accuracy
# --------------------------------------------------------------------------------------------
def _build(cfg: dict[str, Any]) -> ShapesCaptioner:
    return ShapesCaptioner(widths=tuple(cfg["widths"]), hidden=cfg["hidden"])


def caption_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced cross-entropy of ``tokens (B, L)`` given ``images (B, 3, H, W)`` (pads ignored)."""
    logits = model(images, tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=PAD)


class AdamW:
    """Plain AdamW (decoupled weight decay, bias-corrected moments) with a one-cycle learning rate:
    linear warm-up over the first ``warmup`` share of ``total`` steps, then cosine decay to 0.

    Written out here because constructing any ``torch.optim`` optimiser imports ``torch._dynamo``,
    which takes several seconds, more than the whole ``--quick`` run otherwise needs.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], lr: float, total: int, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, warmup: float = 0.15) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.total, self.wd, self.betas, self.eps = lr, total, weight_decay, betas, eps
        self.warm = max(1, round(warmup * total))
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def rate(self, step: int) -> float:
        """The learning rate at (1-based) ``step``."""
        if step <= self.warm:
            return self.lr * step / self.warm
        frac = (step - self.warm) / max(1, self.total - self.warm)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter with a gradient; clears the gradients."""
        self.t += 1
        lr, (b1, b2) = self.rate(self.t), self.betas
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.mul_(1 - lr * self.wd)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**self.t))
            p.grad = None


def train(cfg: dict[str, Any], data: CaptionDataset) -> dict[str, torch.Tensor]:
    """Train a captioner on ``data`` (seeded; random rot90/flip augmentation keeps captions valid).

    Returns the state dict plus ``"_loss"``: the mean training loss per epoch ``(epochs,)``.
    """
    torch.manual_seed(cfg["torch_seed"])
    gen = torch.Generator().manual_seed(cfg["torch_seed"])
    model = _build(cfg)
    n, bs = len(data), cfg["batch"]
    steps = math.ceil(n / bs)
    opt = AdamW(list(model.parameters()), lr=cfg["lr"], total=cfg["epochs"] * steps,
                weight_decay=cfg["weight_decay"])
    losses = []
    model.train()
    for epoch in range(cfg["epochs"]):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        bar = tqdm(range(steps), desc=f"train captioner {epoch + 1}/{cfg['epochs']}", leave=False)
        for s in bar:
            idx = perm[s * bs:(s + 1) * bs]
            x = torch.rot90(data.images[idx], int(torch.randint(4, (1,), generator=gen)), (2, 3))
            if bool(torch.rand(1, generator=gen) < 0.5):
                x = x.flip(3)
            loss = caption_loss(model, x, data.tokens[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach())
            bar.set_postfix(loss=f"{total / (s + 1):.3f}")
        losses.append(total / steps)
    model.eval()
    return {**model.state_dict(), "_loss": torch.tensor(losses)}


@torch.no_grad()
def accuracy(model: ShapesCaptioner, data: CaptionDataset, batch: int = 250) -> dict[str, Any]:
    """Greedy exact-caption accuracy (all / one-group / two-group images), teacher-forced token
    accuracy and mean caption log-probability on ``data``; also the per-image exact flags."""
    exact, tok_ok, tok_n, logp = [], 0, 0, []
    for i in range(0, len(data), batch):
        x, t = data.images[i:i + batch], data.tokens[i:i + batch]
        exact += (model.generate(x, t.shape[1]) == t).all(1).tolist()
        logits = model(x, t[:, :-1])
        keep = t[:, 1:] != PAD
        tok_ok += int(((logits.argmax(-1) == t[:, 1:]) & keep).sum())
        tok_n += int(keep.sum())
        logp += (token_logprobs(logits, t[:, 1:]) * keep).sum(1).tolist()
    groups = np.array([len(s.groups) for s in data.samples])
    ex = np.array(exact, dtype=bool)
    return {
        "exact": float(ex.mean()),
        "exact_one_group": float(ex[groups == 1].mean()) if (groups == 1).any() else float("nan"),
        "exact_two_groups": float(ex[groups == 2].mean()) if (groups == 2).any() else float("nan"),
        "token": tok_ok / tok_n,
        "caption_logp": float(np.mean(logp)),
        "n": len(data),
        "n_one_group": int((groups == 1).sum()),
        "exact_per_image": [bool(e) for e in ex],
    }


# --------------------------------------------------------------------------------------------
# explanations
# --------------------------------------------------------------------------------------------
def caption_weights(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` tokens -> ``(B, L-1)`` bool: every scored position of the caption (words,
    ``and``, ``<eos>``), aligned with ``tokens[:, 1:]``."""
    return tokens[:, 1:] != PAD


#: Token subsets of a phrase ("count colour shape") explained as variants; "phrase" is the main one.
VARIANTS: dict[str, tuple[int, ...]] = {
    "phrase": (0, 1, 2), "colour + shape": (1, 2), "count": (0,), "colour": (1,), "shape": (2,),
}


def phrase_weights(data: CaptionDataset, rows: Sequence[int], g: int, words: Sequence[int] = (0, 1, 2)
                   ) -> torch.Tensor:
    """``(len(rows), L-1)`` bool: the positions of group ``g``'s phrase (only its ``words``: 0 = count,
    1 = colour, 2 = shape), aligned with ``tokens[:, 1:]``."""
    w = torch.zeros(len(rows), data.tokens.shape[1] - 1, dtype=torch.bool)
    for r, i in enumerate(rows):
        pos = phrase_positions(data.samples[i].groups, g)
        for k in words:
            w[r, pos[k] - 1] = True
    return w


def explain_maps(model: ShapesCaptioner, images: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor,
                 method: type[lamcam.cam.BaseCAM]) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps ``(B, H, W)`` in [0, 1] and scores ``(B,)`` of the token-log-prob target.

    ``model`` is used as given (put it in the dtype to explain in); ``tokens (B, L)`` are the
    full token rows, ``weights (B, L-1)`` select the scored positions of ``tokens[:, 1:]``.
    """
    wrapped = TeacherForced(model, tokens[:, :-1])
    cam = method(wrapped, layer=wrapped.captioner.encoder.relu4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an all-zero map for one image is counted, not warned
        res = cam(images, target=token_logprob_target(tokens[:, 1:], weights))
    return res.maps, res.scores


def _unit(model: ShapesCaptioner, data: CaptionDataset, rows: list[int], dtype: torch.dtype
          ) -> list[dict[str, Any]]:
    """Per-image metric records for the images ``rows`` of ``data``."""
    x = data.images[rows].to(dtype)
    t = data.tokens[rows]
    cap = {m: explain_maps(model, x, t, caption_weights(t), cls) for m, cls in METHODS.items()}
    two = [r for r, i in enumerate(rows) if len(data.samples[i].groups) == 2]
    phr: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    if two:
        idx = [rows[r] for r in two]
        for v, words in VARIANTS.items():
            for m, cls in METHODS.items():
                phr[(v, m)] = [explain_maps(model, x[two], t[two], phrase_weights(data, idx, g, words), cls)
                               for g in (0, 1)]
    out = []
    for r, i in enumerate(rows):
        s = data.samples[i]
        masks = torch.from_numpy(s.masks)
        union = masks.any(0)
        area = s.masks.shape[1] * s.masks.shape[2]
        rec: dict[str, Any] = {"index": i, "n_groups": len(s.groups), "n_instances": int(masks.shape[0]),
                               "caption": s.caption, "area": float(union.sum()) / area, "caption_map": {},
                               "phrases": []}
        for m in METHODS:
            mp = cap[m][0][r].double()
            rec["caption_map"][m] = {
                "epg": energy_pointing_game(mp, union), "pg": pointing_game(mp, union),
                "cov": instance_coverage(mp, masks), "zero": bool(mp.max() <= 0),
                "logp": float(cap[m][1][r]),
            }
        if len(s.groups) == 2:
            k = two.index(r)
            gm = [torch.from_numpy(s.group_masks(g)) for g in (0, 1)]
            for g in (0, 1):
                h = 1 - g
                ph: dict[str, Any] = {"position": g, "phrase": s.groups[g].phrase,
                                      "count": s.groups[g].count, "count_other": s.groups[h].count,
                                      "area_own": float(gm[g].any(0).sum()) / area,
                                      "area_other": float(gm[h].any(0).sum()) / area, "variants": {}}
                for m in METHODS:
                    own = phr[("phrase", m)][g][0][k].double()
                    other = phr[("phrase", m)][h][0][k].double()
                    ph[m] = {
                        "e_own": energy_pointing_game(own, gm[g]),
                        "e_other_group": energy_pointing_game(own, gm[h]),
                        "e_own_by_other_phrase": energy_pointing_game(other, gm[g]),
                        "e_caption_own": energy_pointing_game(cap[m][0][r].double(), gm[g]),
                        "pg_own": pointing_game(own, gm[g]), "pg_other": pointing_game(own, gm[h]),
                        "cov_own": instance_coverage(own, gm[g]), "zero": bool(own.max() <= 0),
                        "logp": float(phr[("phrase", m)][g][1][k]),
                    }
                    for v in VARIANTS:
                        mv = phr[(v, m)][g][0][k].double()
                        ph["variants"][f"{v}|{m}"] = [energy_pointing_game(mv, gm[g]),
                                                      energy_pointing_game(mv, gm[h])]
                rec["phrases"].append(ph)
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------
def _mean(v: Sequence[float]) -> float:
    return float(np.mean(v)) if len(v) else float("nan")


def _ci(v: Sequence[float]) -> float:
    """Half-width of a normal 95 % interval of the mean."""
    return float(1.96 * np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def caption_rows(recs: list[dict[str, Any]]) -> list[list[Any]]:
    """Table rows for the whole-caption target, per method and image subset."""
    rows = []
    for m in METHODS:
        for label, keep in (("all", lambda r: True), ("one group", lambda r: r["n_groups"] == 1),
                            ("two groups", lambda r: r["n_groups"] == 2)):
            sel = [r for r in recs if keep(r)]
            if not sel:
                continue
            epg = [r["caption_map"][m]["epg"] for r in sel]
            rows.append([m, label, len(sel), _mean(epg), _ci(epg), _mean([r["area"] for r in sel]),
                         _mean([float(r["caption_map"][m]["pg"]) for r in sel]),
                         _mean([r["caption_map"][m]["cov"] for r in sel]),
                         sum(r["caption_map"][m]["zero"] for r in sel)])
    return rows


def phrase_records(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for r in recs for p in r["phrases"]]


def phrase_stats(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summary of the phrase targets per method and phrase position ("both", "first", "second")."""
    ps = phrase_records(recs)
    out = []
    for m in METHODS:
        for label, keep in (("both", lambda p: True), ("first", lambda p: p["position"] == 0),
                            ("second", lambda p: p["position"] == 1)):
            sel = [p for p in ps if keep(p)]
            if not sel:
                continue
            own = np.array([p[m]["e_own"] for p in sel])
            oth = np.array([p[m]["e_other_group"] for p in sel])
            by_other = np.array([p[m]["e_own_by_other_phrase"] for p in sel])
            a_own = np.array([p["area_own"] for p in sel])
            a_oth = np.array([p["area_other"] for p in sel])
            out.append({
                "method": m, "phrase": label, "n": len(sel),
                "own": float(own.mean()), "other": float(oth.mean()),
                "diff": float((own - oth).mean()), "diff_ci": _ci(own - oth),
                "win": float((own > oth).mean()), "win_area": float((own / a_own > oth / a_oth).mean()),
                "by_other": float(by_other.mean()), "win_phrase": float((own > by_other).mean()),
                "uniform": float(a_own.mean()),
                "pg_own": _mean([float(p[m]["pg_own"]) for p in sel]),
                "pg_other": _mean([float(p[m]["pg_other"]) for p in sel]),
                "cov": _mean([p[m]["cov_own"] for p in sel]), "zero": sum(p[m]["zero"] for p in sel),
                "off": float((own + oth < OFF_OBJECT).mean()),
                "win_on": _mean((own > oth)[own + oth >= OFF_OBJECT].astype(float)),
            })
    return out


PHR_KEYS = ("method", "phrase", "n", "own", "other", "diff", "diff_ci", "win", "win_area", "by_other",
            "win_phrase", "uniform")
PHR_HEADER = ["method", "phrase", "n", "energy in its group", "energy in other group", "difference",
              "±95 %", "own > other", "own > other per area", "its group under the other phrase's map",
              "own map > other phrase's map", "uniform map"]
PNT_KEYS = ("method", "phrase", "n", "pg_own", "pg_other", "cov", "off", "win_on", "zero")
PNT_HEADER = ["method", "phrase", "n", "pointing: own group", "pointing: other group",
              "instance coverage (own group)", "off-object maps", "own > other (on-object maps)",
              "all-zero maps"]
#: A difference whose 95 % interval ends closer than this to zero is called narrow in the text.
NARROW = 0.01
#: A phrase map with less than this share of its energy on the two groups together is "off-object".
OFF_OBJECT = 0.05


def variant_rows(recs: list[dict[str, Any]]) -> list[list[Any]]:
    """Per token subset of the phrase and method: energy in its group, in the other group, and the
    share of phrases where its group gets more."""
    ps = phrase_records(recs)
    rows = []
    for v in VARIANTS:
        for m in METHODS:
            e = np.array([p["variants"][f"{v}|{m}"] for p in ps]).reshape(-1, 2)
            if len(e) == 0:
                continue
            first = np.array([p["variants"][f"{v}|{m}"] for p in ps if p["position"] == 0]).reshape(-1, 2)
            second = np.array([p["variants"][f"{v}|{m}"] for p in ps if p["position"] == 1]).reshape(-1, 2)
            share = [float((a[:, 0] > a[:, 1]).mean()) if len(a) else float("nan")
                     for a in (e, first, second)]
            rows.append([v, m, len(e), float(e[:, 0].mean()), float(e[:, 1].mean()), *share])
    return rows


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def example_figure(model: ShapesCaptioner, data: CaptionDataset, rows: list[int], dtype: torch.dtype) -> Any:
    """Grid: one row per two-group image: the image, then per method the map of the caption and of
    each phrase over the grey-scale image (white outline: the phrase's group; title: the share of
    the map's energy in that group and in the other one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = data.images[rows].to(dtype)
    t = data.tokens[rows]
    maps = {}
    for m, cls in METHODS.items():
        maps[(m, "caption")] = explain_maps(model, x, t, caption_weights(t), cls)[0]
        for g in (0, 1):
            maps[(m, g)] = explain_maps(model, x, t, phrase_weights(data, rows, g), cls)[0]
    cols = 1 + 3 * len(METHODS)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.5 * cols, 2.05 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        s = data.samples[i]
        grey = s.image.mean(-1)
        axes[r, 0].imshow(s.image, interpolation="nearest")
        axes[r, 0].set_title(s.groups[0].phrase + "\nand " + s.groups[1].phrase, fontsize=7)
        c = 1
        for m in METHODS:
            for key in ("caption", 0, 1):
                ax = axes[r, c]
                mp = maps[(m, key)][r].double()
                ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.imshow(mp.float().numpy(), cmap="jet", alpha=0.55, vmin=0, vmax=1, interpolation="nearest")
                if key == "caption":
                    e = energy_pointing_game(mp, torch.from_numpy(s.masks))
                    title = f"{m}\ncaption\nE(objects) {e:.2f}"
                else:
                    own, oth = (torch.from_numpy(s.group_masks(g)) for g in (key, 1 - key))
                    ax.contour(s.group_masks(key).any(0), levels=[0.5], colors="white", linewidths=0.9)
                    title = (f"{m}\n{s.groups[key].phrase}\nE {energy_pointing_game(mp, own):.2f} vs "
                             f"other {energy_pointing_game(mp, oth):.2f}")
                ax.set_title(title, fontsize=6.5)
                c += 1
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def difference_figure(recs: list[dict[str, Any]]) -> Any:
    """Histogram per method of (energy in the mentioned group) - (energy in the other group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = phrase_records(recs)
    fig, axes = plt.subplots(1, len(METHODS), figsize=(4.2 * len(METHODS), 2.8), squeeze=False, sharey=True)
    bins = np.linspace(-1, 1, 41)
    for ax, m in zip(axes[0], METHODS, strict=True):
        d = np.array([p[m]["e_own"] - p[m]["e_other_group"] for p in ps])
        if len(d):
            ax.hist(d, bins=bins, color="tab:blue")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{m}: phrase map, energy in its group − in the other", fontsize=8)
        ax.set_xlabel("energy difference")
    axes[0, 0].set_ylabel("phrases")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.1f} %"


def _separation_word(share: float) -> str:
    if share >= 0.9:
        return "clearly separate the groups"
    if share >= 0.7:
        return "mostly separate the groups"
    if share > 0.55:
        return "separate the groups only weakly"
    return "do not separate the groups"


def what_it_shows(acc: dict[str, Any], cap: list[list[Any]], phr: list[dict[str, Any]], var: list[list[Any]],
                  recs: list[dict[str, Any]]) -> str:
    """The interpretation paragraph, generated from the numbers."""
    out = [f"The captioner writes the exact held-out caption for {_pct(acc['exact'])} of the images "
           f"({_pct(acc['exact_one_group'])} with one group, {_pct(acc['exact_two_groups'])} with two) "
           f"and predicts {_pct(acc['token'])} of the tokens under teacher forcing."]
    by = {(r[0], r[1]): r for r in cap}
    for m in METHODS:
        r = by.get((m, "all"))
        if r is None:
            continue
        ratio = r[3] / r[5] if r[5] > 0 else float("nan")
        verdict = ("well above" if ratio >= 2 else "above" if ratio > 1.2 else "not clearly above")
        out.append(f"**Whole caption, {m}:** {_pct(r[3])} of the map's energy lies on the mentioned objects, "
                   f"which cover {_pct(r[5])} of the image — {ratio:.1f}× what a uniform map gets, "
                   f"{verdict} chance; the maximum falls on an object in {_pct(r[6])} of the images "
                   f"(a random point: {_pct(r[5])}), and {_pct(r[7])} of the instances hold a local "
                   f"maximum.")
    if len(METHODS) == 2 and recs:
        a, b = list(METHODS)

        def cmp(vals: list[tuple[float, float]], what: str) -> str:
            d = np.array([y - x for x, y in vals])
            lo, hi = d.mean() - _ci(d), d.mean() + _ci(d)
            word = "beats" if lo > 0 else "trails" if hi < 0 else "ties with"
            if word != "ties with" and min(abs(lo), abs(hi)) < NARROW:
                word = "narrowly " + word  # the 95 % interval ends within NARROW of zero
            return (f"{word} {a} on {what} ({_pct(float(np.mean([v[1] for v in vals])))} vs "
                    f"{_pct(float(np.mean([v[0] for v in vals])))}, paired difference "
                    f"{100 * d.mean():+.1f} ± {100 * _ci(d):.1f} points)")

        def pairs(key: str) -> list[tuple[float, float]]:
            return [(float(r["caption_map"][a][key]), float(r["caption_map"][b][key])) for r in recs]

        multi = [(float(r["caption_map"][a]["cov"]), float(r["caption_map"][b]["cov"]))
                 for r in recs if r["n_instances"] > 1]
        d_multi = np.array([y - x for x, y in multi]) if multi else np.zeros(0)
        if len(d_multi) > 1:
            m_d, ci_d = 100 * d_multi.mean(), 100 * _ci(d_multi)
            claim = ("is not confirmed here" if m_d - ci_d <= 0 else
                     "holds here, only narrowly" if m_d - ci_d < 100 * NARROW else "holds here")
            multi_txt = (f" On the {len(multi)} images with several instances the coverage difference is "
                         f"{m_d:+.1f} ± {ci_d:.1f} points: the Grad-CAM++ paper's claim of better coverage "
                         f"of several instances {claim}.")
        else:
            multi_txt = ""
        out.append(f"On the whole caption {b} {cmp(pairs('epg'), 'energy')}, {cmp(pairs('pg'), 'pointing')} "
                   f"and {cmp(pairs('cov'), 'instance coverage')}.{multi_txt}")
    pb = {(r["method"], r["phrase"]): r for r in phr}
    for m in METHODS:
        r = pb.get((m, "both"))
        if r is None:
            continue
        first, second = pb.get((m, "first")), pb.get((m, "second"))
        pos = ""
        if first and second:
            pos = (f" (first phrase {_pct(first['win'])}, second phrase {_pct(second['win'])})")
        sig = ("more than on the other group" if r["diff"] - r["diff_ci"] > 0 else
               "less than on the other group" if r["diff"] + r["diff_ci"] < 0 else
               "no more than on the other group")
        out.append(
            f"**Phrases, {m}:** a phrase's map puts {_pct(r['own'])} of its energy on the group the phrase "
            f"mentions and {_pct(r['other'])} on the other group (paired difference "
            f"{100 * r['diff']:+.1f} ± {100 * r['diff_ci']:.1f} points: {sig}; a uniform map would put "
            f"{_pct(r['uniform'])} on it). The mentioned group gets more energy in {_pct(r['win'])} of the "
            f"{r['n']} phrases{pos}, {_pct(r['win_area'])} per unit area, and more under its own "
            f"phrase's map than under the other phrase's map in {_pct(r['win_phrase'])}. The map's maximum "
            f"lies in the mentioned group for {_pct(r['pg_own'])} and in the other group for "
            f"{_pct(r['pg_other'])} of the phrases. {_pct(r['off'])} of the phrase maps are off-object "
            f"(< {100 * OFF_OBJECT:.0f} % of their energy on the two groups together); among the others "
            f"the mentioned group wins in {_pct(r['win_on'])}. In short, phrase maps "
            f"{_separation_word(r['win'])}.")
    reversed_ = [r for r in phr if r["phrase"] != "both" and r["diff"] + r["diff_ci"] < 0]
    for r in reversed_:
        out.append(f"For the {r['phrase']} phrase, {r['method']}'s map puts *more* energy on the other group "
                   f"than on the mentioned one ({100 * r['diff']:+.1f} ± {100 * r['diff_ci']:.1f} points; "
                   f"the maximum lies in the other group for {_pct(r['pg_other'])} and in the mentioned one "
                   f"for {_pct(r['pg_own'])}): there the explanation points at the wrong group.")
    if var:
        best = max(var, key=lambda v: v[5])
        worst = min(var, key=lambda v: v[5])
        out.append(f"Among the token subsets, the {best[1]} map of the *{best[0]}* token(s) separates best "
                   f"(its group gets more energy in {_pct(best[5])} of the phrases) and the {worst[1]} map "
                   f"of the *{worst[0]}* token(s) worst ({_pct(worst[5])}). Note that a phrase's tokens "
                   "depend on the whole image by construction: which group is named first depends on both "
                   "groups' classes, and the colour and shape words compete with the other group's colour "
                   "and shape, so part of a phrase's evidence can legitimately lie on the other group.")
    return "\n\n".join(out)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the study (train or resume the captioner, explain, publish). Returns 0."""
    args = study_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    docs = setup_from_args(args)
    t_start = time.perf_counter()
    cfg = dict(QUICK if args.quick else FULL)
    config = {**cfg, "quick": bool(args.quick), "torch": torch.__version__.split("+")[0]}
    run = StudyRun(NAME, config, root=args.root, fresh=args.fresh)

    def do_train() -> dict[str, torch.Tensor]:
        data = make_caption_dataset(cfg["n_train"], cfg["train_seed"], cfg["size"])
        return train(cfg, data)

    state = run.cached_tensors("captioner", do_train)
    loss_curve = state.pop("_loss").tolist()
    model = _build(cfg)
    model.load_state_dict(state)
    model.eval()

    held_out = make_caption_dataset(cfg["n_acc"], cfg["eval_seed"], cfg["size"])
    acc = run.cached("accuracy", lambda: accuracy(model, held_out))

    dtype = getattr(torch, cfg["explain_dtype"])
    emodel = copy.deepcopy(model).to(dtype)
    n_exp, chunk = cfg["n_explain"], cfg["chunk"]
    recs: list[dict[str, Any]] = []
    for start in tqdm(range(0, n_exp, chunk), desc="explain captions"):
        rows = list(range(start, min(start + chunk, n_exp)))
        recs += run.cached(f"explain-{start:05d}", lambda rows=rows: _unit(emodel, held_out, rows, dtype))
    for r in recs:
        r["exact"] = acc["exact_per_image"][r["index"]]

    cap = caption_rows(recs)
    phr = phrase_stats(recs)
    var = variant_rows(recs)
    two = [r["index"] for r in recs if r["n_groups"] == 2][: cfg["n_figure"]]
    figures = {"difference.png": difference_figure(recs)}
    if two:
        figures["examples.png"] = example_figure(emodel, held_out, two, dtype)

    wall = time.perf_counter() - t_start
    compute = run.seconds()
    md = render(argv, cfg, acc, loss_curve, cap, phr, var, recs, wall, compute, has_examples=bool(two))
    files = {"caption_per_image.csv": per_image_csv(recs), "phrases.csv": per_phrase_csv(recs),
             "summary.csv": csv_text(CAP_HEADER, cap) + "\n"
             + csv_text(PHR_HEADER + PNT_HEADER[3:], [[r[k] for k in PHR_KEYS + PNT_KEYS[3:]] for r in phr])
             + "\n" + csv_text(VAR_HEADER, var)}
    publish(NAME, md, docs=docs, figures=figures, files=files)
    print(f"[{NAME}] published to {docs}/results.md in {wall:.1f}s (compute {compute:.1f}s)")
    return 0


CAP_HEADER = ["method", "images", "n", "energy on objects", "±95 %", "uniform map (object area)",
              "pointing game", "instance coverage", "all-zero maps"]
VAR_HEADER = ["target tokens", "method", "n", "energy in its group", "energy in other group",
              "own > other", "own > other (first phrase)", "own > other (second phrase)"]


def per_image_csv(recs: list[dict[str, Any]]) -> str:
    header = ["index", "caption", "n_groups", "n_instances", "exact", "object_area"]
    for m in METHODS:
        header += [f"{m} {k}" for k in ("epg", "pg", "cov", "logp")]
    rows = []
    for r in recs:
        row = [r["index"], r["caption"], r["n_groups"], r["n_instances"], r["exact"], r["area"]]
        for m in METHODS:
            row += [r["caption_map"][m][k] for k in ("epg", "pg", "cov", "logp")]
        rows.append(row)
    return csv_text(header, rows)


def per_phrase_csv(recs: list[dict[str, Any]]) -> str:
    keys = ("e_own", "e_other_group", "e_own_by_other_phrase", "e_caption_own", "pg_own", "pg_other",
            "cov_own", "logp")
    header = ["index", "position", "phrase", "area_own", "area_other"] + [f"{m} {k}" for m in METHODS
                                                                          for k in keys]
    rows = []
    for r in recs:
        for p in r["phrases"]:
            rows.append([r["index"], p["position"], p["phrase"], p["area_own"], p["area_other"]]
                        + [p[m][k] for m in METHODS for k in keys])
    return csv_text(header, rows)


def render(argv: Sequence[str] | None, cfg: dict[str, Any], acc: dict[str, Any], loss_curve: list[float],
           cap: list[list[Any]], phr: list[dict[str, Any]], var: list[list[Any]], recs: list[dict[str, Any]],
           wall: float, compute: float, has_examples: bool) -> str:
    """The markdown section."""
    n_two = sum(r["n_groups"] == 2 for r in recs)
    cmd = command_line(NAME, argv)
    lines = [
        f"## {TITLE}",
        "",
        "**Claim.** Grad-CAM (Selvaraju et al. 2017, image-captioning experiments) explains a "
        "caption by differentiating the caption's log-probability, and its maps fall on the objects "
        "the caption mentions; Grad-CAM++ (Chattopadhay et al. 2018) applies the same recipe and "
        "claims better maps, in particular covering several instances of a class. lamcam accepts "
        "such a target as a callable `outputs -> (B,)`.",
        "",
        "**What we test.** We train our own captioner (`studies.captions.ShapesCaptioner`: a "
        "4-stage conv encoder (stride-2 stem, two max-pools) → 8×8 feature grid, a GRU decoder "
        "initialised from the pooled features with dot-product attention over the grid) on "
        "generated 64×64 images with one or two groups "
        "(1–3 shapes of one class in one named colour; two groups differ in class and colour; ≤ 4 "
        "instances), captioned like *\"one blue circle and three yellow stars\"* (groups in class "
        "order). On held-out images we explain (a) the ground-truth caption, target = Σ log p of "
        "all its tokens (words, *and*, `<eos>`; teacher forcing through a small `TeacherForced` "
        "wrapper that holds the tokens, since CAM methods call `model(images)`), scored against the "
        "union of all instances; (b) on two-group images each group's phrase separately, target = "
        "Σ log p of only its three tokens, scored against the group it mentions. Layer: "
        "`encoder.relu4` (8×8), maps upsampled to 64×64 and min-max normalised; explanations in "
        "float64, a precaution against the float32 softmax saturating on very confident tokens. "
        "Baselines: a uniform map (its energy in a region = the region's area share; a random point "
        "hits it with the same probability), the other group, and the other phrase's map on the same group.",
        "",
        f"**Command.** `{cmd}`",
        "",
        "**Configuration.** "
        f"training: {cfg['n_train']} images (seed {cfg['train_seed']}), {cfg['epochs']} epochs, batch "
        f"{cfg['batch']}, AdamW lr {cfg['lr']} (15 % linear warm-up, cosine decay), weight decay "
        f"{cfg['weight_decay']}, random rot90/flip, torch seed {cfg['torch_seed']}; encoder widths "
        f"{cfg['widths']}, GRU {cfg['hidden']}; "
        f"held-out set seed {cfg['eval_seed']}: accuracy on {cfg['n_acc']} images, explanations on the "
        f"first {cfg['n_explain']} ({n_two} with two groups → {2 * n_two} phrases). "
        f"Training loss per epoch: {', '.join(f'{v:.3f}' for v in loss_curve)}. Everything is seeded "
        "and re-runs give identical numbers, but the trained weights (and so the numbers) change "
        "slightly with the torch thread count (order of float reductions).",
        "",
        f"**Time.** This invocation: {wall / 60:.1f} min wall; compute summed over the stored units "
        f"(training, accuracy, explanations; counts the original run when resumed): {compute / 60:.1f} min, "
        f"torch threads {torch.get_num_threads()}.",
        "",
        "### The captioner (held-out)",
        "",
        md_table(["images", "exact caption (greedy)", "one group", "two groups",
                  "token accuracy (teacher forced)", "mean caption log p"],
                 [[acc["n"], acc["exact"], acc["exact_one_group"], acc["exact_two_groups"], acc["token"],
                   acc["caption_logp"]]]),
        "### (a) Whole caption → all mentioned objects",
        "",
        md_table(CAP_HEADER, cap),
        "*energy on objects*: energy pointing game (share of the map's mass inside the union of all "
        "instances; ±: 95 % interval); *uniform map*: the objects' area share, what a constant map "
        "gets and the chance of a random point; *pointing game*: the maximum lies on an object; "
        "*instance coverage*: share of instances holding a local maximum (≥ 0.25 of the peak).",
        "",
        "### (b) One phrase → its group (two-group images)",
        "",
        md_table(PHR_HEADER, [[r[k] for k in PHR_KEYS] for r in phr]) if phr
        else "No two-group images in this run.\n",
        "*energy in its group / other group*: the phrase map's mass inside the mentioned group / the "
        "other group (*difference*: their paired difference, ±95 % interval); *own > other*: share of "
        "phrases where the mentioned group gets more (*per area*: more mass per pixel); *its group "
        "under the other phrase's map*: the mass the other phrase's map puts on this group (its mean "
        "equals the *other group* column when both phrases are pooled), and the share of phrases where "
        "the own map puts more there; *uniform map*: the group's area share.",
        "",
        md_table(PNT_HEADER, [[r[k] for k in PNT_KEYS] for r in phr]) if phr else "",
        "*pointing*: the phrase map's maximum lies in the mentioned / the other group; *instance "
        "coverage*: share of the mentioned group's instances holding a local maximum; *off-object "
        f"maps*: share of phrase maps with < {100 * OFF_OBJECT:.0f} % of their energy on the two groups "
        "together (the map sits on the background); *own > other (on-object maps)*: the *own > other* share "
        "among the remaining maps.",
        "",
        "**Which words of a phrase carry the localisation.** The same measurement for targets made of "
        "a subset of the phrase's tokens (each still teacher-forced on the full caption):",
        "",
        md_table(VAR_HEADER, var) if var else "No two-group images in this run.\n",
        "![difference](results/caption/difference.png)",
        "",
        "*Histogram over phrases of (energy in the mentioned group) − (energy in the other group).*",
        "",
    ]
    if has_examples:
        lines += [
            "![examples](results/caption/examples.png)",
            "",
            "*The first held-out two-group images: image with its caption, then per method the map of "
            "the whole caption and of each phrase (white outline: the group the phrase mentions).*",
            "",
        ]
    lines += [
        "### What it shows",
        "",
        what_it_shows(acc, cap, phr, var, recs),
        "",
        "Files: `results/caption/caption_per_image.csv`, `results/caption/phrases.csv` (per image / "
        "per phrase metrics), `results/caption/summary.csv`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
