"""Regenerate the README's parameter tables from the declared parameters (ros/params.py).

    .venv/bin/python scripts/readme_tables.py        # rewrite README.md in place
test/test_graph.py fails when a table is out of date.
"""

from __future__ import annotations

import re
from pathlib import Path

from uois_sam_ros.ros.params import (
    AMODAL_PARAMS,
    CAMERA_PARAMS,
    GRASP_PARAMS,
    GRASP_SECTIONS,
    HPG_PARAMS,
    SEGMENTATION_PARAMS,
    config_param_specs,
    param_table,
)

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = {"### Node `camera`": CAMERA_PARAMS, "### Node `hpg`": HPG_PARAMS,
            "### Node `segmentation`": SEGMENTATION_PARAMS, "### Core parameters": config_param_specs(),
            "### Node `grasp`": GRASP_PARAMS, "### Grasp parameters": config_param_specs(GRASP_SECTIONS),
            "### Node `amodal`": AMODAL_PARAMS, "### Amodal parameters": config_param_specs(("amodal",))}


def main() -> None:
    text = README.read_text()
    for heading, specs in SECTIONS.items():
        start = text.index(heading)
        m = re.compile(r"\| name \| type \| default \| meaning \|\n(?:\|.*\|\n?)*").search(text, start)
        if m is None:
            raise SystemExit(f"no parameter table under {heading!r}")
        text = text[:m.start()] + param_table(specs) + "\n" + text[m.end():]
    README.write_text(text)
    print(f"updated {README}")


if __name__ == "__main__":
    main()
