"""The device-side post-processing: the torch versions (``*_t``) against plain references, proof
that they never read a value on the host, and the SAM path's output against the numpy scheme."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import calculate_stability_score
from torch.utils._python_dispatch import TorchDispatchMode

from uois_sam_ros.core.config import PostprocessConfig, config_from_dict
from uois_sam_ros.core.segment import pipeline as pipeline_mod
from uois_sam_ros.core.segment import postprocess as pp
from uois_sam_ros.core.types import Prompts

torch.set_num_threads(1)


# --- plain references: loops over Python ints and numpy, written from the documented rules ------


def ref_select_best(scores, threshold):
    s = np.asarray(scores, np.float32)
    idx = np.zeros(len(s), np.int64)
    for k, row in enumerate(s):
        for j in range(1, len(row)):
            if row[j] > row[idx[k]]:  # the first maximum wins a tie
                idx[k] = j
    best = s[np.arange(len(s)), idx].astype(np.float32)
    return idx, best, np.array([b > np.float32(threshold) for b in best], bool)


def ref_box_sizes(masks):
    out = np.zeros((len(masks), 2), np.int64)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(ys):
            out[i] = (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    return out


def ref_size_filter(masks, cfg, height, width, pixel_scale=(1.0, 1.0)):
    max_h = int(round(cfg.max_box_height * height / cfg.reference_height))
    max_w = int(round(cfg.max_box_width * width / cfg.reference_width))
    min_area = cfg.min_area * (height * width) / (cfg.reference_height * cfg.reference_width)
    sy, sx = float(pixel_scale[0]), float(pixel_scale[1])
    keep = []
    for (h, w), m in zip(ref_box_sizes(masks), masks, strict=True):
        area = float(np.count_nonzero(m))
        keep.append(float(h) * sy <= max_h + 1e-6 and float(w) * sx <= max_w + 1e-6 and area * sy * sx >= min_area)
    return np.array(keep, bool)


def ref_iou32(a, b):
    """IoU as the filters compute it: integer counts, one float32 division."""
    inter = int(np.count_nonzero(a & b))
    union = int(np.count_nonzero(a)) + int(np.count_nonzero(b)) - inter
    return np.float32(inter) / np.float32(union) if union > 0 else np.float32(0.0)


def ref_nms(masks, scores, thr):
    s = np.asarray(scores, np.float32)
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))  # descending, ties by index
    kept: list[int] = []
    for i in order:
        if all(not ref_iou32(masks[j], masks[i]) > np.float32(thr) for j in kept):
            kept.append(i)
    return np.array(kept, np.int64)


def ref_filter(masks, scores, cfg, height, width, pixel_scale=(1.0, 1.0)):
    masks = np.asarray(masks, bool)
    scores = np.asarray(scores, np.float32)
    if cfg.filter_before_nms:
        idx = np.flatnonzero(ref_size_filter(masks, cfg, height, width, pixel_scale))
        return idx[ref_nms(masks[idx], scores[idx], cfg.nms_iou)].astype(np.int64)
    keep = ref_nms(masks, scores, cfg.nms_iou)
    return keep[ref_size_filter(masks[keep], cfg, height, width, pixel_scale)].astype(np.int64)


# --- random cases --------------------------------------------------------------------------------


def _random_masks(rng, n, h, w):
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        kind = rng.integers(6)
        if kind == 0:
            continue  # empty
        if kind == 1 and i > 0:
            masks[i] = masks[rng.integers(i)]  # a duplicate: IoU 1 (or 0 with an empty one)
            continue
        if kind == 2:
            masks[i] = rng.random((h, w)) < rng.uniform(0.05, 0.6)
            continue
        for _ in range(1 + (kind == 3)):
            y0, x0 = rng.integers(h), rng.integers(w)
            masks[i, y0:rng.integers(y0 + 1, h + 1), x0:rng.integers(x0 + 1, w + 1)] = True
    return masks


def _random_scores(rng, n):
    if rng.random() < 0.5:  # many ties, and prompts no candidate survived (-inf)
        return rng.choice(np.array([0.2, 0.5, 0.5, 0.9, -np.inf], np.float32), n).astype(np.float32)
    return rng.random(n).astype(np.float32)


def _random_cfg(rng, h, w):
    return PostprocessConfig(nms_iou=float(rng.choice([0.0, 0.1, 0.3, 0.5, rng.random()])),
                             max_box_height=int(rng.integers(1, 2 * h)), max_box_width=int(rng.integers(1, 2 * w)),
                             reference_height=int(rng.choice([h, 2 * h, 480])),
                             reference_width=int(rng.choice([w, 3 * w, 640])),
                             min_area=int(rng.integers(0, 60)), filter_before_nms=bool(rng.integers(2)))


SCALES = [(1.0, 1.0), (4.0, 4.0), (2.5, 2.5), (480 / 192, 640 / 256), (1 / 3, 0.7), (3.3, 1.1)]


def _cases(seed, count):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n, h, w = int(rng.integers(0, 24)), int(rng.integers(4, 32)), int(rng.integers(4, 32))
        sy, sx = SCALES[rng.integers(len(SCALES))]
        H, W = int(round(h * sy)) or 1, int(round(w * sx)) or 1  # the image the limits scale to
        yield (_random_masks(rng, n, h, w), _random_scores(rng, n), _random_cfg(rng, h, w), H, W, (sy, sx))


def test_select_best_t_matches_reference():
    rng = np.random.default_rng(1)
    for _ in range(300):
        k, m = int(rng.integers(0, 12)), int(rng.integers(1, 5))
        s = (rng.choice(np.array([0.1, 0.48, 0.5, -np.inf], np.float32), (k, m)) if rng.random() < 0.5
             else rng.random((k, m)).astype(np.float32))
        thr = float(rng.choice([0.48, 0.5, float(np.float32(0.1)), rng.random()]))
        ref = ref_select_best(s, thr)
        got = pp.select_best_t(torch.from_numpy(s), thr)
        wrapped = pp.select_best(s, thr)
        for r, g, v in zip(ref, got, wrapped, strict=True):
            assert np.array_equal(r, g.numpy()) and np.array_equal(r, v) and r.dtype == v.dtype


def test_box_and_size_filter_t_match_reference():
    for masks, _, cfg, H, W, scale in _cases(2, 300):
        t = torch.from_numpy(masks)
        assert np.array_equal(pp.box_sizes_t(t).numpy(), ref_box_sizes(masks))
        assert np.array_equal(pp.box_sizes(masks), ref_box_sizes(masks))
        ref = ref_size_filter(masks, cfg, H, W, scale)
        assert np.array_equal(pp.size_filter_t(t, cfg, H, W, scale).numpy(), ref)
        assert np.array_equal(pp.size_filter(masks, cfg, H, W, scale), ref)


def test_integer_limits_equal_the_float64_rule():
    """The host turns 's * scale <= limit' and 'a * sy * sx >= min_area' into exact integer limits."""
    rng = np.random.default_rng(3)
    for _ in range(400):
        scale = float(rng.choice([0.0, 1.0, 0.1, 1 / 3, 2.5, rng.uniform(0, 5)]))
        sx = float(rng.choice([1.0, 0.1, 0.7, rng.uniform(0, 5)]))
        n = int(rng.integers(0, 300))
        limit = float(rng.choice([rng.integers(0, 100) + 1e-6, rng.uniform(0, 100), 0.3, 30.000001]))
        side = pp._largest_side(limit, scale, n)
        assert all((s <= side) == (float(s) * scale <= limit) for s in range(n + 1))
        area = pp._smallest_area(limit, scale, sx, n)
        assert all((a >= area) == (float(a) * scale * sx >= limit) for a in range(n + 1))


def test_mask_nms_t_matches_reference():
    for masks, scores, cfg, *_ in _cases(4, 300):
        ref = ref_nms(masks, scores, cfg.nms_iou)
        t, s = torch.from_numpy(masks), torch.from_numpy(scores)
        keep = pp.mask_nms_t(t, s, cfg.nms_iou)
        assert np.array_equal(pp.kept_in_order(pp.score_order_t(s), keep).numpy(), ref)
        assert np.array_equal(pp.mask_nms(masks, scores, cfg.nms_iou), ref)
        assert np.array_equal(pp.mask_nms(t, scores, cfg.nms_iou), ref)


def test_mask_nms_t_valid_subset_is_nms_on_the_subset():
    rng = np.random.default_rng(5)
    for masks, scores, cfg, *_ in _cases(6, 150):
        valid = rng.random(len(masks)) < 0.6
        sub = np.flatnonzero(valid)
        ref = sub[ref_nms(masks[sub], scores[sub], cfg.nms_iou)]
        s = torch.from_numpy(scores)
        keep = pp.mask_nms_t(torch.from_numpy(masks), s, cfg.nms_iou, valid=torch.from_numpy(valid))
        assert np.array_equal(pp.kept_in_order(pp.score_order_t(s), keep).numpy(), ref)


def test_iou_equal_to_the_threshold_is_not_suppressed():
    a = np.zeros((1, 4, 4), bool)
    a[0, :2, :2] = True  # 4 px inside b's 8: IoU exactly 0.5
    b = np.zeros((1, 4, 4), bool)
    b[0, :2, :] = True
    masks, scores = np.concatenate([a, b]), np.array([0.5, 0.9], np.float32)
    assert pp.mask_nms(masks, scores, 0.5).tolist() == [1, 0] == ref_nms(masks, scores, 0.5).tolist()
    assert pp.mask_nms(masks, scores, 0.49).tolist() == [1] == ref_nms(masks, scores, 0.49).tolist()


def test_filter_masks_t_matches_reference_both_orders():
    seen = set()
    for masks, scores, cfg, H, W, scale in _cases(7, 400):
        for before in (False, True):
            c = dataclasses.replace(cfg, filter_before_nms=before)
            ref = ref_filter(masks, scores, c, H, W, scale)
            order, keep = pp.filter_masks_t(torch.from_numpy(masks), torch.from_numpy(scores), c, H, W, scale)
            assert np.array_equal(pp.kept_in_order(order, keep).numpy(), ref)
            assert np.array_equal(pp.filter_masks(masks, scores, c, H, W, scale), ref)
            assert np.array_equal(pp.filter_masks(torch.from_numpy(masks), scores, c, H, W, scale), ref)
            seen.add((before, 0 < len(ref) < len(masks)))
    assert seen == {(False, True), (True, True), (False, False), (True, False)}  # the cases cut and keep


# --- no host reads -------------------------------------------------------------------------------


def _run_all_t(masks, scores, device=None):
    """Every torch function once; returns their outputs (tensors only)."""
    m = torch.as_tensor(masks, device=device)
    s = torch.as_tensor(scores, device=device)
    valid = torch.ones(len(s), dtype=torch.bool, device=m.device)
    out = [*pp.select_best_t(torch.stack([s, s.flip(0)], 1), 0.3), pp.box_sizes_t(m), pp.score_order_t(s),
           pp.size_filter_t(m, PostprocessConfig(), 480, 640, (4.0, 2.5)), pp.mask_nms_t(m, s, 0.3),
           pp.mask_nms_t(m, s, 0.3, valid=valid)]
    for before in (False, True):
        cfg = PostprocessConfig(filter_before_nms=before, max_box_height=50, min_area=20)
        out += [*pp.filter_masks_t(m, s, cfg, 480, 640, (4.0, 4.0)),
                *pp.filter_masks_t(m, s, cfg, 480, 640, (4.0, 4.0), valid=valid)]
    return out


def test_torch_versions_run_on_meta_tensors():
    """Meta tensors hold no values: reading one on the host (item, bool, nonzero, boolean
    indexing, cpu, numpy) raises, so finishing here proves the functions never wait for a device."""
    masks = torch.empty((17, 24, 32), dtype=torch.bool, device="meta")
    scores = torch.empty(17, device="meta")
    outs = _run_all_t(masks, scores)
    assert all(o.device.type == "meta" for o in outs)
    with pytest.raises((NotImplementedError, RuntimeError)):  # the one step that does need values
        pp.kept_in_order(*pp.filter_masks_t(masks, scores, PostprocessConfig(), 480, 640))


SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::nonzero_static", "aten::masked_select",
           "aten::is_nonzero", "aten::equal", "aten::unique_consecutive", "aten::_unique2"}


class SyncRecorder(TorchDispatchMode):
    """Records the aten ops that need a tensor's values on the host: reading a scalar, nonzero,
    and indexing with a boolean mask (a nonzero inside); ``armed`` says when they count."""

    def __init__(self):
        super().__init__()
        self.armed = True
        self.hits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        bool_index = name in ("aten::index", "aten::index_put", "aten::index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ()))
        if self.armed and (name in SYNCING or bool_index):
            self.hits.append(name)
        return func(*args, **(kwargs or {}))


def _forbid_host_reads(monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("a tensor value was read on the host")

    for attr in ("item", "__bool__", "tolist", "cpu", "numpy", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, attr, boom)


def test_torch_versions_never_read_values_on_cpu(monkeypatch):
    rng = np.random.default_rng(8)
    masks = _random_masks(rng, 20, 30, 40)
    scores = _random_scores(rng, 20)
    expected = [o.clone() for o in _run_all_t(masks, scores)]
    rec = SyncRecorder()
    with monkeypatch.context() as mp:
        _forbid_host_reads(mp)
        with rec:
            got = _run_all_t(masks, scores)
    assert rec.hits == []
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


# --- the SAM path ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipes():
    """The shipped small SAM and its HDNet (heatmap_hdnet), and the same SAM without HDNet."""
    base = {"sam": {"device": "cpu"}, "hpg": {"device": "cpu"}}
    hd = pipeline_mod.UOISPipeline(config_from_dict({**base, "pipeline": {"method": "heatmap_hdnet"},
                                                     "hdnet": {"iou_threshold": 0.2}}), part="masks")
    plain_cfg = config_from_dict({**base, "pipeline": {"method": "heatmap"}, "sam": {"device": "cpu",
                                  "model_type": "vit_synth", "checkpoint": hd.config.sam.checkpoint},
                                  "hdnet": {"sam_iou_threshold": 0.3, "stability_threshold": 0.6}})
    plain = pipeline_mod.UOISPipeline(plain_cfg, part="masks")
    from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene

    frame = generate_scene(3, SceneConfig(width=320, height=240, amodal=False)).sample().frame()
    ys, xs = np.mgrid[20:240:30, 20:320:30]  # 8 x 10 prompts: neighbours overlap, NMS has work
    prompts = Prompts(np.stack([xs.ravel(), ys.ravel()], 1), np.ones(ys.size), np.ones(ys.size))
    return hd, plain, frame, prompts


def _reference_run_sam(pipe, low, prompts, H, W):
    """The SAM path's post-processing as it ran on the host with numpy (the plain references)."""
    cfg, seg = pipe.config, pipe.segmenter
    valid = seg.valid_lowres_hw()
    logits = low.logits[..., :valid[0], :valid[1]]
    with torch.inference_mode():
        if pipe.hdnet is not None:
            scores = pipe.hdnet.adapted_iou(low.iou_pred, low.t_iou, low.t_mask)
            cand, thr = np.arange(scores.shape[1]), cfg.hdnet.iou_threshold
        else:
            scores = low.iou_pred.clone()
            cand = np.arange(1, scores.shape[1]) if cfg.sam.multimask_output else np.array([0])
            thr = cfg.hdnet.sam_iou_threshold
            stab = calculate_stability_score(logits, seg.model.mask_threshold, 1.0)
            scores = torch.where(stab >= cfg.hdnet.stability_threshold, scores, torch.full_like(scores, -np.inf))
        sc = scores.float().numpy()[:, cand]
        idx, best, keep = ref_select_best(sc, thr)
        kept = np.flatnonzero(keep)
        tok = cand[idx[kept]]
        lowmask = (logits[torch.as_tensor(kept), torch.as_tensor(tok)] > seg.model.mask_threshold).numpy()
        order = ref_filter(lowmask, best[kept], cfg.postprocess, H, W, (H / valid[0], W / valid[1]))
        kept, tok = kept[order], tok[order]
        full = seg.upsample(low.logits[torch.as_tensor(kept), torch.as_tensor(tok)]).numpy()
    ok = ref_size_filter(full, cfg.postprocess, H, W)
    full, kept, tok = full[ok], kept[ok], tok[ok]
    final = sc[kept, np.searchsorted(cand, tok)]
    sam_iou = low.iou_pred.float().numpy()[kept, tok]
    srt = np.argsort(-final, kind="stable")
    return full[srt], final[srt], sam_iou[srt], prompts.points[kept][srt], len(np.flatnonzero(keep))


