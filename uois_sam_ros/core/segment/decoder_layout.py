"""SAM's mask decoder for K prompts on one image, re-laid out for a CPU (``sam.decoder: folded``).

segment-anything's ``MaskDecoder.predict_masks`` copies the image embedding K times and then
runs every image-side product of the two-way transformer on K copies: 2-3 projections of
(K*4096, 256) per attention, a LayerNorm2d written as six element-wise passes, and the two
transposed convolutions in NCHW. On a CPU that is memory traffic, not arithmetic: the
library decoder runs at 11-12 % of the matmul peak (uois-sam-bench stages).

This module computes the same function from the same weights (the decoder's own submodules
and parameters; nothing is trained or copied), in another order:

- **Layer 0 is shared.** With no mask input the dense prompt embedding is one vector, so the
  image side of the first block is the same for every prompt until its image-to-token
  attention. Those projections run once on (1, HW, C) and broadcast.
- **Attention folded into its projections.** Where the image side differs per prompt, an
  attention between T tokens and HW positions never builds the (K, HW, I) query, key or value
  tensors. For each head, q·(W_k x + b_k) = (W_k^T q)·x + const, and the constant cancels in the
  softmax; sum_t a_t (W_v x_t + b_v) = W_v (sum_t a_t x_t) + b_v. So the image side enters only
  through bmm's of (K, HW, C) with (K, C, heads*T): heads*T = 56 columns instead of the I = 128
  of a projection. The output projection is folded into the values the same way, its bias
  spread over the heads (each head's weights sum to 1), and the residual add is the bmm's
  ``beta`` term (``baddbmm``). The key position embedding is its own product with the shared
  (HW, C) table, so keys + pe is never written per prompt, and the image-to-token scores are laid
  out (K, heads, T, HW) so that their softmax over T runs along a long axis.
- **Upscaling as two matmuls, channels last.** A 2x2 stride-2 transposed convolution is a
  matmul to (2*2*C_out) channels followed by a pixel shuffle; LayerNorm2d is ``layer_norm`` over
  the last dim. The pixel shuffle happens once, on the M-channel mask logits. On a CPU it runs
  in chunks of rows so the (rows*16, 32) intermediate stays small; on a GPU, under autograd and
  under torch.compile on whole tensors.

The results and their gradients equal the library's to float32 rounding (test_decoder_layout.py
compares them on vit_tiny, vit_synth and vit_t decoders, random and shipped weights, for point,
box and mask prompts). Any decoder whose modules are not laid out
as segment-anything's (``supports``) runs the library's ``predict_masks`` instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# rows of the (K*HW, C) image side per upscaling chunk: (rows*4, 64) and (rows*16, 32) intermediates
# of about 0.5 + 1 MB stay near the cache, where one (K*HW*16, 32) tensor would be 250 MB at K=30
UPSCALE_CHUNK = 512


def supports(dec: nn.Module) -> bool:
    """True when dec has segment-anything's MaskDecoder layout (SAM, MobileSAM and our vit_synth do)."""
    try:
        tr = dec.transformer
        up = list(dec.output_upscaling)
        ok = (len(up) == 5 and isinstance(up[0], nn.ConvTranspose2d) and isinstance(up[3], nn.ConvTranspose2d)
              and all(c.kernel_size == (2, 2) and c.stride == (2, 2) and c.padding == (0, 0)
                      and c.groups == 1 and c.dilation == (1, 1) for c in (up[0], up[3]))
              and all(hasattr(up[1], a) for a in ("weight", "bias", "eps"))
              and up[0].bias is not None and up[3].bias is not None)
        blocks = list(tr.layers)
        ok = ok and len(blocks) > 0 and all(
            hasattr(b, n) for b in blocks for n in ("self_attn", "cross_attn_token_to_image", "mlp", "norm1",
                                                    "norm2", "norm3", "norm4", "cross_attn_image_to_token",
                                                    "skip_first_layer_pe"))
        ok = ok and hasattr(tr, "final_attn_token_to_image") and hasattr(tr, "norm_final_attn")
        return bool(ok)
    except (AttributeError, TypeError):
        return False


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(B, N, h*d) -> (B, h, N, d), a view."""
    b, n, c = x.shape
    return x.view(b, n, h, c // h).transpose(1, 2)


def _plain_attention(m: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's Attention (projections, scaled softmax, out_proj) through SDPA; the batch
    dims of q and k/v may be 1 and K (the shared layer 0 broadcasts)."""
    h = m.num_heads
    qh, kh, vh = _heads(m.q_proj(q), h), _heads(m.k_proj(k), h), _heads(m.v_proj(v), h)
    b = max(qh.shape[0], kh.shape[0])
    out = F.scaled_dot_product_attention(qh.expand(b, -1, -1, -1), kh.expand(b, -1, -1, -1),
                                         vh.expand(b, -1, -1, -1))
    return m.out_proj(out.transpose(1, 2).reshape(b, out.shape[2], -1))


