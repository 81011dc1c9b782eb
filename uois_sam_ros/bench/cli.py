"""uois-sam-bench: the benchmarks behind one command (speed is measured here, never asserted in tests).

  uois-sam-bench stages   per-stage time of each pipeline (uois_sam_ros.bench.speed)
  uois-sam-bench graph    core time vs graph latency and throughput, split and single-node (bench.graph)
  uois-sam-bench metrics  the vectorised metric against the per-pair reference (bench.metrics_speed)
  uois-sam-bench scaling  time per frame vs image size, objects and prompts; eval throughput vs processes
                          (bench.scaling)

Each subcommand takes its own options: uois-sam-bench SUBCOMMAND --help.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "stages": "uois_sam_ros.bench.speed",
    "graph": "uois_sam_ros.bench.graph",
    "metrics": "uois_sam_ros.bench.metrics_speed",
    "scaling": "uois_sam_ros.bench.scaling",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the subcommand's own main, so `python -m uois_sam_ros.bench.X` keeps working."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"uois-sam-bench: unknown subcommand {name!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name])
    code = module.main(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
