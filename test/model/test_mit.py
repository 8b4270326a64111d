"""MiT backbone: official parameter layout, eps values, and agreement with transformers' SegFormer."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tv3s_ros.model.backbones import build_backbone
from tv3s_ros.model.backbones.mit import MIT_SPECS, MixVisionTransformer

KEYS_FILE = Path(__file__).resolve().parents[1] / "data" / "tv3s_keys_b1_city.txt"


def _expected_backbone_keys():
    rows = []
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("backbone."):
            key, shape = line.split("\t")
            rows.append((key[len("backbone."):], shape))
    return rows


def test_b1_keys_shapes_and_order_match_official_list():
    model = build_backbone("mit_b1")
    got = [(k, str(tuple(v.shape))) for k, v in model.state_dict().items()]
    assert got == _expected_backbone_keys()


@pytest.mark.parametrize("name", sorted(MIT_SPECS))
def test_block_counts_and_channels(name):
    spec = MIT_SPECS[name]
    with torch.device("meta"):
        model = build_backbone(name)
    assert model.out_channels == list(spec.embed_dims)
    for s, depth in enumerate(spec.depths, start=1):
        assert len(getattr(model, f"block{s}")) == depth
    # Stage 4 has sr ratio 1: no reduction conv/norm there.
    assert not hasattr(model.block4[0].attn, "sr") and hasattr(model.block1[0].attn, "sr")


def test_layernorm_eps_follow_official_code():
    model = build_backbone("mit_b0")
    assert model.patch_embed1.norm.eps == 1e-5        # plain nn.LayerNorm
    assert model.block1[0].attn.norm.eps == 1e-5      # plain nn.LayerNorm
    assert model.block1[0].norm1.eps == 1e-6          # norm_layer of mit_b*
    assert model.block3[1].norm2.eps == 1e-6
    assert model.norm4.eps == 1e-6


def test_output_strides_round_up():
    model = build_backbone("mit_b0").eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 70, 101))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 18, 26), (2, 64, 9, 13), (2, 160, 5, 7), (2, 256, 3, 4)]


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match="mit_b0, mit_b1"):
        build_backbone("mit_b9")


# ----------------------------------------------------------------------------------------------
# Agreement with transformers (independent implementation), random weights


def _to_hf(state):
    """Our (official) names -> transformers 5.x SegformerModel names; kv is split into k and v."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"patch_embed(\d)\.(proj|norm)\.(\w+)", key)
        if m:
            part = "proj" if m.group(2) == "proj" else "layer_norm"
            out[f"stages.{int(m.group(1)) - 1}.patch_embeddings.{part}.{m.group(3)}"] = value
            continue
        m = re.fullmatch(r"norm(\d)\.(\w+)", key)
        if m:
            out[f"stages.{int(m.group(1)) - 1}.layer_norm.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"block(\d)\.(\d+)\.(.+)\.(weight|bias)", key)
        assert m, key
        prefix = f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."
        name, param = m.group(3), m.group(4)
        if name == "attn.kv":
            k, v = value.chunk(2, dim=0)
            out[prefix + f"attention.k_proj.{param}"] = k
            out[prefix + f"attention.v_proj.{param}"] = v
            continue
        mapped = {
            "norm1": "layernorm_before", "norm2": "layernorm_after",
            "attn.q": "attention.q_proj", "attn.proj": "attention.o_proj",
            "attn.sr": "attention.sequence_reduction.sequence_reduction",
            "attn.norm": "attention.sequence_reduction.layer_norm",
        }.get(name, name)  # mlp.fc1 / mlp.dwconv.dwconv / mlp.fc2 keep their names
        out[prefix + f"{mapped}.{param}"] = value
    return out


def _randomize(model, gen):
    # Random LayerNorm affine params and biases too, so every parameter is exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("dims,depths,heads", [
    ((32, 64, 160, 256), (2, 2, 2, 2), (1, 2, 5, 8)),   # mit_b0 exactly
    ((16, 32, 48, 64), (3, 4, 6, 3), (1, 2, 3, 4)),     # b2 depths, narrow
])
def test_matches_transformers_segformer(dims, depths, heads):
    transformers = pytest.importorskip("transformers")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    ours = MixVisionTransformer(dims, depths, heads).eval()
    _randomize(ours, gen)
    cfg = transformers.SegformerConfig(
        num_channels=3, num_encoder_blocks=4, depths=list(depths), sr_ratios=[8, 4, 2, 1],
        hidden_sizes=list(dims), patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
        num_attention_heads=list(heads), mlp_ratios=[4, 4, 4, 4], hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
    cfg._attn_implementation = "eager"
    hf = transformers.SegformerModel(cfg).eval()
    # transformers builds every LayerNorm with eps 1e-5 (config.layer_norm_eps is not used);
    # the official MiT uses 1e-6 for the block and stage norms, so align HF to the official values.
    for stage in hf.stages:
        stage.layer_norm.eps = 1e-6
        for block in stage.blocks:
            block.layernorm_before.eps = 1e-6
            block.layernorm_after.eps = 1e-6
    converted = _to_hf(ours.state_dict())
    assert set(converted) == set(hf.state_dict())
    hf.load_state_dict(converted, strict=True)

    x = torch.randn(2, 3, 83, 125, generator=gen)
    with torch.no_grad():
        got = ours(x)
        ref = hf(pixel_values=x, output_hidden_states=True).hidden_states
    assert len(ref) == 4
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
