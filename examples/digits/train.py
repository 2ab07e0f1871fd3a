"""Stage 2: train a softmax-regression classifier with mini-batch gradient descent.

Input is either ``--csv PATH`` (the single-stage quickstart: the CSV is split
here exactly as prepare.py would) or ``train.npz`` from ``--data DIR`` (the
pipeline: prepare's outputs). Prints the loss of each epoch as it finishes and
writes ``out/model.npz`` (``W``, ``b``) and ``out/metrics.json``.
"""

import argparse
import os

import numpy as np
from common import OUT, find_input, split, write_json

N_CLASSES = 10


def load(args):
    """Return ``(X_train, y_train, X_test, y_test)``; the test set is None without --csv."""
    if args.csv:
        table = np.loadtxt(args.csv, delimiter=",", skiprows=1, dtype=np.int64)
        return split(table[:, :-1].astype(np.uint8), table[:, -1], args.seed)
    data = np.load(find_input(args.data, "train.npz"))
    return data["X"], data["y"], None, None


def loss_and_grads(W, b, X, y):
    """Mean cross-entropy of the softmax model on (X, y) and its gradients."""
    logits = X @ W + b
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    loss = -np.log(probs[np.arange(len(y)), y]).mean()
    probs[np.arange(len(y)), y] -= 1
    return loss, X.T @ probs / len(y), probs.mean(axis=0)


def accuracy(W, b, X, y):
    return float(((X @ W + b).argmax(axis=1) == y).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="data", help="directory holding train.npz")
    parser.add_argument("--csv", help="CSV of pixels and label (replaces --data)")
    args = parser.parse_args()

    run = {k: os.environ[k] for k in ("QWEX_RUN_ID", "QWEX_KEY") if k in os.environ}
    if run:
        print(" ".join(f"{k}={v}" for k, v in run.items()), flush=True)

    X_train, y_train, X_test, y_test = load(args)
    X = X_train / 16.0
    rng = np.random.default_rng(args.seed)
    W = np.zeros((X.shape[1], N_CLASSES))
    b = np.zeros(N_CLASSES)

    losses = []
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(y_train))
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            _, grad_W, grad_b = loss_and_grads(W, b, X[batch], y_train[batch])
            W -= args.lr * grad_W
            b -= args.lr * grad_b
        loss = float(loss_and_grads(W, b, X, y_train)[0])
        losses.append(round(loss, 6))
        print(f"epoch {epoch}/{args.epochs} loss {loss:.6f}", flush=True)

    metrics = {
        "epochs": args.epochs,
        "loss": losses,
        "n_train": len(y_train),
        "train_accuracy": round(accuracy(W, b, X, y_train), 6),
    }
    if X_test is not None:
        metrics["n_test"] = len(y_test)
        metrics["test_accuracy"] = round(accuracy(W, b, X_test / 16.0, y_test), 6)

    OUT.mkdir(exist_ok=True)
    np.savez(OUT / "model.npz", W=W, b=b)
    write_json(OUT / "metrics.json", metrics)
    print(f"train accuracy {metrics['train_accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    main()
