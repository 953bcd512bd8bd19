"""Where one ``asymcert.certify`` call of a run's model spends its time: cProfile's cumulative and own times of the
functions it calls, per call (ms), on the run's first test inputs.

    python benchmarks/profile_certify.py --run R [--n 4000] [--threads 1] [--calls 5] [--top 30]

R: a run folder (e.g. ``make demo``'s). The inputs are the run's test inputs, repeated up to ``--n`` rows. Two
warm-up calls, then ``--calls`` profiled ones; prints to stdout only (a profile is for reading, not for keeping).
Run it against another version of the code with ``PYTHONPATH=OLD/src``.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats

import torch

import asymcert
from asymcert.pipeline import run_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = asymcert.load(args.run)
    test = run_data(args.run).test.x
    x = test.repeat(math.ceil(args.n / len(test)), *([1] * (test.dim() - 1)))[: args.n].contiguous()
    for _ in range(2):
        asymcert.certify(model, x)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.calls):
        asymcert.certify(model, x)
    profile.disable()
    stats = pstats.Stats(profile)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])[: args.top]  # (by cumulative time)
    print(f"{args.n} inputs, {args.threads} thread(s), ms per call: cumulative / own, function")
    for (file, line, name), (_, _, own, cumulative, _) in rows:
        where = f"{file.rsplit('/', 1)[-1]}:{line}" if line else file
        print(f"{1000 * cumulative / args.calls:9.1f} {1000 * own / args.calls:9.1f}  {name} ({where})")


if __name__ == "__main__":
    main()
