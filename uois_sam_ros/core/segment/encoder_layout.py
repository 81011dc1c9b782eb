"""SAM's image encoder laid out for a CPU (``sam.encoder: chunked``): attention in bands of query
rows, convolution weights NHWC (set_convolution_layout).

segment-anything's ``Attention.forward`` writes the whole (B*heads, HW, HW) score tensor, then
adds the decomposed relative positions in two broadcast passes that each write a new tensor of
that size, then a softmax that writes a third. In vit_b's four global blocks that is 12 x 4096 x
4096 floats, 805 MB per pass: on a CPU those passes, not the products, took most of the encoder
(``uois-sam-bench stages --ceiling``: the addition alone was a third of vit_b's encoder time).

This module computes the same function of the same weights (the module's own qkv, proj and
relative-position tables), a band of query rows at a time: per band, the scores, the two
relative-position terms added in place, an in-place softmax and the product with the values,
into one output tensor. A band's scores are at most CHUNK_BYTES, so they stay in the caches
between the passes. The arithmetic per element is the library's, in the library's order, so the
result equals it to float32 rounding (bit for bit in the runs measured; test_encoder_layout.py
checks it on vit_tiny, vit_synth and vit_b blocks, windowed and global).

It applies where no gradient is taken (an in-place softmax has none); with autograd on, the
library's forward runs. Under autocast the softmax is not done in place, so its dtype rules stay
the library's. On a GPU a band is the whole tensor: only the in-place passes remain.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

CHUNK_BYTES = 16 << 20  # scores per band on a CPU: 16 MB measured fastest on vit_b (4 MB: 1.65x, 64 MB: 1.65x)


def _rows_per_band(batch: int, h: int, w: int, elsize: int, device: torch.device) -> int:
    if device.type != "cpu":
        return h
    return max(1, min(h, CHUNK_BYTES // max(1, batch * w * h * w * elsize)))


def chunked_forward(mod: Attention, x: torch.Tensor) -> torch.Tensor:
    """Attention.forward of segment-anything, in bands of query rows (see the module docstring)."""
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in mod.parameters())):
        return Attention.forward(mod, x)
    b, h, w, _ = x.shape
    nh = mod.num_heads
    qkv = mod.qkv(x).reshape(b, h * w, 3, nh, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * nh, h * w, -1).unbind(0)
    c = q.shape[-1]
    if mod.use_rel_pos:
        r_q = q.reshape(b * nh, h, w, c)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, mod.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, mod.rel_pos_w))
    kt = k.transpose(-2, -1)
    in_place = not torch.is_autocast_enabled(x.device.type)
    out: torch.Tensor | None = None
    rows = _rows_per_band(b * nh, h, w, q.element_size(), x.device)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        a = (q[:, r0 * w:r1 * w] * mod.scale) @ kt
        if mod.use_rel_pos:
            a5 = a.view(b * nh, r1 - r0, w, h, w)
            a5 += rel_h[:, r0:r1, :, :, None]
            a5 += rel_w[:, r0:r1, :, None, :]
        if in_place:  # fp32 scores: softmax over them in place, the product straight into the output
            torch.ops.aten._softmax.out(a, -1, False, out=a)
            if out is None:
                out = a.new_empty(b * nh, h * w, v.shape[-1])
            torch.bmm(a, v, out=out[:, r0 * w:r1 * w])
        else:
            o = a.softmax(dim=-1) @ v
            if out is None:
                out = o.new_empty(b * nh, h * w, o.shape[-1])
            out[:, r0 * w:r1 * w] = o
    assert out is not None
    y = out.view(b, nh, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return mod.proj(y)


def _contiguous_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.contiguous()


def set_convolution_layout(encoder: nn.Module, channels_last: bool) -> None:
    """Store the encoder's convolution weights in NHWC (channels_last), oneDNN's layout on a CPU
    (TinyViT's convolution stages 1.3x faster, the ViTs' patch embedding and neck 1.05x; the same
    embedding to float32 rounding), or back in PyTorch's default NCHW. Its output, NHWC after an
    NHWC convolution, is made contiguous again for every caller (decoder, HDNet, HPG's 'sam'
    backbone, adaptation), so nothing downstream sees another layout. Converts only on a change."""
    if bool(getattr(encoder, "_uois_channels_last", False)) == channels_last:
        return
    encoder.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    encoder._uois_channels_last = channels_last
    if channels_last and not getattr(encoder, "_uois_contiguous_hook", False):
        encoder.register_forward_hook(_contiguous_output)
        encoder._uois_contiguous_hook = True


def attention_modules(encoder: nn.Module) -> list[Attention]:
    """segment-anything's Attention modules of an image encoder (none in MobileSAM's TinyViT)."""
    return [m for m in encoder.modules() if isinstance(m, Attention)]


@contextlib.contextmanager
def layout(encoder: nn.Module, chunked: bool) -> Iterator[None]:
    """Within the block, the encoder's Attention modules run chunked_forward (instance attributes:
    the modules, their state dicts and the class stay as they are); afterwards the library's."""
    mods = attention_modules(encoder) if chunked else []
    for m in mods:
        m.forward = chunked_forward.__get__(m)
    try:
        yield
    finally:
        for m in mods:
            if "forward" in vars(m):
                del m.forward
