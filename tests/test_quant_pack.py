"""Packing of low-bit codes: exact round trips, range checks, the fused scaled unpack."""
from __future__ import annotations

import pytest
import torch

from qbench.quant import pack


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_unpack_exact(bits):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    g = torch.Generator().manual_seed(bits)
    q = torch.randint(lo, hi + 1, (7, 64), generator=g, dtype=torch.int64).to(torch.int8)
    q[0, :4] = torch.tensor([lo, hi, 0, -1], dtype=torch.int8)  # the edges
    p = pack.pack(q, bits)
    ppb = pack.per_byte(bits)
    assert p.shape == (7, 64 // ppb)
    assert p.dtype == (torch.uint8 if ppb > 1 else torch.int8)
    assert torch.equal(pack.unpack(p, bits), q)


def test_pack_layout_is_blocked_nibbles():
    q = torch.tensor([[1, 2, -1, -8]], dtype=torch.int8)  # blocks [1, 2] and [-1, -8]
    p = pack.pack(q, 4)
    assert p.tolist() == [[0xF1, 0x82]]  # low nibble = block 0, high nibble = block 1


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError):
        pack.pack(torch.tensor([[8, 0]], dtype=torch.int8), 4)  # 8 is not a 4-bit code
    with pytest.raises(ValueError):
        pack.pack(torch.zeros(1, 3, dtype=torch.int8), 4)  # odd length
    with pytest.raises(TypeError):
        pack.pack(torch.zeros(1, 4, dtype=torch.int32), 4)


@pytest.mark.parametrize("bits,smax", [(4, 16), (2, 64)])
def test_unpack_scaled_matches_reference(bits, smax):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    g = torch.Generator().manual_seed(0)
    q = torch.randint(lo, hi + 1, (5, 128), generator=g).to(torch.int8)
    sg = torch.randint(1, smax + 1, (5, 4), generator=g).to(torch.uint8)
    w8 = pack.unpack_scaled(pack.pack(q, bits), bits, sg, 32)
    ref = q.int().view(5, 4, 32) * sg.int().view(5, 4, 1)
    assert torch.equal(w8.int(), ref.view(5, 128))
