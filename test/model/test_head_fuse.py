"""The head's MLP decoder (``TV3SHead.fuse``) equals the official formula written out here:
``relu(bn(conv1x1(cat([up(linear_c4(c4)), up(linear_c3(c3)), up(linear_c2(c2)), linear_c1(c1)]))))``.

Our order differs (each level's linear maps folded and applied at its own resolution, the
BatchNorm folded in as well when it runs on its running statistics), so this is checked in
eval mode (folded), in training mode (batch statistics, BatchNorm as a module) and for the
gradients of every parameter involved.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_overrides

from tv3s_ros.model.config import ModelConfig
from tv3s_ros.model.tv3s import TV3S

TOL = 1e-5


def _head():
    torch.manual_seed(0)
    head = TV3S(ModelConfig(**tiny_overrides(backbone="mit_b0", num_classes=5))).decode_head
    with torch.no_grad():   # non-trivial BatchNorm statistics and affine parameters
        bn = head.linear_fuse.bn
        bn.running_mean.normal_(std=0.3)
        bn.running_var.uniform_(0.3, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(std=0.2)
    return head


def _feats(head, batch=2, c1=(12, 20)):
    g = torch.Generator().manual_seed(1)
    h, w = c1
    return [torch.randn(batch, c, -(-h // s), -(-w // s), generator=g)
            for c, s in zip(head.in_channels, (1, 2, 4, 8))]


def _official(head, feats):
    c1, c2, c3, c4 = feats
    size = c1.shape[2:]
    up = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
    cat = torch.cat([up(head.linear_c4(c4)), up(head.linear_c3(c3)), up(head.linear_c2(c2)), head.linear_c1(c1)], 1)
    return F.relu(head.linear_fuse.bn(head.linear_fuse.conv(cat)))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("training", [False, True])
def test_fuse_equals_the_official_formula(training):
    head = _head()
    head.train(training)
    feats = _feats(head)
    bn = head.linear_fuse.bn
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    ours = head.fuse(feats)
    bn.running_mean.copy_(stats[0]), bn.running_var.copy_(stats[1])   # training updates them once per call
    reference = _official(head, feats)
    assert ours.shape == reference.shape and (ours >= 0).all()
    assert _rel(ours, reference) < TOL
    # batch statistics differ from running ones: the training case really ran BatchNorm on the sum
    head.eval()
    assert (_rel(head.fuse(feats), reference) < TOL) == (not training)


def test_fuse_gradients_equal_the_official_formula_in_eval_mode():
    """Training with a frozen (eval-mode) BatchNorm: gradients reach the BN affine parameters,
    the MLPs, the fuse conv and the features exactly as through the official formula."""
    head = _head().eval()
    feats = [f.requires_grad_() for f in _feats(head)]
    params = [p for n, p in head.named_parameters() if n.startswith(("linear_c", "linear_fuse"))]
    upstream = torch.randn_like(head.fuse(feats))
    ours = torch.autograd.grad((head.fuse(feats) * upstream).sum(), params + feats)
    reference = torch.autograd.grad((_official(head, feats) * upstream).sum(), params + feats)
    for a, b in zip(ours, reference):
        assert _rel(a, b) < 1e-4