@pytest.mark.parametrize("variant", ["hdnet", "hdnet_filter_first", "sam_iou"])
def test_run_sam_equals_the_numpy_path_on_host_and_device_layouts(pipes, variant, monkeypatch):
    hd, plain, frame, prompts = pipes
    pipe = plain if variant == "sam_iou" else hd
    cfg = pipe.config
    pipe.reconfigure(dataclasses.replace(cfg, postprocess=dataclasses.replace(
        cfg.postprocess, filter_before_nms=variant == "hdnet_filter_first")))
    captured = []
    decode = pipe.segmenter.decode_lowres
    monkeypatch.setattr(pipe.segmenter, "decode_lowres", lambda p: captured.append(decode(p)) or captured[-1])
    try:
        for host in (True, False):  # CPU: rejected prompts dropped first; a device keeps them masked
            monkeypatch.setattr(pipeline_mod, "is_host_device", lambda _d, host=host: host)
            out = pipe.run(frame, prompts)
            masks, scores, sam_iou, points, selected = _reference_run_sam(pipe, captured[-1], prompts,
                                                                         frame.height, frame.width)
            assert 2 <= len(out) < selected  # several instances, and the filters removed some
            assert np.array_equal(out.masks, masks)
            assert np.array_equal(out.scores, scores) and out.scores.dtype == np.float32
            assert np.array_equal(out.sam_iou, sam_iou)
            assert np.array_equal(out.prompts, points)
            assert set(out.timings) == {"prompts", "embedding", "decode", "postprocess", "total"}
    finally:
        pipe.reconfigure(cfg)


def test_run_sam_reads_the_device_once_before_the_upsample(pipes, monkeypatch):
    """With the device layout nothing from the decoder's outputs to the end reads a value on the
    host, except the kept set's size (how many masks to upsample) and the final copies, which on
    the CPU are no ops at all."""
    hd, _, frame, prompts = pipes
    rec = SyncRecorder()
    rec.armed = False
    monkeypatch.setattr(pipeline_mod, "is_host_device", lambda _d: False)
    select, kept_in_order = pipeline_mod.select_best_t, pipeline_mod.kept_in_order
    waits = []

    def start(*a, **k):
        rec.armed = True
        return select(*a, **k)

    def the_one_wait(*a, **k):
        rec.armed = False
        waits.append(1)
        try:
            return kept_in_order(*a, **k)
        finally:
            rec.armed = True

    monkeypatch.setattr(pipeline_mod, "select_best_t", start)
    monkeypatch.setattr(pipeline_mod, "kept_in_order", the_one_wait)
    with rec:
        out = hd.run(frame, prompts)
    assert len(out) >= 2 and waits == [1] and rec.hits == []
