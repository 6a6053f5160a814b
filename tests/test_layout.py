"""lamcam.layout: how a layer's output is read as a map, decided from shapes and the model."""

import pytest
import torch
from torch import nn

import lamcam
from lamcam.layout import (
    LayoutError,
    attention_ancestor,
    channel_hint,
    decide_layout,
    prefix_hint,
)


@pytest.mark.parametrize("shape, spatial, kind, grid, channels, prefix", [
    ((2, 512, 7, 7), (224, 224), "channels_first", (7, 7), 512, 0),
    ((2, 7, 7, 768), (224, 224), "channels_last", (7, 7), 768, 0),  # Swin stage outputs
    ((2, 64, 56, 56), (224, 224), "channels_first", (56, 56), 64, 0),  # (64, 56) is no 224² grid
    ((2, 512, 7, 5), (224, 160), "channels_first", (7, 5), 512, 0),
    ((2, 197, 384), (224, 224), "tokens", (14, 14), 384, 1),  # ViT: class token
    ((2, 198, 384), (224, 224), "tokens", (14, 14), 384, 2),  # DeiT: class + distillation
    ((2, 261, 384), (224, 224), "tokens", (16, 16), 384, 5),  # DINOv2 reg4, patch 14
    ((2, 140, 384), (230, 170), "tokens", (14, 10), 384, 0),  # floor(230/16) × floor(170/16)
    ((2, 64, 8, 7, 7), (16, 112, 112), "channels_first", (8, 7, 7), 64, 0),  # video
])
def test_shapes_decide(shape, spatial, kind, grid, channels, prefix):
    lay = decide_layout(shape, spatial)
    assert (lay.kind, lay.grid, lay.channels, lay.prefix, lay.decided_by) == (
        kind, grid, channels, prefix, "shape")


def test_to_map_matches_the_layout_by_hand():
    t = torch.randn(2, 7, 7, 16)
    torch.testing.assert_close(decide_layout(t.shape, (224, 224)).to_map(t), t.permute(0, 3, 1, 2))
    tok = torch.randn(2, 1 + 4 + 12, 8)  # 3 × 4 patches of a 48 × 64 input, 5 prefix tokens
    lay = decide_layout(tok.shape, (48, 64), prefix=5)
    assert lay.decided_by == "model" and lay.grid == (3, 4)
    ref = tok[:, 5:].reshape(2, 3, 4, 8).permute(0, 3, 1, 2)
    torch.testing.assert_close(lay.to_map(tok), ref)


def test_attention_internals_and_foreign_shapes_are_refused():
    with pytest.raises(LayoutError, match=r"attention internals.*reshape="):
        decide_layout((2, 6, 197, 64), (224, 224))  # (B, heads, N, d)
    with pytest.raises(LayoutError, match="reshape="):
        decide_layout((2, 6, 261, 64), (224, 224))
    with pytest.raises(LayoutError, match="reshape="):
        decide_layout((2, 32, 1), (64, 64))  # a pooled (B, C, 1) is no token grid
    with pytest.raises(LayoutError, match="reshape="):
        decide_layout((2, 1000), (224, 224))


def test_a_tie_is_broken_by_the_model_or_refused():
    with pytest.raises(LayoutError, match=r"both as channels-first \(C=8\) and channels-last"):
        decide_layout((2, 8, 8, 8), (32, 32))
    for hint in ("channels_first", "channels_last"):
        lay = decide_layout((2, 8, 8, 8), (32, 32), channels_hint=hint)
        assert (lay.kind, lay.decided_by) == (hint, "model")
    # a fixed-size adaptive pool on a non-square input keeps no aspect ratio: only the model tells
    with pytest.raises(LayoutError):
        decide_layout((2, 512, 7, 7), (448, 160))
    assert decide_layout((2, 512, 7, 7), (448, 160), channels_hint="channels_first").grid == (7, 7)


def test_channel_hint_reads_producers_and_consumers():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(2))
    assert channel_hint(net, "1", (1, 8, 8, 8)) == "channels_first"  # the conv before the ReLU
    cl = nn.Sequential(nn.Linear(3, 8), nn.GELU())
    assert channel_hint(cl, "1", (1, 8, 8, 8)) == "channels_last"  # nn.Linear acts on the last axis
    first = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1))
    assert channel_hint(first, "0", (1, 8, 8, 8)) == "channels_first"  # the pool that consumes it
    assert channel_hint(nn.Sequential(nn.Identity()), "0", (1, 8, 8, 8)) is None


def test_prefix_hint_from_timm_attribute_or_token_parameters():
    m = nn.Module()
    assert prefix_hint(m) is None
    m.num_prefix_tokens = 5
    assert prefix_hint(m) == 5
    hf_like = nn.Module()
    hf_like.embeddings = nn.Module()
    hf_like.embeddings.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
    hf_like.embeddings.register_tokens = nn.Parameter(torch.zeros(1, 4, 8))
    assert prefix_hint(hf_like) == 5


def test_attention_ancestor_is_the_innermost_attention_module():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24)

    class PartitionAttention(nn.Module):  # a block named "attention" wrapping a norm and a core
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(8)
            self.attn = Attention()

    m = nn.Sequential(PartitionAttention(), nn.MultiheadAttention(8, 2))
    assert attention_ancestor(m, "0.norm1") is None
    assert attention_ancestor(m, "0.attn.qkv") == "0.attn"
    assert attention_ancestor(m, "0.attn") is None
    assert attention_ancestor(m, "1.out_proj") == "1"


def test_results_record_the_layout():
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(6, 2))
    res = lamcam.GradCAM(net)(torch.rand(1, 3, 10, 10))
    assert [lay.kind for lay in res.layouts] == ["channels_first"]
    assert str(res.layouts[0]) == "channels first (B, 6, 10, 10): 10×10 grid, 6 channels"
