"""Every trainer under torchrun: 2 CPU processes (gloo) take one step like one process does.

One torchrun launch (``python -m torch.distributed.run --nproc_per_node 2`` on a free local
port) runs this file as its worker: it calls the trainers' CLIs (uois-sam-train-hpg, -hdnet,
-sam, and -amodal with --model completer, sameo and sca) with the same options as the
single-process runs made here meanwhile. The global batch is the same, each process takes half of
it, and the short last batch of an epoch leaves one process nothing (HPG, HDNet); the losses in
the CSV logs and the weights written afterwards must agree with the single process to 1e-5. The runs use a small learning rate: AdamW's first
steps move every weight by about lr * sign(gradient), and for weights whose gradient is zero
up to float noise (attention key biases; conv weights before a BatchNorm fed a 3x4 map) that
noise flips the sign, so at lr 2e-3 two exact implementations differ by ~5e-5. The gradients
themselves are compared directly too (one step of each trainer's step function, 2 processes
against the original single-process code), which also catches a wrong overall scale that
AdamW would hide. Inconsistent torchrun variables, a batch that does not split over the
processes and processes that disagree give one clear error.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from uois_sam_ros.core.amodal.completer import DEFAULT_ARCH, CompleterNet
from uois_sam_ros.core.config import SamConfig
from uois_sam_ros.core.segment.hpg import HPGNet
from uois_sam_ros.training import amodal as tam
from uois_sam_ros.training import dist as tdist
from uois_sam_ros.training import hdnet as thd
from uois_sam_ros.training import hpg as thpg
from uois_sam_ros.training import sam as tsam
from uois_sam_ros.training.common import dataset_arrays

torch.set_num_threads(1)  # a shared, busy 2-core machine
REPO = Path(__file__).resolve().parents[1]
TINY_SAM = {"img_size": 128, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
            "window_size": 4, "global_attn_indexes": [1], "decoder_dim": 32, "decoder_depth": 1,
            "decoder_heads": 2, "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32, "mask_in_chans": 4}
TOL = 1e-5  # losses (relative) and weights (absolute)
GRAD_TOL = 1e-4  # a gradient's largest difference / its largest entry (float32 over a few layers)
SIZE = (48, 64)
# the amodal completer at a small size (BatchNorm in every block)
COMPLETER_ARCH = {**DEFAULT_ARCH, "crop_size": 32, "widths": [4, 8, 8, 8]}


def hpg_args(data: Path, d: Path) -> list[str]:
    # 5 training images, batch 4: steps of 4 and 1 image (the last leaves rank 1 nothing); BatchNorm in the net
    return ["--data", str(data), "--val-split", "0.29", "--input-height", "48", "--input-width", "64",
            "--width", "4", "--epochs", "1", "--batch-size", "4", "--lr", "3e-5", "--sigma", "3",
            "--device", "cpu", "--threads", "1", "--out", str(d / "hpg.pt")]


def hdnet_args(data: Path, d: Path) -> list[str]:
    # 5 training images, 2 per step: 2, 2 and 1 (rank 1 idle in the last); 2 held out, one per process
    return ["--sam-type", "vit_tiny", "--sam-image-size", "128", "--allow-random-sam", "--data", str(data),
            "--val-split", "0.29", "--epochs", "1", "--num-prompts", "3", "--num-bg", "2", "--images-per-step",
            "2", "--lr", "3e-5", "--cache-dir", str(d / "cache"), "--device", "cpu", "--threads", "1",
            "--out", str(d / "hdnet.pt")]


def sam_args(data: Path, d: Path) -> list[str]:
    return ["--data", str(data), "--val-split", "0.29", "--arch", json.dumps(TINY_SAM), "--max-steps", "2",
            "--warmup", "1", "--val-every", "2", "--save-every", "2", "--lr", "3e-5", "--batch-size", "2",
            "--prompts", "4", "--rounds", "1", "--out", str(d / "sam.pt"), "--work-dir", str(d / "sam_work"),
            "--device", "cpu", "--threads", "1", "--quiet"]


def completer_args(data: Path, d: Path) -> list[str]:
    # all 7 scenes: 22 training crops (4 of them TAOS), batch 8: 2 steps of 4 crops per process, then validation
    # on the 7 crops (2 occluded) of 3 scenes; rank 0 writes both crop caches, rank 1 reads them
    return ["--model", "completer", "--data", str(data), "--val-data", str(data), "--val-limit", "3", "--epochs",
            "1", "--batch-size", "8",
            "--taos-per-scene", "1", "--arch", json.dumps(COMPLETER_ARCH), "--lr", "3e-5", "--out",
            str(d / "completer.pt"), "--work-dir", str(d / "amodal_work"), "--device", "cpu", "--threads", "1",
            "--quiet"]


def sam_amodal_args(kind: str, data: Path, d: Path) -> list[str]:
    # SAMEO's decoder / Amodal SAM's adapters on the tiny vit_synth: 2 steps of 2 scenes (one per process),
    # then validation on 3 scenes (2 and 1 per process) that hold occluded instances
    return ["--model", kind, "--data", str(data), "--val-data", str(data), "--val-limit", "3", "--sam-checkpoint",
            str(data.parent / "sam.pt"),
            "--steps", "2", "--val-every", "2", "--images-per-step", "2", "--max-instances", "2", "--lr", "3e-5",
            "--out", str(d / f"{kind}.pt"), "--work-dir", str(d / "amodal_work"), "--device", "cpu", "--threads",
            "1", "--quiet"]


def amodal_runs(data: Path, d: Path) -> None:
    assert tam.main(completer_args(data, d)) == 0
    assert tam.main(sam_amodal_args("sameo", data, d)) == 0
    assert tam.main(sam_amodal_args("sca", data, d)) == 0


# ------------------------------------------------- gradients of one step: 2 processes vs the original code
def hpg_grads(data_dir: Path, ctx: tdist.DistContext | None = None) -> dict[str, torch.Tensor]:
    """Gradients of a 5-image and then a 1-image step (SGD with lr 0: the weights stay), and the
    BatchNorm statistics after both."""
    data = dataset_arrays(data_dir, SIZE)
    torch.manual_seed(0)
    model = HPGNet("cnn_rgbd", width=4, input_size=SIZE)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    step = ctx.wrap(model, thpg._shard_loss) if ctx else None
    out = {}
    for tag, idx in (("a", np.arange(5)), ("b", np.array([5]))):
        if ctx:
            thpg.shard_train_step(model, step, opt, data, idx, 3.0, torch.device("cpu"), ctx)
        else:
            thpg.train_step(model, opt, thpg.make_batch(data, idx, 3.0, torch.device("cpu")))
        out.update({f"{tag}.{n}": p.grad.clone() for n, p in model.named_parameters()})
    out.update({f"buffer.{n}": b.clone() for n, b in model.named_buffers()})
    return out


def hdnet_grads(data_dir: Path, ctx: tdist.DistContext | None = None) -> dict[str, torch.Tensor]:
    from uois_sam_ros.core.data.datasets import open_dataset
    from uois_sam_ros.core.segment.sam_backend import SamSegmenter

    ds = open_dataset("uoais-sim", data_dir, data_dir / "annotations.json")
    images = [ds[i] for i in range(3)]
    torch.manual_seed(0)
    seg = SamSegmenter(SamConfig(model_type="vit_tiny", allow_random_weights=True, image_size=128, device="cpu"))
    torch.manual_seed(1)
    model = thd.HDNet.for_sam(seg.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    cache, rng = thd.FeatureCache(None, "mem"), np.random.default_rng(0)
    if ctx:
        thd.shard_train_step(model, ctx.wrap(model, thd._shard_loss), opt, seg, cache, images, 3, 2, rng, ctx)
    else:
        bs = [thd.hdnet_batch(seg, cache, im, 3, 2, rng) for im in images]
        thd.train_step(model, opt, {k: torch.cat([b[k] for b in bs]) for k in bs[0]})
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def sam_grads(data_dir: Path, ctx: tdist.DistContext | None = None) -> dict[str, torch.Tensor]:
    """A 4-image step with augmentation, boxes and a corrective round; parameters no prompt used
    keep no gradient (the set of keys is compared too)."""
    from uois_sam_ros.core.segment.sam_backend import build_vit_synth

    src = tsam.dataset_source(data_dir)
    torch.manual_seed(0)
    model = build_vit_synth(TINY_SAM).train()
    s = tsam.Settings(prompts=4, rounds=1, clip=0.0, box_prob=0.3)
    rng = np.random.default_rng([0, 0])
    batch = [tsam.prepare_image(*src[i], 128, rng) for i in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    cpu = torch.device("cpu")
    if ctx:
        tsam.shard_train_step(model, ctx.wrap(model, tsam._shard_loss, find_unused=True), opt, batch, rng, s, cpu,
                              ctx)
    else:  # the loop body of train_sam
        emb = tsam.encode(model, [b[0] for b in batch], cpu)
        losses = [tsam.image_loss(model, emb[j:j + 1], lab, rng, s, cpu)[0] for j, (_, lab) in enumerate(batch)]
        torch.stack([x for x in losses if x is not None]).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def completer_grads(data_dir: Path, ctx: tdist.DistContext | None = None) -> dict[str, torch.Tensor]:
    """Gradients of a 5-crop step (3 and 2 per process) and a 1-crop step (rank 1 has nothing),
    flips drawn, and the BatchNorm statistics after both."""
    a = tam.build_parser().parse_args(["--model", "completer", "--data", str(data_dir), "--val-split", "0.29",
                                       "--out", "unused"])
    train = tam.build_completer_set(iter(tam._scenes(a)[0]), COMPLETER_ARCH, 1, 0, progress=False)
    torch.manual_seed(0)
    model = CompleterNet(COMPLETER_ARCH["widths"])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    s = tam.CompleterSettings()
    step = ctx.wrap(model, tam._completer_shard_loss) if ctx else None
    rng, cpu = np.random.default_rng(0), torch.device("cpu")
    out = {}
    for tag, idx in (("a", np.array([0, 3, 7, 12, 16])), ("b", np.array([5]))):
        flip = rng.random(len(idx)) < 0.5
        if ctx:
            loss = tam.shard_completer_step(model, step, opt, train, idx, flip, s, cpu, ctx)
        else:  # the loop body of train_completer
            x, y = tam.completer_batch(train, idx, flip, cpu)
            model.train()
            opt.zero_grad(set_to_none=True)
            total = tam.completer_loss(model(x), y, s.dice_weight, tam.pixel_weights(x))
            total.backward()
            loss = float(total.detach())
        out[f"{tag}.loss"] = torch.tensor(loss)
        out.update({f"{tag}.{n}": p.grad.clone() for n, p in model.named_parameters()})
    out.update({f"buffer.{n}": b.clone() for n, b in model.named_buffers()})
    return out


def _sam_amodal_grads(kind: str, data_dir: Path, ctx: tdist.DistContext | None) -> dict[str, torch.Tensor]:
    """Gradients of a 3-scene step (2 and 1 per process, TAOS copies included) and a 1-scene step
    (rank 1 has nothing), each scene's items, boxes and instances drawn from one rng."""
    from uois_sam_ros.core.amodal.sameo import decoder_optimizer, sameo_step
    from uois_sam_ros.core.amodal.sca import SpatialCompletion, adapter_optimizer, sca_step
    from uois_sam_ros.core.segment.sam_backend import build_vit_synth

    a = tam.build_parser().parse_args(["--model", kind, "--data", str(data_dir), "--val-split", "0.29",
                                       "--out", "unused"])
    scenes = tam._scenes(a)[0]
    torch.manual_seed(0)
    model = build_vit_synth(TINY_SAM).eval()
    s = tam.SamSettings(max_instances=2, taos_prob=0.7)
    sca = None
    if kind == "sameo":
        opt = decoder_optimizer(model, 0.0)
        trained = model.mask_decoder
        step = ctx.wrap(model, tam._sameo_shard_loss) if ctx else None
    else:
        sca = SpatialCompletion.for_encoder(model.image_encoder, hidden=8, iterations=1)
        for ad in sca.adapters.values():  # an untrained adapter's zero gate leaves its other weights no gradient
            torch.nn.init.normal_(ad.gate_out, std=0.5)
        sca.attach(model.image_encoder)
        opt = adapter_optimizer(model, sca, 0.0)
        trained = sca
        step = ctx.wrap(torch.nn.ModuleDict({"sam": model, "sca": sca}), tam._sca_shard_loss) if ctx else None
    rng = np.random.default_rng(1)
    out = {}
    for tag, pick in (("a", [0, 2, 4]), ("b", [3])):
        batch = [scenes[i] for i in pick]
        if ctx:
            r = tam.shard_sam_step(kind, model, sca, step, opt, batch, rng, s, ctx)
        elif sca is None:  # the loop body of train_sam_amodal
            r = sameo_step(model, opt, tam.sam_items(model, batch, rng, s), rng, s.modal_prob)
        else:
            r = sca_step(model, sca, opt, tam.sam_items(model, batch, rng, s), rng, s.box_expand, s.reg_weight,
                         s.max_instances)
        out[f"{tag}.loss"] = torch.tensor(r["loss"])
        out.update({f"{tag}.{n}": p.grad.clone() for n, p in trained.named_parameters()})
    if sca is not None:
        sca.detach()
    return out


