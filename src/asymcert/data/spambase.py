"""UCI SpamBase (4601 emails × 57 features, 1813 spam): the ``spambase`` task.

The data come from Debian's ``r-cran-kernlab`` package, file ``kernlab/data/spam.rda`` (R's
serialization format, read with the PyPI package ``rdata``, which parses it without running any
R code). ``scripts/setup.sh`` extracts that one file from the package's .deb into the data cache
(``apt-get download`` + ``dpkg-deb -x``) instead of installing it, because installing it with apt
pulls in R itself. Searched in order: ``--data-dir``, ``$ASYMCERT_DATA/spambase`` (or
``~/.cache/asymcert/spambase``), ``/usr/lib/R/site-library/kernlab/data`` (the package installed).

Features are in raw units: 48 word and 6 character frequencies (percent of the words or characters
of the email), the average and longest run of capital letters and their total count (up to 15,841).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from asymcert.data.download import Opener, RemoteFile, find_or_download
from asymcert.data.tasks import TaskData, task_data_from_arrays
from asymcert.errors import DataError
from asymcert.threat import ThreatModel

SPAM_FILE = "spam.rda"
SPAM_SHA256 = "09281b38bc7b064f63616d9056091f924f59e38aa9fd07dd3bc1af0cba9613d3"
"""SHA-256 of ``kernlab/data/spam.rda`` as Debian's r-cran-kernlab ships it (measured here)."""
SPAM_REMOTE = RemoteFile(
    SPAM_FILE, SPAM_SHA256, ("https://raw.githubusercontent.com/cran/kernlab/master/data/spam.rda",)
)
"""The fallback download: CRAN's read-only GitHub mirror of kernlab. Whether its file is byte-identical to
Debian's was not checked (no internet here); a different file fails the checksum with a clear message."""
SYSTEM_DIRS = (Path("/usr/lib/R/site-library/kernlab/data"),)
N_FEATURES = 57
MEDIAN_FEATURE_STD = 0.444
"""The median over the 57 features of their standard deviation on all 4601 emails (measured here);
the report radii are 1–10% of it per feature (see :func:`asymcert.data.user.tabular_radii`)."""


CAPITAL_FEATURES = ("capitalAve", "capitalLong", "capitalTotal")
SPAMBASE_THREAT_MODEL = ThreatModel(
    scale={"capitalAve": 1.0, "capitalLong": 10.0, "capitalTotal": 100.0, "*": 1.0},
    lower={"capitalAve": 1.0, "capitalLong": 1.0, "capitalTotal": 1.0, "*": 0.0},
    upper={"*": 100.0, "capitalAve": 15841.0, "capitalLong": 15841.0, "capitalTotal": 1e6},
    norms=(1, 2, "inf"),
)
"""The spambase task's default threat model: what a spammer can do to one email.

* **Who moves what.** The spammer writes the email, so every feature is theirs to change: adding
  text raises the frequencies of the words and characters added and *dilutes* every other one
  (frequencies are percentages of the email's words or characters), and capital letters can be
  added or lowered. So no feature is immutable or one-sided in general; what binds is the domain.
* **Domain.** Word and character frequencies are percentages in [0, 100]. A word that is not in the
  email has frequency 0 and cannot become rarer: at 0 only increases are allowed (77% of all
  feature values are 0, so for most features of most emails the attacker can only add). The three
  capital-letter run features count letters, so they are ≥ 1 (their minimum in the data).
* **Units.** One unit is one percentage point of word or character frequency (about 2 words of a
  200-word email), one letter of average capital-run length, 10 letters of the longest capital run,
  100 capital letters in all. An ℓ1 radius r: no edit that changes the features by r units in all
  removes the flag; ℓ∞: no edit that changes each feature by less than r units.

Not modelled (sound either way, since the threat model only lists what the attacker *may* do): that
dilution couples the frequencies (adding k words scales the others by n/(n + k)).
"""


SPAMBASE_THREAT_RADII: dict[float, tuple[float, ...]] = {
    1.0: (0.5, 1.0, 2.0, 4.0),
    2.0: (0.1, 0.25, 0.5, 1.0),
    math.inf: (0.02, 0.05, 0.1, 0.2),
}
"""Report radii of the spambase task in :data:`SPAMBASE_THREAT_MODEL`'s units (ℓ1: percentage points
changed in all; ℓ∞: per feature)."""


def read_spam_rda(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The SpamBase table of an .rda file: x (N, 57) float64 raw units, y (N,) 1 = spam, the feature names.

    Raises:
        DataError: not a readable .rda file, no data frame ``spam``, not 57 numeric columns and a
            ``type`` column of spam / nonspam, or values that are not finite.
    """
    try:
        import rdata
    except ImportError as exc:
        raise DataError("the spambase task reads R data files with rdata: pip install 'asymcert[tabular]'") from exc
    try:
        with warnings.catch_warnings():  # rdata warns about guessed formats; the DataError below says it once
            warnings.simplefilter("ignore")
            frame = rdata.read_rda(str(path)).get("spam")
    except Exception as exc:  # rdata raises many types for a damaged or foreign file
        raise DataError(f"{path}: not a readable R data file ({type(exc).__name__}: {exc})") from None
    if frame is None or not hasattr(frame, "columns") or "type" not in frame.columns:
        raise DataError(f"{path}: no data frame 'spam' with a 'type' column (kernlab's spam.rda)")
    features = [str(c) for c in frame.columns if c != "type"]
    labels = np.asarray(frame["type"].astype(str))
    if len(features) != N_FEATURES or not set(labels) <= {"spam", "nonspam"}:
        raise DataError(
            f"{path}: expected 57 feature columns and type ∈ {{spam, nonspam}}, found "
            f"{len(features)} columns and types {sorted(set(labels))[:5]}"
        )
    try:
        x = frame[features].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: a feature column is not numeric ({exc})") from None
    if not np.isfinite(x).all():
        raise DataError(f"{path}: missing or infinite feature values")
    return x, (labels == "spam").astype(np.int64), features


def load_spambase(data_dir: Path | None, opener: Opener | None = None) -> TaskData:
    """SpamBase split 60/20/20 (stratified, seed 42), spam = 1 (sensitive), raw feature units.

    Searched: ``data_dir``, the cache, the installed R package; else downloaded into the cache from
    CRAN's mirror of kernlab and checked against :data:`SPAM_SHA256` (``opener`` replaces ``urlopen``
    in tests).

    Raises:
        DataError: no spam.rda anywhere and the download failed or did not match the checksum (the
            message lists the folders searched, how to get the file, and why the download failed).
    """
    hint = (
        "Get it with: apt-get download r-cran-kernlab && dpkg-deb -x r-cran-kernlab_*.deb kl && "
        "cp kl/usr/lib/R/site-library/kernlab/data/spam.rda <one of the folders above> (scripts/setup.sh does this)"
    )
    path = find_or_download("spambase", [SPAM_REMOTE], data_dir, SYSTEM_DIRS, opener=opener, hint=hint)[SPAM_FILE]
    x, y, names = read_spam_rda(path)
    data = task_data_from_arrays(x, y, ("nonspam", "spam"), test_fraction=0.2, val_fraction=0.25, seed=42)
    data.meta["feature_names"] = names
    return data
