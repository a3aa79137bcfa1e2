"""Where ``box_scores``' time goes against one ``p log p`` pass (300k x 91 float32, 1 thread).

Not a test: prints each numpy pass of ``_block_statistics`` timed alone over the same blocks,
the ratio to the pass ``bench_scoring.py`` uses as its floor, and a cProfile by own time.
The figures explain the missed <= 1.5x target (benchmarks/README.md).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/profile_scoring.py [--detections N]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_scoring import _plogp_numpy, _predictions_table, _softmax_distributions  # noqa: E402

from al_assets.core.scoring import measures  # noqa: E402
from al_assets.core.scoring.box_scores import box_scores  # noqa: E402


def best(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def pass_costs(probs: np.ndarray) -> dict[str, float]:
    """Each pass of ``_block_statistics`` alone, over the blocks it runs on."""
    rows = max(1, measures._BLOCK_BYTES // (probs.shape[1] * probs.itemsize))
    scratch = np.empty((rows, probs.shape[1]), probs.dtype)
    blocks = [probs[lo:lo + rows] for lo in range(0, len(probs), rows)]
    passes: dict[str, Callable[[np.ndarray, np.ndarray], object]] = {
        "sum (validity)": lambda b, s: b.sum(axis=1),
        "argmax (p1's class)": lambda b, s: b.argmax(axis=1),
        "gather p1": lambda b, s: b[np.arange(len(b)), b.argmax(axis=1)],
        "copyto scratch": lambda b, s: np.copyto(s, b),
        "max (p2)": lambda b, s: s.max(axis=1),
        "log": lambda b, s: np.log(b, out=s),
        "einsum p.log p": lambda b, s: np.einsum("ij,ij->i", b, s),
        "whole block": lambda b, s: measures._block_statistics(
            b, s, np.empty((4, len(b)), b.dtype)),
    }
    return {name: best(lambda fn=fn: [fn(b, scratch[: len(b)]) for b in blocks])
            for name, fn in passes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=int, default=300_000)
    parser.add_argument("--classes", type=int, default=91)
    args = parser.parse_args()
    probs = _softmax_distributions(args.detections, args.classes, 0)
    table = _predictions_table(probs, 10, 5, 10_000)
    total = best(lambda: box_scores(table, workers=1))
    floor = best(lambda: _plogp_numpy(probs))
    print(f"{args.detections:,} x {args.classes} {probs.dtype}: box_scores(workers=1) "
          f"{total:.3f} s; one p log p pass {floor:.3f} s; ratio {total / floor:.2f}x")
    for name, seconds in pass_costs(probs).items():
        print(f"  {name:22s} {seconds:.4f} s  {seconds / total:4.0%} of box_scores")
    profile = cProfile.Profile()
    profile.enable()
    box_scores(table, workers=1)
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(8)
    print(out.getvalue().split("\n\n", 1)[-1].rstrip())


if __name__ == "__main__":
    main()