def sameo_grads(data_dir: Path, ctx: tdist.DistContext | None = None) -> dict[str, torch.Tensor]:
    return _sam_amodal_grads("sameo", data_dir, ctx)


def sca_grads(data_dir: Path, ctx: tdist.DistContext | None = None) -> dict[str, torch.Tensor]:
    return _sam_amodal_grads("sca", data_dir, ctx)


GRADS = {"hpg": hpg_grads, "hdnet": hdnet_grads, "sam": sam_grads, "completer": completer_grads,
         "sameo": sameo_grads, "sca": sca_grads}


def _worker(root: Path) -> None:
    """One torchrun process: join the group, then run each trainer's CLI as a single process would."""
    torch.set_num_threads(1)
    ctx = tdist.init_distributed("cpu")
    assert ctx.enabled and ctx.world_size == 2 and ctx.owns_group
    ok = False
    try:
        with pytest.raises(tdist.DistError, match=r"disagree on the seed: rank 0 has 0, rank 1 has 1"):
            ctx.check_same("the seed", ctx.rank)  # every process raises, none is left waiting
        with pytest.raises((RuntimeError, tdist.DistError), match="^(rank 0: )?no cache here$"):
            with ctx.rank0_first():  # rank 0 fails first: the others raise its error, nobody waits
                if ctx.is_main:
                    raise RuntimeError("no cache here")
        data, d = root / "data", root / "ddp"
        rc = thpg.main([*hpg_args(data, d), "--batch-size", "3", "--out", str(d / "odd.pt")])
        assert rc == 2 and not (d / "odd.pt").exists()
        assert thpg.main([*hpg_args(root / "missing", d), "--out", str(d / "none.pt")]) == 2
        assert thpg.main(hpg_args(data, d)) == 0
        assert thd.main(hdnet_args(data, d)) == 0
        assert tsam.main(sam_args(data, d)) == 0
        assert tam.main([*sam_amodal_args("sameo", data, d), "--images-per-step", "3"]) == 2
        amodal_runs(data, d)
        for name, fn in GRADS.items():
            g = fn(data, ctx)
            if ctx.is_main:
                torch.save(g, d / f"grads_{name}.pt")
        ok = True
    finally:
        ctx.close(ok)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-process torchrun run (in the background) and the single-process runs (meanwhile, here),
    on one small UOAIS-style folder (7 scenes at 128x96, written once)."""
    from uois_sam_ros.core.data.synthetic import SceneConfig, write_uoais_dataset
    from uois_sam_ros.core.segment.sam_backend import build_vit_synth, save_sam_synth

    root = tmp_path_factory.mktemp("ddp")
    data = root / "data"
    write_uoais_dataset(data, 7, seed=3, cfg=SceneConfig(width=128, height=96, max_objects=4))  # amodal masks too
    torch.manual_seed(0)
    save_sam_synth(root / "sam.pt", build_vit_synth(TINY_SAM), TINY_SAM)  # for the amodal trainer's SAMEO / SCA
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "--monitor_interval", "0.1", __file__, str(root)]
    log = root / "torchrun.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        one = root / "one"
        assert thpg.main(hpg_args(data, one)) == 0
        assert thd.main(hdnet_args(data, one)) == 0
        assert tsam.main(sam_args(data, one)) == 0
        amodal_runs(data, one)
        grads = {name: fn(data) for name, fn in GRADS.items()}
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:  # torchrun and its workers: the session this test started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 0, log.read_text()[-6000:]
    return one, root / "ddp", log.read_text(), grads


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over the float tensors; integer tensors must be equal."""
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            worst = max(worst, float((a[k] - b[k]).abs().max()))
        else:
            assert torch.equal(a[k], b[k]), k  # e.g. BatchNorm's num_batches_tracked
    return worst


