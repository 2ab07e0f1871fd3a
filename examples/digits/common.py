"""Helpers shared by the digits stages: the split, input lookup and output writing.

Every stage reads and writes paths relative to the current working directory,
which under qwex is the job's work dir (sources at their repo-relative paths,
inputs staged at the paths named in the derivation's ``[inputs]`` table).
"""

import json
from pathlib import Path

import numpy as np

OUT = Path("out")


def split(X, y, seed, test_fraction=0.2):
    """Shuffle with ``seed`` and return ``(X_train, y_train, X_test, y_test)``."""
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def find_input(directory, name):
    """Return ``directory/name`` or ``directory/out/name``, whichever exists.

    The second form is how qwex stages a ``drv:`` input: the upstream job's
    outputs appear under the destination directory at their own paths.
    """
    for candidate in (Path(directory) / name, Path(directory) / "out" / name):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"error: no {name} in {directory}/ or {directory}/out/")


def write_json(path, data):
    """Write ``data`` as JSON with sorted keys, so equal data gives equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
