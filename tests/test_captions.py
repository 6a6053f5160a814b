"""Captioned shapes (studies.captions) and the caption study (studies.caption)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import lamcam
from lamcam.zoo.shapes import CLASSES, sample_rng
from studies.captions import (
    BOS,
    COLOURS,
    COUNT_WORDS,
    EOS,
    MAX_LEN,
    PAD,
    PLURALS,
    VOCAB,
    Group,
    ShapesCaptioner,
    TeacherForced,
    detokenize,
    make_caption_dataset,
    make_caption_sample,
    phrase_positions,
    token_logprob_target,
    tokenize,
)

SEED = 4343


@pytest.fixture(scope="module")
def data():
    return make_caption_dataset(120, SEED)


def test_generator_is_deterministic_and_index_addressed():
    a = make_caption_dataset(6, SEED)
    b = make_caption_dataset(3, SEED, start=3)
    c = make_caption_dataset(6, SEED + 1)
    assert torch.equal(a.images[3:], b.images)
    assert torch.equal(a.tokens[3:], b.tokens)
    assert all(np.array_equal(x.masks, y.masks) for x, y in zip(a.samples[3:], b.samples, strict=True))
    s1 = make_caption_sample(sample_rng(SEED, 2))
    assert np.array_equal(s1.image, a.samples[2].image) and s1.caption == a.samples[2].caption
    assert not torch.equal(a.images, c.images)


def test_caption_text_matches_the_ground_truth(data):
    word = re.compile(r"^(one|two|three) (\w+) (\w+)$")
    n_groups = set()
    for s in data.samples:
        phrases = s.caption.split(" and ")
        assert len(phrases) == len(s.groups) in (1, 2)
        n_groups.add(len(phrases))
        assert s.masks.shape[0] <= 4
        for g, text in enumerate(phrases):
            count_w, colour, noun = word.match(text).groups()
            members = np.flatnonzero(s.group_of == g)
            # the count word counts the instances of the group
            assert COUNT_WORDS.index(count_w) + 1 == len(members) == s.groups[g].count
            # singular noun for one instance, plural otherwise
            shape = s.groups[g].shape
            assert noun == (shape if len(members) == 1 else PLURALS[shape])
            # the colour word names the colour actually painted on the group's pixels
            pix = s.image[s.masks[members].any(0)]
            assert np.array_equal(pix, np.broadcast_to(np.float32(COLOURS[colour]), pix.shape))
        if len(s.groups) == 2:
            a, b = s.groups
            assert a.shape != b.shape and a.colour != b.colour
            assert CLASSES.index(a.shape) < CLASSES.index(b.shape)  # groups in class order
    assert n_groups == {1, 2}


def test_masks_match_the_painted_pixels(data):
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    for s in data.samples[:60]:
        assert s.masks.any(axis=(1, 2)).all()  # every instance is visible
        assert (s.masks.sum(0) <= 1).all()  # masks are disjoint
        is_palette = (s.image[:, :, None, :] == palette[None, None]).all(-1).any(-1)
        assert np.array_equal(is_palette, s.masks.any(0))  # palette pixels = object pixels
        bg = s.image[~s.masks.any(0)]
        assert bg.min() >= 0.25 - 1e-6 and bg.max() <= 0.6 + 1e-6


def test_tokenize_round_trip(data):
    for s in data.samples:
        ids = tokenize(s.caption)
        assert len(ids) == MAX_LEN and ids[0] == BOS
        assert ids[len(s.caption.split()) + 1] == EOS
        assert detokenize(ids) == s.caption
        assert s.tokens == ids
    assert tokenize("one red star") == [BOS, VOCAB.index("one"), VOCAB.index("red"), VOCAB.index("star"),
                                        EOS, PAD, PAD, PAD, PAD]
    assert detokenize([BOS, VOCAB.index("two"), EOS, VOCAB.index("red")]) == "two"  # stops at <eos>
    with pytest.raises(ValueError, match="vocabulary"):
        tokenize("one purple star")
    with pytest.raises(ValueError, match="max_len"):
        tokenize("one red star and two blue rings", max_len=5)


def test_phrase_positions_point_at_the_phrase_words(data):
    s = next(s for s in data.samples if len(s.groups) == 2)
    ids = s.tokens
    for g in (0, 1):
        assert " ".join(VOCAB[ids[p]] for p in phrase_positions(s.groups, g)) == s.groups[g].phrase
    assert VOCAB[ids[4]] == "and"
    assert Group("cross", "white", 3).phrase == "three white crosses"


def test_model_output_shapes():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ShapesCaptioner().eval()
    d = make_caption_dataset(3, SEED)
    logits = model(d.images, d.tokens[:, :-1])
    assert logits.shape == (3, MAX_LEN - 1, len(VOCAB))
    assert model.encode(d.images).shape == (3, 128, 8, 8)
    assert dict(model.named_modules())[ShapesCaptioner.cam_layer] is model.encoder.relu4
    out = model.generate(d.images)
    assert out.shape == (3, MAX_LEN) and (out[:, 0] == BOS).all()
    # after <eos> only padding
    for row in out.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1:])
    with pytest.raises(ValueError, match="token rows"):
        TeacherForced(model, d.tokens[:2, :-1])(d.images)


def test_callable_caption_target_is_the_summed_token_log_probability():
    torch.set_num_threads(1)
    torch.manual_seed(1)
    model = ShapesCaptioner().eval()
    d = make_caption_dataset(4, SEED)
    tokens = d.tokens
    keep = tokens[:, 1:] != PAD
    wrapped = TeacherForced(model, tokens[:, :-1])
    res = lamcam.GradCAM(wrapped, layer="captioner.encoder.relu4")(
        d.images, target=token_logprob_target(tokens[:, 1:], keep))
    # direct computation, token by token
    with torch.no_grad():
        logits = model(d.images, tokens[:, :-1])
    want = torch.zeros(4)
    for b in range(4):
        for p in range(MAX_LEN - 1):
            if tokens[b, p + 1] != PAD:
                want[b] += torch.log_softmax(logits[b, p], -1)[tokens[b, p + 1]]
    assert torch.allclose(res.scores, want, atol=1e-4)
    # and it equals minus the summed cross-entropy over the caption's tokens
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, len(VOCAB)), tokens[:, 1:].reshape(-1),
                                           ignore_index=PAD, reduction="sum")
    assert torch.isclose(res.scores.sum(), -ce, atol=1e-3)
    assert res.maps.shape == (4, 64, 64) and float(res.maps.max()) <= 1.0
    # known answer: uniform logits give -log(V) per scored token
    f = token_logprob_target(tokens[:, 1:], keep)
    uniform = f(torch.zeros(4, MAX_LEN - 1, len(VOCAB), requires_grad=True))
    assert torch.allclose(uniform, -keep.sum(1).float() * np.log(len(VOCAB)))


def test_phrase_target_depends_only_on_its_tokens():
    from studies.caption import caption_weights, phrase_weights

    d = make_caption_dataset(40, SEED)
    rows = [i for i, s in enumerate(d.samples) if len(s.groups) == 2][:3]
    w0, w1 = phrase_weights(d, rows, 0), phrase_weights(d, rows, 1)
    assert w0[:, :3].all() and not w0[:, 3:].any()  # count, colour, shape of the first phrase
    assert w1[:, 4:7].all() and not w1[:, :4].any() and not w1[:, 7:].any()
    assert phrase_weights(d, rows, 1, words=(2,)).nonzero()[:, 1].tolist() == [6, 6, 6]
    cw = caption_weights(d.tokens[rows])
    assert cw.all()  # two-group captions use all 8 predicted positions (7 words + <eos>)


def test_study_quick_end_to_end(tmp_path):
    from studies import caption

    torch.set_num_threads(1)
    docs = tmp_path / "docs"
    assert caption.main(["--quick", "--root", str(tmp_path / "runs"), "--docs", str(docs),
                         "--threads", "1"]) == 0
    text = (docs / "results.md").read_text()
    assert "## (f) Explaining a whole caption (callable target)" in text
    assert "### What it shows" in text and "(a) Whole caption" in text
    for f in ("examples.png", "difference.png", "caption_per_image.csv", "phrases.csv", "summary.csv"):
        assert (docs / "results" / "caption" / f).stat().st_size > 0
    rows = (docs / "results" / "caption" / "caption_per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + caption.QUICK["n_explain"]