def _same_grads(one: dict[str, torch.Tensor], ddp: dict[str, torch.Tensor]) -> float:
    """Largest difference of a gradient relative to that tensor's largest entry."""
    assert one.keys() == ddp.keys()
    return max(float((one[k] - ddp[k]).abs().max() / one[k].abs().max().clamp(min=1e-6)) for k in one)


def _same_losses(one: list[dict], ddp: list[dict], keys: tuple[str, ...]) -> None:
    assert len(one) == len(ddp)
    for r1, r2 in zip(one, ddp):
        for k in keys:
            assert float(r2[k]) == pytest.approx(float(r1[k]), rel=TOL, abs=TOL), (k, r1[k], r2[k])


def test_hpg_two_processes_equal_one(runs):
    one, ddp, _, grads = runs
    _same_losses(_rows(one / "hpg.csv"), _rows(ddp / "hpg.csv"), ("train_loss", "train_ce", "train_mse", "val_loss"))
    s1 = torch.load(one / "hpg.last.pt", weights_only=True)["model"]
    s2 = torch.load(ddp / "hpg.last.pt", weights_only=True)["model"]
    assert _same_weights(s1, s2) < TOL  # BatchNorm running statistics included
    m1 = torch.load(one / "hpg.pt", weights_only=True)["meta"]
    m2 = torch.load(ddp / "hpg.pt", weights_only=True)["meta"]
    assert m2["world_size"] == 2 and "world_size" not in m1
    assert m2["val_loss"] == pytest.approx(m1["val_loss"], rel=TOL)
    g = torch.load(ddp / "grads_hpg.pt", weights_only=True)
    assert _same_grads(grads["hpg"], g) < GRAD_TOL  # the global batch's BatchNorm and class weights, to scale
    assert not (ddp / "odd.pt").exists()


