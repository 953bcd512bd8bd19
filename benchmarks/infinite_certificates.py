"""How many correctly flagged test inputs of a run are certified at radius ∞ under a threat model.

    python benchmarks/infinite_certificates.py --threat-model TM.json RUN [RUN ...]

For monotone models (``--model-set 'monotone={"increasing": [...]}'``) under a threat model that only
allows moves the score cannot fall along (e.g. ``threat_models/spambase_add_words.json``: the 54
frequencies may only increase, the capital-run features are immutable), every correctly flagged input
should be certified at ∞; a free model gets finite radii. Prints, per run: correctly flagged test
inputs of the sensitive class, how many of them are certified at ∞, and the median ℓ2 radius.
"""

from __future__ import annotations

import argparse
import sys

import torch

import asymcert
from asymcert.errors import AsymcertError
from asymcert.pipeline import run_data
from asymcert.runfolder import read_run_record, run_threat_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--threat-model", required=True)
    args = ap.parse_args()
    for run in args.runs:
        try:
            model = asymcert.load(run, device="cpu")
            data = run_data(run)
            tm = run_threat_model(read_run_record(run), override=asymcert.load_threat_model(args.threat_model))
        except (AsymcertError, OSError) as exc:
            sys.exit(f"{run}: {exc}")
        cert = asymcert.certify(model, data.test.x, norms=(2,), threat_model=tm)
        correct = (cert.predicted == data.test.y) & (data.test.y == 1)
        r = cert.radii[2.0][correct]
        print(
            f"{run}: {int(correct.sum())} correctly flagged, {int(torch.isinf(r).sum())} certified at ∞, "
            f"median ℓ2 radius {float(r.median()):.3g}"
        )


if __name__ == "__main__":
    main()