def _head_weights(lin: nn.Linear, h: int) -> torch.Tensor:
    """A projection C -> h*d as (h, d, C)."""
    w = lin.weight
    return w.view(h, w.shape[0] // h, w.shape[1])


def _tokens_to_image(m: nn.Module, q: torch.Tensor, keys: torch.Tensor, kpe: torch.Tensor) -> torch.Tensor:
    """Attention of T tokens over HW per-prompt positions, folded: q (K, T, C) with the token pe,
    keys (K, HW, C), kpe (1, HW, C). Returns the attention output (K, T, C).

    The key pe enters as its own product with the shared (HW, C) pe, so keys + pe, a (K, HW, C)
    tensor, is never written."""
    h = m.num_heads
    kq, t, _ = q.shape
    d = m.q_proj.out_features // h
    qh = _heads(m.q_proj(q), h)  # (K, h, T, d)
    wk = _head_weights(m.k_proj, h)  # (h, d, C); k_proj's bias adds a per-row constant: cancels
    qk = torch.einsum("khtd,hdc->khtc", qh, wk).reshape(kq, h * t, -1) * (1.0 / math.sqrt(d))  # (K, hT, C)
    scores = (qk.reshape(kq * h * t, -1) @ kpe[0].transpose(0, 1)).view(kq, h * t, -1)
    scores = torch.baddbmm(scores, qk, keys.transpose(1, 2))  # (K, hT, HW)
    a = scores.softmax(dim=-1)
    ax = torch.bmm(a, keys).view(kq, h, t, -1)  # (K, h, T, C): weighted sums of the values' inputs
    wv = _head_weights(m.v_proj, h)
    vals = torch.einsum("khtc,hdc->khtd", ax, wv) + m.v_proj.bias.view(1, h, 1, d)  # rows of a sum to 1
    return m.out_proj(vals.transpose(1, 2).reshape(kq, t, h * d))


def _image_to_tokens(m: nn.Module, keys: torch.Tensor, kpe: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                     ) -> torch.Tensor:
    """keys + attention of the HW positions (queries keys + kpe) over T tokens, folded.

    keys (1 or K, HW, C), kpe (1, HW, C); k = queries + token pe, v = queries, (K, T, C).
    Returns (K, HW, C). The scores are laid out (K, heads, T, HW), so the softmax over the T
    tokens runs along a long contiguous axis (over a last axis of 7 it is 6x slower)."""
    h = m.num_heads
    kq, t, c = k.shape
    d = m.q_proj.out_features // h
    kh = _heads(m.k_proj(k), h)  # (K, h, T, d)
    wq = _head_weights(m.q_proj, h)  # (h, d, C)
    scale = 1.0 / math.sqrt(d)
    mq = torch.einsum("khtd,hdc->khtc", kh, wq).reshape(kq, h * t, c) * scale  # (K, hT, C)
    bias = (torch.einsum("hd,khtd->kht", m.q_proj.bias.view(h, d), kh) * scale).reshape(kq, h * t, 1)
    flat = mq.reshape(kq * h * t, c)
    if keys.shape[0] == 1:  # one image side for all prompts: one matmul (K*hT, C) @ (C, HW)
        scores = (flat @ (keys[0] + kpe[0]).transpose(0, 1)).view(kq, h * t, -1) + bias
    else:
        scores = (flat @ kpe[0].transpose(0, 1)).view(kq, h * t, -1) + bias
        scores = torch.baddbmm(scores, mq, keys.transpose(1, 2))  # (K, hT, HW)
    a = scores.view(kq, h, t, -1).softmax(dim=2).view(kq, h * t, -1)
    vh = _heads(m.v_proj(v), h)  # (K, h, T, d)
    wo = m.out_proj.weight.view(c, h, d)  # out_proj: h*d -> C, split by head
    vw = torch.einsum("khtd,chd->khtc", vh, wo) + m.out_proj.bias.view(1, 1, 1, c) / h  # bias over h heads
    return torch.baddbmm(keys.expand(kq, -1, -1), a.transpose(1, 2), vw.reshape(kq, h * t, c))


def _two_way(tr: nn.Module, img: torch.Tensor, pe: torch.Tensor, tokens: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """segment-anything's TwoWayTransformer.forward, laid out as described above.

    img, pe: (B, C, h, w) with B = 1 (shared) or K; tokens (K, T, C). Returns (queries, keys)."""
    keys = img.flatten(2).transpose(1, 2)  # (B, HW, C)
    kpe = pe.flatten(2).transpose(1, 2)  # (1, HW, C)
    queries = tokens
    for blk in tr.layers:
        if blk.skip_first_layer_pe:
            queries = _plain_attention(blk.self_attn, queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + _plain_attention(blk.self_attn, q, q, queries)
        queries = blk.norm1(queries)
        q = queries + tokens
        if keys.shape[0] == 1:  # shared image side: project once, broadcast over the prompts
            att = _plain_attention(blk.cross_attn_token_to_image, q, keys + kpe, keys)
        else:
            att = _tokens_to_image(blk.cross_attn_token_to_image, q, keys, kpe)
        queries = blk.norm2(queries + att)
        queries = blk.norm3(queries + blk.mlp(queries))
        q = queries + tokens
        keys = blk.norm4(_image_to_tokens(blk.cross_attn_image_to_token, keys, kpe, q, queries))
    q = queries + tokens
    if keys.shape[0] == 1:
        att = _plain_attention(tr.final_attn_token_to_image, q, keys + kpe, keys)
    else:
        att = _tokens_to_image(tr.final_attn_token_to_image, q, keys, kpe)
    return tr.norm_final_attn(queries + att), keys


def _convt_matrix(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2 stride-2 ConvTranspose2d as (C_in, 4*C_out) weights and (4*C_out) bias, columns (a, b, o)."""
    w = conv.weight  # (C_in, C_out, 2, 2)
    c_out = w.shape[1]
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], 4 * c_out), conv.bias.repeat(4)


def _upscale_masks(dec: nn.Module, src: torch.Tensor, hyper: torch.Tensor, h: int, w: int,
                   chunked: bool = True) -> torch.Tensor:
    """output_upscaling and the hypernetwork product: src (K, HW, C) channels last, hyper (K, M, C2).
    Returns (K, M, 4h, 4w) mask logits, equal to (hyper @ output_upscaling(src)) of the library.

    chunked: per prompt and UPSCALE_CHUNK rows, so the intermediates stay near a CPU's caches;
    False: whole tensors (a GPU, where a loop of small kernels would cost launches, and
    torch.compile, which would unroll the loop)."""
    conv1, ln, act1, conv2, act2 = dec.output_upscaling
    w1, b1 = _convt_matrix(conv1)
    w2, b2 = _convt_matrix(conv2)
    c1 = conv1.weight.shape[1]
    c2 = conv2.weight.shape[1]
    k, hw, c = src.shape
    m = hyper.shape[1]
    if not chunked:
        y = torch.addmm(b1, src.reshape(k * hw, c), w1).view(k * hw * 4, c1)
        y = act1(F.layer_norm(y, (c1,), ln.weight, ln.bias, ln.eps))
        z = act2(torch.addmm(b2, y, w2)).view(k, hw * 16, c2)
        out = torch.bmm(z, hyper.transpose(1, 2))
    else:
        out = torch.empty(k, hw * 16, m, dtype=torch.result_type(src, hyper), device=src.device)
        rows = max(1, UPSCALE_CHUNK)
        for i in range(k):
            hy = hyper[i].transpose(0, 1)  # (C2, M)
            for r in range(0, hw, rows):
                x = src[i, r:r + rows]  # (n, C)
                n = x.shape[0]
                y = torch.addmm(b1, x, w1).view(n * 4, c1)  # rows (p, a, b)
                y = act1(F.layer_norm(y, (c1,), ln.weight, ln.bias, ln.eps))
                z = act2(torch.addmm(b2, y, w2).view(n * 16, c2))  # rows (p, a, b, a2, b2)
                torch.mm(z, hy, out=out[i, r * 16:(r + n) * 16])
    # rows (i, j, a, b, a2, b2) of the h x w grid -> pixel (4i + 2a + a2, 4j + 2b + b2)
    out = out.view(k, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return out.reshape(k, m, 4 * h, 4 * w)


def predict_masks(dec: nn.Module, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                  sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                  chunked: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MaskDecoder.predict_masks of dec for K prompts on one image, plus the transformer's output
    tokens hs (K, T, C) that HDNet reads. image_embeddings and image_pe: (1, C, h, w);
    sparse: (K, N, C); dense: (K, C, h, w) or (1, C, h, w). Returns (masks (K, M, 4h, 4w),
    iou_pred (K, M), hs) for all M = num_mask_tokens tokens, like the library's predict_masks.
    chunked: the upscaling in row chunks (None: on a CPU without autograd; False is the form torch.compile
    is given). Differentiable, so training can use it too."""
    if image_embeddings.shape[0] != 1:
        raise ValueError(f"one image per call: image_embeddings has batch {image_embeddings.shape[0]}")
    k = sparse_prompt_embeddings.shape[0]
    out_tok = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat((out_tok.unsqueeze(0).expand(k, -1, -1), sparse_prompt_embeddings), dim=1)
    dense = dense_prompt_embeddings
    if dense.shape[0] != 1 and dense.stride(0) == 0:
        dense = dense[:1]  # the prompt encoder's no-mask embedding is one vector expanded over K
    src = image_embeddings + dense
    _, c, h, w = src.shape
    hs, keys = _two_way(dec.transformer, src, image_pe, tokens)
    keys = keys.expand(k, -1, -1)  # a decoder of depth 0 would leave the image side shared
    n = dec.num_mask_tokens
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in range(n)], dim=1)
    if chunked is None:  # the chunks write into one buffer (out=), which autograd cannot follow
        chunked = keys.device.type == "cpu" and not (torch.is_grad_enabled() and keys.requires_grad)
    masks = _upscale_masks(dec, keys, hyper, h, w, chunked)
    return masks, dec.iou_prediction_head(hs[:, 0]), hs
