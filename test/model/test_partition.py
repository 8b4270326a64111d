"""Window / real-shift partitions against an independent re-derivation of the official layout."""
from __future__ import annotations

import pytest
import torch

from tv3s_ros.model.partition import grid_size, layer_partition, shifted_partition, window_partition

GRIDS = [  # (H', W', window, shift)
    (12, 16, 4, 2), (8, 8, 4, 2), (4, 8, 4, 2), (8, 4, 4, 2), (4, 4, 4, 2),
    (12, 8, 4, 1), (12, 8, 4, 3), (15, 10, 5, 2),
    (20, 40, 20, 10), (80, 140, 20, 10), (60, 120, 20, 10),
]

OFFICIAL_ORDER = ["main", "a1", "b3", "c3", "d", "b1", "b2", "c1", "c2"]


def _windows(block: torch.Tensor, ph: int, pw: int):
    """Split a 2-D index block into ph x pw windows, row-major, each flattened row-major
    (the official reshape 'i h j w' then '(i j) (h w)')."""
    h, w = block.shape
    if h == 0 or w == 0:
        return []
    t = block.reshape(h // ph, ph, w // pw, pw).permute(0, 2, 1, 3).reshape(-1, ph * pw)
    return [tuple(r.tolist()) for r in t]


def _official_shift_groups(H: int, W: int, win: int, s: int):
    """Re-derive the official real-shift groups literally: roll the index map by -shift,
    slice the 9 blocks as tv3s_head.shifted_process does, cut each into windows."""
    rolled = torch.roll(torch.arange(H * W).reshape(H, W), shifts=(-s, -s), dims=(0, 1))
    r = win - s
    return {
        "main": _windows(rolled[:-win, :-win], win, win),
        "a1": _windows(rolled[-s:, -s:], s, s),
        "b3": _windows(rolled[-win:-s, -s:], r, s),
        "c3": _windows(rolled[-s:, -win:-s], s, r),
        "d": _windows(rolled[-win:-s, -win:-s], r, r),
        "b1": _windows(rolled[:-win, -s:], win, s),
        "b2": _windows(rolled[:-win, -win:-s], win, r),
        "c1": _windows(rolled[-s:, :-win], s, win),
        "c2": _windows(rolled[-win:-s, :-win], r, win),
    }


def _our_pieces(part):
    """Per group: list of piece token tuples (grid flat indices, row-major inside the piece)."""
    out = []
    for g in part.groups:
        idx = part.perm[g.offset:g.offset + g.count * g.size].reshape(g.count, g.size)
        out.append([tuple(r.tolist()) for r in idx])
    return out


@pytest.mark.parametrize("H,W,win,s", GRIDS)
def test_permutation_and_inverse(H, W, win, s):
    for part in (window_partition(H, W, win), shifted_partition(H, W, win, s)):
        n = H * W
        assert torch.equal(part.perm.sort().values, torch.arange(n))
        assert torch.equal(part.perm[part.inv_perm], torch.arange(n))
        assert torch.equal(part.inv_perm[part.perm], torch.arange(n))
        x = torch.randn(2, 3, n, 5)
        seqs = part.to_sequences(x)
        assert [tuple(q.shape) for q in seqs] == [(2 * g.count, 3 * g.size, 5) for g in part.groups]
        assert torch.equal(part.from_sequences(seqs, 2, 3), x)


@pytest.mark.parametrize("H,W,win,s", GRIDS)
def test_shifted_pieces_equal_official_roll_and_slice(H, W, win, s):
    official = _official_shift_groups(H, W, win, s)
    part = shifted_partition(H, W, win, s)
    ours = _our_pieces(part)
    # our groups merge equal-shape official groups, in official order
    for g, pieces in zip(part.groups, ours):
        expected = [p for name in g.names for p in official[name]]
        assert pieces == expected, g
    # every non-empty official group is represented, nothing else
    assert sorted(n for g in part.groups for n in g.names) == sorted(n for n in OFFICIAL_ORDER if official[n])
    # pieces cover the grid exactly once; count = (nH+1)(nW+1)
    flat = [i for pieces in ours for p in pieces for i in p]
    assert sorted(flat) == list(range(H * W))
    assert part.num_pieces == (H // win + 1) * (W // win + 1)


def test_shifted_pieces_are_rectangles_without_wraparound():
    H, W, win, s = 12, 16, 4, 1
    part = shifted_partition(H, W, win, s)
    for g, pieces in zip(part.groups, _our_pieces(part)):
        for p in pieces:
            rows, cols = [i // W for i in p], [i % W for i in p]
            r0, c0 = rows[0], cols[0]
            assert rows == [r0 + k // g.width for k in range(g.size)]
            assert cols == [c0 + k % g.width for k in range(g.size)]
    # thin border pieces: 1-row / 1-col top and left bands, 3 wide bottom and right bands
    shapes = {(g.height, g.width): g.count for g in part.groups}
    assert shapes == {(4, 4): 2 * 3, (1, 1): 1, (3, 1): 1, (1, 3): 1, (3, 3): 1, (4, 1): 2, (4, 3): 2,
                      (1, 4): 3, (3, 4): 3}


def test_cityscapes_layout_counts():
    part = shifted_partition(80, 140, 20, 10)
    assert [(g.height, g.width, g.count, g.names) for g in part.groups] == [
        (20, 20, 18, ("main",)), (10, 10, 4, ("a1", "b3", "c3", "d")),
        (20, 10, 6, ("b1", "b2")), (10, 20, 12, ("c1", "c2"))]
    assert window_partition(80, 140, 20).num_pieces == 28


def _official_flatten(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """einops 'b t c i h j w -> (b i j) (t h w) c' on x [B, T, C, H, W], written with permute."""
    b, t, c, h, w = x.shape
    x = x.reshape(b, t, c, h // ph, ph, w // pw, pw).permute(0, 3, 5, 1, 4, 6, 2)
    return x.reshape(b * (h // ph) * (w // pw), t * ph * pw, c)


def _official_shifted_apply(x: torch.Tensor, win: int, s: int, fn) -> torch.Tensor:
    """Emulation of the official shifted_process on x [B, T, C, H, W] with a sequence op fn."""
    rolled = torch.roll(x, shifts=(-s, -s), dims=(-2, -1))
    out = torch.zeros_like(rolled)
    r = win - s
    blocks = [  # (row slice, col slice, piece h, piece w)
        (slice(None, -win), slice(None, -win), win, win), (slice(-s, None), slice(-s, None), s, s),
        (slice(-win, -s), slice(-s, None), r, s), (slice(-s, None), slice(-win, -s), s, r),
        (slice(-win, -s), slice(-win, -s), r, r), (slice(None, -win), slice(-s, None), win, s),
        (slice(None, -win), slice(-win, -s), win, r), (slice(-s, None), slice(None, -win), s, win),
        (slice(-win, -s), slice(None, -win), r, win)]
    for rs, cs, ph, pw in blocks:
        blk = rolled[..., rs, cs]
        b, t, c, h, w = blk.shape
        if h == 0 or w == 0:
            continue
        y = fn(_official_flatten(blk, ph, pw))
        y = y.reshape(b, h // ph, w // pw, t, ph, pw, c).permute(0, 3, 6, 1, 4, 2, 5).reshape(b, t, c, h, w)
        out[..., rs, cs] = y
    return torch.roll(out, shifts=(s, s), dims=(-2, -1))


@pytest.mark.parametrize("H,W,win,s", [(12, 16, 4, 2), (12, 8, 4, 1), (8, 4, 4, 3), (20, 40, 20, 10)])
def test_sequence_op_matches_official_structure(H, W, win, s):
    """An order-sensitive op (cumulative sum along each sequence) applied through our
    partitions equals the official unshifted flatten / shifted roll-slice-merge."""
    torch.manual_seed(0)
    b, t, c = 2, 3, 4
    x = torch.randn(b, t, c, H, W, dtype=torch.float64)
    tokens = x.reshape(b, t, c, H * W).transpose(2, 3)

    def fn(seq):
        return seq.cumsum(dim=1)

    def ours(part):
        y = part.from_sequences([fn(q) for q in part.to_sequences(tokens)], b, t)
        return y.transpose(2, 3).reshape(b, t, c, H, W)

    # unshifted (even layers)
    flat = _official_flatten(x, win, win)
    official_even = fn(flat).reshape(b, H // win, W // win, t, win, win, c).permute(0, 3, 6, 1, 4, 2, 5)
    assert torch.allclose(ours(layer_partition(H, W, 0, win, s)), official_even.reshape(b, t, c, H, W))
    # real shift (odd layers)
    assert torch.allclose(ours(layer_partition(H, W, 1, win, s)), _official_shifted_apply(x, win, s, fn))
    # the cumsum is order-sensitive: a wrong order would be caught
    assert not torch.allclose(ours(layer_partition(H, W, 1, win, s)), ours(layer_partition(H, W, 0, win, s)))


def test_grid_size_official_rounding():
    assert grid_size(120, 216, 20, 20) == (60, 120)   # VSPW 480x864
    assert grid_size(120, 160, 20, 20) == (60, 80)    # VSPW 480x640
    assert grid_size(128, 256, 20, 20) == (80, 140)   # Cityscapes 512x1024
    assert grid_size(19, 13, 4, 4) == (12, 8)         # floor then round up
    assert grid_size(60, 60, 20, 30) == (60, 60)      # "Expand" variant: multiple of lcm(20, 30)
    with pytest.raises(ValueError):
        grid_size(1, 10, 4, 4)


def test_invalid_shift_and_grid():
    with pytest.raises(ValueError):
        shifted_partition(8, 8, 4, 4)
    with pytest.raises(ValueError):
        shifted_partition(8, 8, 4, 0)
    with pytest.raises(ValueError):
        window_partition(10, 8, 4)
    # non-real shift: plain (window + shift) windows on odd layers
    assert layer_partition(12, 12, 1, 4, 2, real_shift=False) is window_partition(12, 12, 6)


def test_partition_cached_per_grid():
    assert shifted_partition(12, 16, 4, 2) is shifted_partition(12, 16, 4, 2)
    p = window_partition(12, 16, 4)
    a, _ = p.indices(torch.device("cpu"))
    b, _ = p.indices(torch.device("cpu"))
    assert a is b