def test_hdnet_two_processes_equal_one(runs):
    one, ddp, _, grads = runs
    r1, r2 = _rows(one / "hdnet.csv"), _rows(ddp / "hdnet.csv")
    _same_losses(r1, r2, ("train_loss", "val_loss", "val_sam_only", "val_objects_mse", "val_objects_mse_sam"))
    # each image's SAM embedding is computed once, by the process that decodes it
    assert (r1[0]["cache_misses"], r2[0]["cache_misses"]) == ("7", "7")
    a = torch.load(one / "hdnet.pt", weights_only=True)["state_dict"]
    b = torch.load(ddp / "hdnet.pt", weights_only=True)["state_dict"]
    assert _same_weights(a, b) < TOL
    assert _same_grads(grads["hdnet"], torch.load(ddp / "grads_hdnet.pt", weights_only=True)) < GRAD_TOL


def test_sam_two_processes_equal_one(runs):
    one, ddp, _, grads = runs
    r1, r2 = _rows(one / "sam_work" / "train_log.csv"), _rows(ddp / "sam_work" / "train_log.csv")
    assert [r["step"] for r in r2] == ["0", "2"]
    _same_losses(r1, r2, ("val_loss", "val_miou"))
    _same_losses(r1[1:], r2[1:], ("train_loss", "train_focal", "train_dice", "train_iou_mse"))
    s1 = torch.load(one / "sam_work" / "last.pt", weights_only=True)
    s2 = torch.load(ddp / "sam_work" / "last.pt", weights_only=True)
    assert s2["step"] == 2
    assert _same_weights(s1["model"], s2["model"]) < TOL
    assert json.loads((ddp / "sam.json").read_text())["training"]["world_size"] == 2
    g1, g2 = grads["sam"], torch.load(ddp / "grads_sam.pt", weights_only=True)
    assert _same_grads(g1, g2) < GRAD_TOL  # the same parameters got a gradient (mask_downscaling: round 2's)


