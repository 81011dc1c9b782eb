"""The small SAM shipped in the package (vit_synth) and the HDNet trained on it, on scenes the
training never saw.

These tests use the shipped weights: the files load through the official loader and refuse a
corrupted copy, one click per object on unseen scenes gives what the checkpoint measured when it
was trained (far above random weights), and the HDNet file matches its SAM. Scenes come from seeds
50_000_000 and up (training used 0-999, validation 10_000_000+, the README's held-out set
30_000_000+).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from uois_sam_ros.core.config import SamConfig
from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene
from uois_sam_ros.core.segment.hdnet import default_hdnet_checkpoint, load_hdnet
from uois_sam_ros.core.segment.sam_backend import (
    SamSegmenter,
    build_vit_synth,
    default_sam_checkpoint,
    load_sam,
    read_sam_synth,
)
from uois_sam_ros.core.types import Prompts
from uois_sam_ros.core.weights import CheckpointError

torch.set_num_threads(1)

SEED = 50_000_000
MIN_AREA = 400  # px at 640x480: smaller visible parts are not prompted (as in the trainer)


@pytest.fixture(scope="module")
def sam_path():
    p = default_sam_checkpoint("vit_synth")
    assert p is not None, "the package ships uois_sam_ros/data/sam_vit_synth.pt"
    return p


@pytest.fixture(scope="module")
def segmenter(sam_path):
    return SamSegmenter(SamConfig(model_type="vit_synth", checkpoint=str(sam_path), device="cpu"))


@pytest.fixture(scope="module")
def scenes():
    cfg = SceneConfig(width=640, height=480, min_objects=3, max_objects=8)
    return [generate_scene(SEED + i, cfg).sample() for i in range(4)]


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """The pixel deepest inside the mask (x, y): the click a person would make."""
    d = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(d)), d.shape)
    return float(c), float(r)


def objects(sample) -> list[np.ndarray]:
    return [sample.label == k for k in np.unique(sample.label) if k > 0 and (sample.label == k).sum() >= MIN_AREA]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ------------------------------------------------------------------------------------------ loading
def test_shipped_checkpoint_loads_through_the_official_loader(sam_path):
    arch, state, meta = read_sam_synth(sam_path)
    ref = build_vit_synth(arch).state_dict()
    assert set(state) == set(ref) and all(state[k].shape == ref[k].shape for k in ref)
    assert sam_path.stat().st_size < 20 * 2**20
    model = load_sam("vit_synth", sam_path)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in build_vit_synth(arch).parameters())
    for k, v in model.state_dict().items():  # the weights are the file's, not the random init
        assert torch.equal(v.cpu(), state[k].to(v.dtype)), k
    side = json.loads(sam_path.with_suffix(".json").read_text())
    assert side["model_type"] == "vit_synth" and side["arch"] == arch
    assert side["heldout"]["trained"]["val_miou"] > side["heldout"]["untrained"]["val_miou"]


def test_a_corrupted_copy_gives_the_named_error(sam_path, tmp_path):
    bad = tmp_path / "sam_vit_synth.pt"
    data = sam_path.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"sam_vit_synth\.pt"):
        load_sam("vit_synth", bad)
    arch, state, meta = read_sam_synth(sam_path)
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    state[key] = state[key][:, :-1]
    from uois_sam_ros.core.segment.sam_backend import SYNTH_FORMAT, SYNTH_VERSION

    torch.save({"format": SYNTH_FORMAT, "version": SYNTH_VERSION, "arch": arch, "meta": meta, "state_dict": state},
               bad)
    with pytest.raises(CheckpointError, match=r"iou_prediction_head\.layers\.0\.weight"):
        load_sam("vit_synth", bad)
    shutil.copy(sam_path, bad)  # an intact copy loads
    assert load_sam("vit_synth", bad) is not None


# ------------------------------------------------------------------------------------------ quality
def test_one_point_per_object_quality_of_the_shipped_model(segmenter, scenes):
    """One click deep inside each object, SAM's own pick of its 3 masks, on unseen rendered scenes.

    Guards what the shipped checkpoint (part 3) measures here: 11 of these 19 objects above IoU 0.7,
    median IoU 0.73 (part 2: 32 %, 0.55; random weights about 0); a broken load, resize or decode falls
    far below. On the 40 scenes of the README's held-out set the same click gives 37 % above 0.7 (the
    other renderer 54 %), so "most objects" holds on these 4 scenes but not on every set yet (see README,
    "A small SAM trained here")."""
    ious = []
    for s in scenes:
        segmenter.set_frame(s.frame())
        objs = objects(s)
        pts = np.array([interior_point(m) for m in objs], np.float32)
        dec = segmenter.decode(Prompts(pts, np.ones(len(pts)), np.ones(len(pts))))
        scores = np.asarray(dec.scores)
        for k, m in enumerate(objs):
            t = 1 + int(np.argmax(scores[k, 1:]))  # SAM's own pick among its 3 multimask outputs
            ious.append(iou(np.asarray(dec.masks)[k, t], m))
    ious = np.array(ious)
    assert len(ious) >= 15
    good = float((ious > 0.7).mean())
    assert good >= 0.45 and np.median(ious) >= 0.65, \
        f"{good:.2f} of {len(ious)} objects get IoU > 0.7 (median {np.median(ious):.2f})"


def test_the_shipped_hdnet_belongs_to_the_shipped_small_sam(sam_path):
    """The HDNet file records the SAM it was trained on: loading it with the shipped small SAM
    raises no mismatch warning, with another SAM type it is refused."""
    import warnings

    from uois_sam_ros.core.segment.hdnet import HDNetSamWarning

    hd_path = default_hdnet_checkpoint("vit_synth")
    assert hd_path is not None, "the package ships uois_sam_ros/data/hdnet_vit_synth.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error", HDNetSamWarning)
        hd = load_hdnet(hd_path, sam_model_type="vit_synth", sam_checkpoint=str(sam_path), sam_token_dim=128)
    assert hd.token_dim == 128
    with pytest.raises(CheckpointError, match="vit_synth"):
        load_hdnet(hd_path, sam_model_type="vit_b", sam_checkpoint=None, sam_token_dim=128)
