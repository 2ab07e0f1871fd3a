"""Stage 3: score the trained model on the held-out test set.

Reads ``model.npz`` from ``--model DIR`` and ``test.npz`` from ``--data DIR``
(each either directly in DIR or in DIR/out/) and writes ``out/eval.json``.
"""

import argparse

import numpy as np
from common import OUT, find_input, write_json


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="model", help="directory holding model.npz")
    parser.add_argument("--data", default="data", help="directory holding test.npz")
    args = parser.parse_args()

    model = np.load(find_input(args.model, "model.npz"))
    test = np.load(find_input(args.data, "test.npz"))
    predictions = (test["X"] / 16.0 @ model["W"] + model["b"]).argmax(axis=1)
    correct = int((predictions == test["y"]).sum())

    result = {
        "accuracy": round(correct / len(test["y"]), 6),
        "correct": correct,
        "n_test": len(test["y"]),
    }
    write_json(OUT / "eval.json", result)
    print(f"test accuracy {result['accuracy']:.4f} ({correct}/{len(test['y'])})", flush=True)


if __name__ == "__main__":
    main()
