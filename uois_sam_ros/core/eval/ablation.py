"""Table IV in one pass: several methods on the same frames, with per-stage times and the HDNet
ranking check, so every figure of the comparison comes from one run on one set of scenes.

The ranking check answers "does HDNet pick better masks than SAM's own IoU head?" directly:
for every prompt of an HDNet method that lands on a GT instance, the candidate HDNet ranks
first (of SAM's 4 tokens) and the one SAM's IoU head ranks first (of the 3 multimask tokens, as
SamAutomaticMaskGenerator does) are both scored against that instance; a win is a strictly
higher GT IoU for HDNet's pick.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from uois_sam_ros.core.eval.metrics import MetricAccumulator, resize_nearest
from uois_sam_ros.core.segment.hdnet import ranked_first

STAGES = ("prompts", "embedding", "decode", "postprocess", "total")


@dataclass
class RankingStats:
    """Per-prompt comparison of HDNet's pick against SAM's IoU-head pick (GT IoU of each)."""

    wins: int = 0
    ties: int = 0
    losses: int = 0
    iou_hdnet: list[float] = field(default_factory=list)
    iou_sam: list[float] = field(default_factory=list)

    @property
    def prompts(self) -> int:
        return self.wins + self.ties + self.losses

    def as_dict(self) -> dict[str, float]:
        n = max(self.prompts, 1)
        return {"prompts": self.prompts, "wins": self.wins, "ties": self.ties, "losses": self.losses,
                "win_rate": self.wins / n, "loss_rate": self.losses / n,
                "mean_iou_hdnet_pick": float(np.mean(self.iou_hdnet)) if self.iou_hdnet else float("nan"),
                "mean_iou_sam_pick": float(np.mean(self.iou_sam)) if self.iou_sam else float("nan")}

    def line(self) -> str:
        d = self.as_dict()
        return (f"HDNet vs SAM IoU head on {d['prompts']} prompts: HDNet's mask has the higher GT IoU in "
                f"{100 * d['win_rate']:.1f} %, the lower in {100 * d['loss_rate']:.1f} %, tie "
                f"{100 * d['ties'] / max(d['prompts'], 1):.1f} %; mean GT IoU of the pick "
                f"{d['mean_iou_hdnet_pick']:.3f} (HDNet) vs {d['mean_iou_sam_pick']:.3f} (SAM head)")


def rank_last_frame(pipeline, label: np.ndarray, stats: RankingStats, multimask: bool = True) -> None:
    """Add the last run()'s prompts to stats. Needs a SAM pipeline with HDNet whose segmenter
    still holds the frame (right after run); reuses its embedding, decodes the prompts again."""
    seg, hd, prompts = pipeline.segmenter, pipeline.hdnet, pipeline.last_prompts
    if hd is None or len(prompts) == 0:
        return
    h, w = seg.predictor.original_size
    gt = resize_nearest(np.asarray(label), h, w)
    low = seg.decode_lowres(prompts)
    with torch.inference_mode():
        adapted = hd.adapted_iou(low.iou_pred, low.t_iou, low.t_mask)
    picks_h, picks_s = (t.cpu().numpy() for t in ranked_first(adapted, low.iou_pred, multimask))
    for k, (x, y) in enumerate(prompts.points):
        if prompts.labels[k] != 1:
            continue
        r, c = min(max(int(round(y)), 0), h - 1), min(max(int(round(x)), 0), w - 1)
        inst = gt[r, c]
        if inst == 0:
            continue
        target = gt == inst
        t_h, t_s = int(picks_h[k]), int(picks_s[k])
        masks = seg.upsample(low.logits[k, [t_h, t_s]]).cpu().numpy()
        ious = [float((m & target).sum() / max((m | target).sum(), 1)) for m in masks]
        stats.iou_hdnet.append(ious[0])
        stats.iou_sam.append(ious[1])
        if ious[0] > ious[1] + 1e-9:
            stats.wins += 1
        elif ious[1] > ious[0] + 1e-9:
            stats.losses += 1
        else:
            stats.ties += 1


@dataclass
class MethodResult:
    """One method's scores and stage times over the frames of a comparison."""

    method: str
    acc: MetricAccumulator = field(default_factory=MetricAccumulator)
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ranking: RankingStats | None = None

    def add_timings(self, timings: dict[str, float]) -> None:
        for k in STAGES:
            self.times[k].append(float(timings.get(k, 0.0)))

    def mean_ms(self) -> dict[str, float]:
        return {k: 1000.0 * float(np.mean(v)) if v else float("nan") for k, v in
                ((k, self.times.get(k, [])) for k in STAGES)}


def format_comparison(results: list[MethodResult], title: str = "") -> str:
    """One row per method: the paper's Overlap P R F | Boundary P R F | %75, then ms per stage."""
    head = (f"{'Method':<16}|  OP    OR    OF  |  BP    BR    BF  |  %75  | "
            + " ".join(f"{s[:8]:>8}" for s in STAGES) + "  (ms/frame)")
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in results:
        m, t = r.acc.means(), r.mean_ms()
        lines.append(f"{r.method:<16}| {m['OP']:5.1f} {m['OR']:5.1f} {m['OF']:5.1f} | {m['BP']:5.1f} {m['BR']:5.1f} "
                     f"{m['BF']:5.1f} | {m['P75']:5.1f} | " + " ".join(f"{t[s]:8.0f}" for s in STAGES))
    n = len(results[0].acc) if results else 0
    lines.append(f"({n} images, every method on the same frames in one run)")
    for r in results:
        if r.ranking is not None:
            lines.append(f"{r.method}: {r.ranking.line()}")
    return "\n".join(lines)
