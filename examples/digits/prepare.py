"""Stage 1: load the bundled digits data and split it into train and test sets.

Writes ``out/train.npz`` and ``out/test.npz``, each holding ``X`` (uint8 pixels,
shape n x 64) and ``y`` (int64 labels). No network access: scikit-learn ships
the data inside its wheel.
"""

import argparse

import numpy as np
from common import OUT, split
from sklearn.datasets import load_digits


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed for the split")
    args = parser.parse_args()

    digits = load_digits()
    X, y = digits.data.astype(np.uint8), digits.target.astype(np.int64)
    X_train, y_train, X_test, y_test = split(X, y, args.seed)

    OUT.mkdir(exist_ok=True)
    np.savez(OUT / "train.npz", X=X_train, y=y_train)
    np.savez(OUT / "test.npz", X=X_test, y=y_test)
    print(f"train: {len(y_train)} images, test: {len(y_test)} images", flush=True)


if __name__ == "__main__":
    main()
