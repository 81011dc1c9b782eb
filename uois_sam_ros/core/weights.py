"""Official checkpoints: where they come from, their sha256 sums, and checked loading.

Nothing here downloads: scripts/download_weights.sh fetches the files for users with internet,
and the code only ever loads a path the user gives (torch.load with weights_only=True).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match the architecture."""


@dataclass(frozen=True)
class OfficialWeights:
    name: str
    filename: str
    url: str
    sha256: str


OFFICIAL: dict[str, OfficialWeights] = {
    "vit_h": OfficialWeights("SAM ViT-H", "sam_vit_h_4b8939.pth",
                             "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
                             "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    "vit_l": OfficialWeights("SAM ViT-L", "sam_vit_l_0b3195.pth",
                             "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
                             "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_b": OfficialWeights("SAM ViT-B", "sam_vit_b_01ec64.pth",
                             "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
                             "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_t": OfficialWeights("MobileSAM (TinyViT)", "mobile_sam.pt",
                             "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                             "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"),
    "dinov2_vits14": OfficialWeights("DINOv2 ViT-S/14", "dinov2_vits14_pretrain.pth",
                                     "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
                                     "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9"),
}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise CheckpointError when the file's sha256 differs (a truncated or wrong download)."""
    got = sha256_file(path)
    if got != expected.lower():
        raise CheckpointError(f"{path}: sha256 {got} does not match the official {expected}")


def describe_load_error(e: BaseException) -> str:
    """One short line for a failed torch.load; torch's own text advises weights_only=False,
    which is exactly what must not be done with a file of unknown origin."""
    text = str(e).strip()
    if "Weights only load failed" in text:
        return ("it holds more than tensors and plain containers (or is not a torch file at all), "
                "and checkpoints are only loaded with weights_only=True")
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_torch_file(path: str | Path, what: str, *, error: type[Exception] = CheckpointError,
                    kind: str = "torch file") -> Any:
    """torch.load(weights_only=True) whose errors name the file and what it was meant to be."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors differ between torch versions
        raise error(f"{what} checkpoint {path} is corrupt or not a {kind}: {describe_load_error(e)}") from None


def read_checkpoint(path: str | Path, what: str, fmt: str, *,
                    error: type[Exception] = CheckpointError) -> dict[str, Any]:
    """A file written by one of our save_* functions: a dict whose 'format' header is fmt."""
    blob = load_torch_file(path, what, error=error)
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise error(f"{path} is not an {what} checkpoint (no format={fmt!r} header)")
    return blob


def read_state_dict(path: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """An official checkpoint's state dict (optionally nested under 'model' or 'state_dict')."""
    obj = load_torch_file(path, what, kind="torch state dict")
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what} checkpoint {path} does not hold a state dict of tensors")
    return obj


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def check_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor],
                     path: str | Path, what: str = "checkpoint") -> None:
    """Compare key sets and shapes; the error names missing/unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: file {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(got)) if tuple(got[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if shapes:
            parts.append(f"mismatched shapes: {_short(shapes, 5)}")
        raise CheckpointError(f"{what} checkpoint {path} does not match the architecture; " + "; ".join(parts))


def load_checked(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                 what: str = "checkpoint") -> None:
    check_state_dict(model.state_dict(), state, path, what)
    model.load_state_dict(state, strict=True)


def cpu_state_dict(module: nn.Module, half: bool = False) -> dict[str, torch.Tensor]:
    """Detached CPU copies of a module's tensors for a checkpoint; floating ones in fp16 with half."""
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        out[k] = v.half() if half and v.is_floating_point() else v.clone()
    return out


def save_torch_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to PATH.tmp, then rename over PATH: a run killed mid-write never leaves a
    truncated checkpoint or training state behind. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


class OperatingPointWarning(UserWarning):
    """A shipped model's sidecar names an operating point that cannot be read: the config's
    (or the paper's) values stay."""


def read_operating_point(checkpoint: str | Path | None, parse: Callable[[dict], T], fallback: str) -> T | None:
    """parse() of the ``operating_point`` in a checkpoint's JSON sidecar (CHECKPOINT.json): the values
    chosen for that model on held-out scenes. None when there is no sidecar or it has no such entry;
    a sidecar that cannot be read, or an entry parse() rejects (KeyError, TypeError, ValueError), gives
    one OperatingPointWarning naming the reason and what stays instead (fallback), and None."""
    import json
    import warnings

    if checkpoint is None:
        return None
    side = Path(checkpoint).with_suffix(".json")
    if not side.is_file():
        return None
    try:
        op = json.loads(side.read_text()).get("operating_point")
        return None if op is None else parse(op)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        warnings.warn(f"{side}: cannot read its operating_point ({type(e).__name__}: {e}); {fallback}",
                      OperatingPointWarning, stacklevel=3)
        return None
