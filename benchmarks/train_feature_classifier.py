"""Train the small MNIST classifier whose features give the cFID of this machine's reports.

Inception-V3 weights cannot be downloaded here, so no real rFID/gFID can be
computed; a classifier trained on the same digits gives a Fréchet distance
that compares runs of this library with each other (``cFID (MNIST classifier
features)``), never with published FIDs. See vqzoo/metrics/classifier.py.

    PYTHONPATH=. python3 benchmarks/train_feature_classifier.py --out benchmarks/results/mnist5k_classifier
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="mnist5k")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", default="benchmarks/results/mnist5k_classifier")
    a = p.parse_args()
    from vqzoo.data.images import ImageDataModule
    from vqzoo.metrics.classifier import train_feature_classifier

    dm = ImageDataModule(source=a.source, resolution=a.resolution, channels=1, batch_size=256)
    dm.setup("fit")
    dm.setup("test")

    def tensors(ds):  # noqa: ANN001
        items = [ds[i] for i in range(len(ds))]
        return torch.stack([it["images"] for it in items]), torch.tensor([int(it["labels"]) for it in items])

    x, y = tensors(dm.train_dataset)
    net = train_feature_classifier(x, y, width=a.width, epochs=a.epochs)
    acc = {}
    for name, ds in (("val", dm.val_dataset), ("test", dm.test_dataset)):
        xt, yt = tensors(ds)
        with torch.no_grad():
            acc[name] = float((net(xt)[1].argmax(1) == yt).float().mean())
    meta = {"label": "MNIST classifier", "source": a.source, "resolution": a.resolution, "trained_on": "train split",
            "epochs": a.epochs, "accuracy": acc}
    net.save(a.out, meta)
    print(f"wrote {a.out}: accuracy {acc}")


if __name__ == "__main__":
    main()