def test_amodal_completer_two_processes_equal_one(runs):
    one, ddp, _, grads = runs
    r1, r2 = _rows(one / "amodal_work" / "completer_log.csv"), _rows(ddp / "amodal_work" / "completer_log.csv")
    assert [r["step"] for r in r2] == ["2"]
    _same_losses(r1, r2, ("train_loss", "val_loss", "val_hidden_iou"))
    s1 = torch.load(one / "amodal_work" / "completer_last.pt", weights_only=True)
    s2 = torch.load(ddp / "amodal_work" / "completer_last.pt", weights_only=True)
    assert s2["step"] == 2
    assert _same_weights(s1["model"], s2["model"]) < TOL  # BatchNorm running statistics included
    doc = json.loads((ddp / "completer.json").read_text())["training"]
    assert doc["world_size"] == 2 and doc["train_crops"] == 22 and doc["steps_run"] == 2
    g1, g2 = grads["completer"], torch.load(ddp / "grads_completer.pt", weights_only=True)
    assert float(g2["a.loss"]) == pytest.approx(float(g1["a.loss"]), rel=TOL)  # step 1's loss
    assert _same_grads(g1, g2) < GRAD_TOL  # the global batch's BatchNorm and loss normalisers


@pytest.mark.parametrize("kind", ["sameo", "sca"])
def test_amodal_sam_two_processes_equal_one(runs, kind):
    one, ddp, _, grads = runs
    r1, r2 = _rows(one / "amodal_work" / f"{kind}_log.csv"), _rows(ddp / "amodal_work" / f"{kind}_log.csv")
    assert [r["step"] for r in r2] == ["2"]
    _same_losses(r1, r2, ("train_loss", "val_miou_full", "val_miou_occ"))
    s1 = torch.load(one / "amodal_work" / f"{kind}_last.pt", weights_only=True)
    s2 = torch.load(ddp / "amodal_work" / f"{kind}_last.pt", weights_only=True)
    assert s2["step"] == 2
    assert _same_weights(s1["model"], s2["model"]) < TOL  # the decoder / the adapters
    assert json.loads((ddp / f"{kind}.json").read_text())["training"]["world_size"] == 2
    g1, g2 = grads[kind], torch.load(ddp / f"grads_{kind}.pt", weights_only=True)
    for tag in ("a", "b"):  # each step's loss
        assert float(g2[f"{tag}.loss"]) == pytest.approx(float(g1[f"{tag}.loss"]), rel=TOL)
    assert _same_grads(g1, g2) < GRAD_TOL


