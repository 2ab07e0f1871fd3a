"""Regenerate ``datasets/digits.csv`` from the copy of the digits data bundled in scikit-learn.

One row per image: the 64 pixel intensities (0-16) of the 8x8 image, then the label.
This is a repo tool, not a pipeline stage; it writes next to this script:

    python examples/digits/make_dataset.py
"""

from pathlib import Path

from sklearn.datasets import load_digits


def main():
    digits = load_digits()
    header = ",".join([f"p{i}" for i in range(64)] + ["label"])
    rows = [
        ",".join(str(int(v)) for v in pixels) + f",{label}"
        for pixels, label in zip(digits.data, digits.target, strict=True)
    ]
    path = Path(__file__).resolve().parent / "datasets" / "digits.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
