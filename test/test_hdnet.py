"""HDNet (eq. 5): shapes, the repeat/concat wiring, the sum with SAM's IoU, checkpoints."""

from __future__ import annotations

import pytest
import torch

from uois_sam_ros.core.segment.hdnet import HDNet, load_hdnet, save_hdnet
from uois_sam_ros.core.segment.sam_backend import build_sam_architecture
from uois_sam_ros.core.weights import CheckpointError

torch.set_num_threads(2)


def test_same_architecture_as_sams_iou_head():
    sam_head = build_sam_architecture("vit_tiny", 256).mask_decoder.iou_prediction_head
    net = HDNet()
    assert type(net.mlp) is type(sam_head)
    assert net.mlp.num_layers == sam_head.num_layers == 3
    assert [tuple(layer.weight.shape) for layer in net.mlp.layers] == [(256, 512), (256, 256), (1, 256)]
    assert [layer.out_features for layer in sam_head.layers][:2] == [256, 256]


def test_shapes_and_eq5_sum():
    torch.manual_seed(0)
    net = HDNet().eval()
    k = 7
    t_iou, t_mask, s = torch.randn(k, 256), torch.randn(k, 4, 256), torch.rand(k, 4)
    delta = net(t_iou, t_mask)
    assert delta.shape == (k, 4)
    adapted = net.adapted_iou(s, t_iou, t_mask)
    torch.testing.assert_close(adapted, delta + s)
    # each score j is the MLP on concat(T_iou, T_mask[:, j])
    for j in range(4):
        torch.testing.assert_close(delta[:, j], net.mlp(torch.cat([t_iou, t_mask[:, j]], 1))[:, 0])
    # permuting the mask tokens permutes the scores
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(net(t_iou, t_mask[:, perm]), delta[:, perm])


def test_bad_token_shapes():
    with pytest.raises(ValueError, match=r"T_iou \(K, 256\)"):
        HDNet()(torch.randn(3, 128), torch.randn(3, 4, 128))
    with pytest.raises(ValueError, match="got"):
        HDNet()(torch.randn(3, 256), torch.randn(2, 4, 256))


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(1)
    net = HDNet().eval()
    path = tmp_path / "hdnet.pt"
    save_hdnet(path, net, {"sam": "vit_l"})
    loaded = load_hdnet(path)
    assert loaded.meta == {"sam": "vit_l"}
    t_iou, t_mask = torch.randn(2, 256), torch.randn(2, 4, 256)
    torch.testing.assert_close(loaded(t_iou, t_mask), net(t_iou, t_mask))
    with pytest.raises(CheckpointError, match="not found"):
        load_hdnet(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_hdnet(bad)
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["mlp.layers.0.weight"] = torch.zeros(128, 512)
    torch.save(blob, bad)
    with pytest.raises(CheckpointError, match=r"mismatched shapes: mlp.layers.0.weight: file \(128, 512\)"):
        load_hdnet(bad)


def test_sam_record_check_and_old_checkpoints_without_it(tmp_path):
    import warnings

    from uois_sam_ros.core.segment.hdnet import HDNetSamWarning, sam_record

    net = HDNet().eval()
    rec = sam_record("vit_tiny", None, 256)  # random SAM weights: no hash
    assert rec == {"model_type": "vit_tiny", "image_size": 256, "checkpoint_sha256": None}
    save_hdnet(tmp_path / "new.pt", net, sam=rec)
    assert load_hdnet(tmp_path / "new.pt", sam_model_type="vit_tiny").sam_record == rec
    with pytest.raises(CheckpointError, match=r"trained on SAM vit_tiny, but the SAM in use is vit_b.*--sam-type vit_b"):
        load_hdnet(tmp_path / "new.pt", sam_model_type="vit_b")
    fake = tmp_path / "sam.pth"
    fake.write_bytes(b"weights")
    with pytest.warns(HDNetSamWarning, match="trained on SAM vit_tiny random weights, but the SAM in use has the checkpoint"):
        load_hdnet(tmp_path / "new.pt", sam_model_type="vit_tiny", sam_checkpoint=fake)
    # a version-1 file (no 'sam' record) still loads, and nothing is checked
    blob = torch.load(tmp_path / "new.pt", weights_only=True)
    del blob["sam"]
    blob["version"] = 1
    torch.save(blob, tmp_path / "old.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = load_hdnet(tmp_path / "old.pt", sam_model_type="vit_h", sam_checkpoint=fake)
    assert old.sam_record is None


def test_pipeline_refuses_an_hdnet_trained_on_another_sam_type(tmp_path):
    from uois_sam_ros.core.config import config_from_dict
    from uois_sam_ros.core.segment.hdnet import sam_record
    from uois_sam_ros.core.segment.pipeline import UOISPipeline

    save_hdnet(tmp_path / "h.pt", HDNet(), sam=sam_record("vit_b", None))
    cfg = config_from_dict({"sam": {"model_type": "vit_tiny", "allow_random_weights": True, "image_size": 128},
                            "hdnet": {"checkpoint": str(tmp_path / "h.pt")},
                            "pipeline": {"method": "heatmap_hdnet"}})
    with pytest.raises(CheckpointError, match="trained on SAM vit_b, but the SAM in use is vit_tiny"):
        UOISPipeline(cfg, part="masks")  # the segmentation side loads SAM + HDNet
    save_hdnet(tmp_path / "h.pt", HDNet(), sam=sam_record("vit_tiny", None, 128))
    p = UOISPipeline(cfg, part="masks")
    assert p.uses_hdnet and p.hdnet.sam_record["model_type"] == "vit_tiny"


def test_ranked_first_hdnet_over_all_tokens_sams_head_over_the_multimask_ones():
    from uois_sam_ros.core.segment.hdnet import ranked_first

    adapted = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.1, 0.2, 0.8, 0.3]])
    iou_pred = torch.tensor([[0.99, 0.5, 0.7, 0.6], [0.2, 0.9, 0.1, 0.9]])
    h, s = ranked_first(adapted, iou_pred)
    assert h.tolist() == [0, 2] and s.tolist() == [2, 1]  # token 0 never for the head; a tie keeps the first
    assert ranked_first(adapted, iou_pred, multimask=False)[1].tolist() == [0, 0]