def test_rank0_alone_prints_and_writes(runs):
    _, ddp, log, _ = runs
    # the batch that does not split: one line, from rank 0 only
    assert log.count("--batch-size 3 does not split over 2 processes") == 1
    assert log.count("dataset folder not found") == 1  # rank 0's reading failed; rank 1 stopped without a word
    assert log.count("training on 5 images, validating on 2") == 1
    assert log.count("--images-per-step 3 does not split over 2 processes") == 1  # the amodal trainer's
    assert log.count("completer: 22 training crops") == 1 and log.count(", notes ") == 3
    assert log.count("best validation loss") == 2 and log.count("best validation MSE") == 1  # HPG, SAM; HDNet
    assert not list(ddp.glob("**/*.tmp"))


@pytest.mark.parametrize("env, message", [
    ({"RANK": "0"}, "WORLD_SIZE, LOCAL_RANK not set while RANK=0 is"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, r"RANK=2 is outside 0\.\.1 \(WORLD_SIZE=2\)"),
    ({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0"}, "WORLD_SIZE='two' is not an integer"),
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"},
     r"LOCAL_RANK=2 is outside 0\.\.1 \(LOCAL_WORLD_SIZE=2\)"),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "MASTER_ADDR and MASTER_PORT not set"),
])
def test_inconsistent_torchrun_variables_are_named(env, message):
    with pytest.raises(tdist.DistError, match=message):
        tdist.read_launch(env)


