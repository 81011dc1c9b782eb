"""SAM loading (official key names and shapes, clear errors) and batched decoding with HDNet tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uois_sam_ros.core.config import SamConfig
from uois_sam_ros.core.segment.sam_backend import SamSegmenter, build_sam_architecture, load_sam
from uois_sam_ros.core.types import Frame, Prompts
from uois_sam_ros.core.weights import OFFICIAL, CheckpointError, sha256_file, verify_sha256

torch.set_num_threads(2)


@pytest.mark.parametrize("model_type,embed,depth,heads",
                         [("vit_h", 1280, 32, 16), ("vit_l", 1024, 24, 16), ("vit_b", 768, 12, 12)])
def test_official_vit_key_layout(model_type, embed, depth, heads):
    with torch.device("meta"):  # shapes only: no memory, no time
        sd = build_sam_architecture(model_type).state_dict()
    assert sd["image_encoder.pos_embed"].shape == (1, 64, 64, embed)
    assert f"image_encoder.blocks.{depth - 1}.attn.qkv.weight" in sd
    assert f"image_encoder.blocks.{depth}.attn.qkv.weight" not in sd
    assert sd["image_encoder.blocks.0.attn.rel_pos_h"].shape == (27, embed // heads)  # windowed, 14 px
    assert sd["mask_decoder.iou_prediction_head.layers.2.weight"].shape == (4, 256)
    assert sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape == (2, 128)


def _round_trip(model_type, tmp_path, image_size=1024):
    torch.manual_seed(0)
    ref = build_sam_architecture(model_type, image_size)
    path = tmp_path / f"{model_type}.pth"
    torch.save(ref.state_dict(), path)
    loaded = load_sam(model_type, path, image_size=image_size)
    a, b = ref.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in list(a)[:: max(1, len(a) // 20)]:
        torch.testing.assert_close(a[k], b[k])
    return loaded


def test_vit_t_mobile_sam_round_trip(tmp_path):
    m = _round_trip("vit_t", tmp_path)
    assert "image_encoder.patch_embed.seq.0.c.weight" in m.state_dict()  # TinyViT layout of mobile_sam.pt


def test_vit_b_round_trip(tmp_path):
    m = _round_trip("vit_b", tmp_path)
    assert sum(p.numel() for p in m.parameters()) > 90_000_000


def test_vit_tiny_round_trip(tmp_path):
    _round_trip("vit_tiny", tmp_path, image_size=256)


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="sam.checkpoint is not set.*sam_vit_b_01ec64.pth"):
        load_sam("vit_b", None)
    with pytest.raises(CheckpointError, match="not found"):
        load_sam("vit_tiny", tmp_path / "nope.pth", image_size=256)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02not really a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"SAM vit_tiny checkpoint .*corrupt\.pth is corrupt"):
        load_sam("vit_tiny", corrupt, image_size=256)
    sd = build_sam_architecture("vit_tiny", 256).state_dict()
    sd["mask_decoder.iou_prediction_head.layers.2.weight"] = torch.zeros(5, 256)
    sd["image_encoder.extra.weight"] = torch.zeros(1)
    del sd["image_encoder.neck.0.weight"]
    bad = tmp_path / "mismatched.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError) as ei:
        load_sam("vit_tiny", bad, image_size=256)
    msg = str(ei.value)
    assert "mismatched.pth" in msg
    assert "missing keys: image_encoder.neck.0.weight" in msg
    assert "unexpected keys: image_encoder.extra.weight" in msg
    assert "mask_decoder.iou_prediction_head.layers.2.weight: file (5, 256) vs model (4, 256)" in msg
    with pytest.raises(ValueError, match="unknown sam.model_type 'vit_x'"):
        build_sam_architecture("vit_x")
    with pytest.raises(ValueError, match="only the test architecture vit_tiny"):
        build_sam_architecture("vit_b", 512)


def test_sha256_table_and_verification(tmp_path):
    assert set(OFFICIAL) == {"vit_h", "vit_l", "vit_b", "vit_t", "dinov2_vits14"}
    assert all(len(w.sha256) == 64 and w.url.startswith("https://") for w in OFFICIAL.values())
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(f) == digest
    verify_sha256(f, digest)
    with pytest.raises(CheckpointError, match="does not match the official"):
        verify_sha256(f, OFFICIAL["vit_b"].sha256)


@pytest.fixture(scope="module")
def segmenter() -> SamSegmenter:
    torch.manual_seed(0)
    seg = SamSegmenter(SamConfig(model_type="vit_tiny", allow_random_weights=True, image_size=256), decode_batch=4)
    rgb = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    seg.set_frame(Frame(rgb=rgb))
    return seg


def test_decode_all_four_tokens_batched(segmenter):
    pts = np.array([[10, 10], [80, 60], [150, 110], [40, 90], [120, 20], [5, 100]], np.float32)
    prompts = Prompts(pts, np.ones(6), np.ones(6))
    low = segmenter.decode_lowres(prompts)
    assert low.logits.shape == (6, 4, 64, 64)
    assert low.iou_pred.shape == (6, 4) and low.t_iou.shape == (6, 256) and low.t_mask.shape == (6, 4, 256)
    # the hooked IoU token really is what SAM's IoU head scored
    head = segmenter.model.mask_decoder.iou_prediction_head
    with torch.no_grad():
        torch.testing.assert_close(head(low.t_iou), low.iou_pred)
    # batches of 4 give what one batch of 6 gives, and tokens 1..3 equal SamPredictor's multimask output
    segmenter.decode_batch = 64
    one = segmenter.decode_lowres(prompts)
    segmenter.decode_batch = 4
    torch.testing.assert_close(one.logits, low.logits, atol=1e-4, rtol=1e-4)
    pr = segmenter.predictor
    coords = torch.as_tensor(pr.transform.apply_coords(pts, pr.original_size), dtype=torch.float32)[:, None]
    with torch.no_grad():
        _, iou3, low3 = pr.predict_torch(coords, torch.ones(6, 1), multimask_output=True)
    torch.testing.assert_close(low3, low.logits[:, 1:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou3, low.iou_pred[:, 1:], atol=1e-5, rtol=1e-5)
    assert segmenter.valid_lowres_hw() == (48, 64)  # 120x160 -> 192x256 of the 256 square


def test_decode_to_frame_resolution(segmenter):
    d = segmenter.decode(Prompts(np.array([[80, 60], [10, 10]]), [1, 1], [1, 1]))
    assert d.masks.shape == (2, 4, 120, 160) and d.masks.dtype == bool
    np.testing.assert_allclose(d.scores, d.iou_pred)
    with pytest.raises(ValueError, match="zero prompts"):
        segmenter.decode_lowres(Prompts.empty())


def test_download_script_matches_the_table():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "scripts" / "download_weights.sh").read_text()
    for name, w in OFFICIAL.items():
        assert re.search(rf"^SHA\[{name}\]={w.sha256}$", text, re.M), name
        assert re.search(rf"^URL\[{name}\]={re.escape(w.url)}$", text, re.M), name
        assert re.search(rf"^FILE\[{name}\]={re.escape(w.filename)}$", text, re.M), name


def test_pickled_object_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    """A file that needs full unpickling is refused; the message must not suggest weights_only=False."""
    import pytest
    import torch

    from uois_sam_ros.core.weights import CheckpointError, read_state_dict

    p = tmp_path / "pickled.pth"
    torch.save({"weight": torch.zeros(2), "opaque": OpaqueObject()}, p)
    with pytest.raises(CheckpointError) as ei:
        read_state_dict(p, "SAM vit_b")
    msg = str(ei.value)
    assert str(p) in msg and "SAM vit_b" in msg and "weights_only=True" in msg
    assert "False" not in msg and "\n" not in msg


class OpaqueObject:
    """A class torch's weights_only unpickler does not allow (module level, so it pickles)."""


def test_generate_amg_edge_cases(segmenter):
    empty = segmenter.generate_amg(np.zeros((0, 2)))
    assert empty.masks.shape == (0, 120, 160) and empty.iou_pred.shape == (0,) and empty.points.shape == (0, 2)
    # nothing passes an IoU threshold above every prediction: empty, not an error
    none = segmenter.generate_amg(np.array([[80.0, 60.0], [20.0, 100.0]]), pred_iou_thresh=10.0)
    assert len(none.masks) == 0
    # no filters: all 3 candidates per point (box NMS at IoU 1.0 suppresses nothing)
    allc = segmenter.generate_amg(np.array([[80.0, 60.0], [20.0, 100.0]]), pred_iou_thresh=0.0,
                                  stability_score_thresh=0.0, box_nms_thresh=1.0)
    assert allc.masks.shape == (6, 120, 160) and allc.masks.dtype == bool
    assert np.all(np.diff(allc.iou_pred) <= 0)  # AMG's order: box NMS keeps the best first
    fresh = SamSegmenter(SamConfig(model_type="vit_tiny", allow_random_weights=True, image_size=256))
    with pytest.raises(RuntimeError, match="call set_frame before generate_amg"):
        fresh.generate_amg(np.zeros((1, 2)))