def test_plain_run_and_world_of_one_need_no_group():
    assert tdist.read_launch({}) is None
    ctx = tdist.init_distributed("cpu", env={"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert not ctx.enabled and ctx.is_main and ctx.device == torch.device("cpu")
    assert ctx.sum([1.5, 2]) == [1.5, 2] and ctx.any(True) and not ctx.any(False)
    with pytest.raises(tdist.TrainingError, match="boom"):
        ctx.raise_any("boom")


@pytest.mark.parametrize("main", [thpg.main, thd.main, tsam.main, tam.main])
def test_each_cli_reports_inconsistent_variables(main, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    args = {thpg.main: hpg_args, thd.main: hdnet_args, tsam.main: sam_args,
            tam.main: completer_args}[main](tmp_path / "data", tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: torchrun variables are inconsistent: LOCAL_RANK not set" in err[0]
    assert not list(tmp_path.iterdir())


def test_shares_of_a_global_batch():
    shares = [tdist.DistContext(r, 3).shard(8) for r in range(3)]
    assert [(s.start, s.stop) for s in shares] == [(0, 3), (3, 6), (6, 8)]
    assert [len(range(1)[tdist.DistContext(r, 2).shard(1)]) for r in range(2)] == [1, 0]
    assert list(tdist.DistContext(1, 3).strided(8)) == [1, 4, 7]


def test_a_batch_that_does_not_split_is_refused_before_any_work(tmp_path):
    two = tdist.DistContext(0, 2)  # no process group: the checks come before any collective
    with pytest.raises(tdist.DistError, match=r"--batch-size 3 does not split over 2 processes"):
        thpg.train_hpg(thpg.ArraySet(*(torch.zeros(1).numpy(),) * 3, ["x"]), thpg.ArraySet(
            *(torch.zeros(1).numpy(),) * 3, ["y"]), tmp_path / "h.pt", batch_size=3, dist=two)
    with pytest.raises(tdist.DistError, match=r"--images-per-step 3 does not split over 2 processes"):
        thd.train_hdnet(None, ["a"], ["b"], tmp_path / "d.pt", images_per_step=3, dist=two)
    with pytest.raises(tdist.DistError, match=r"--batch-size 3 does not split over 2 processes"):
        tsam.train_sam(tsam.ImageSource("a", 1, None), tsam.ImageSource("b", 1, None), tmp_path / "s.pt",
                       tmp_path / "w", settings=tsam.Settings(batch_size=3), dist=two)
    with pytest.raises(tdist.DistError, match=r"--batch-size 3 does not split over 2 processes"):
        tam.train_completer({}, {}, tmp_path / "c.pt", tmp_path / "w", COMPLETER_ARCH,
                            tam.CompleterSettings(batch_size=3), dist=two)
    with pytest.raises(tdist.DistError, match=r"--images-per-step 3 does not split over 2 processes"):
        tam.train_sam_amodal("sameo", None, [], [], tmp_path / "a.pt", tmp_path / "w",
                             tam.SamSettings(images_per_step=3), dist=two)
    assert not list(tmp_path.iterdir())


if __name__ == "__main__":  # a torchrun worker (see the runs fixture)
    _worker(Path(sys.argv[1]))
