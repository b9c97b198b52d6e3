"""vanilladeploy/images.py equals the official evaluation transform (torchvision, built as the official
``build_transform(is_train=False)`` builds it) on real-looking images, to 1e-6; folders and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require
from PIL import Image

from vanilladeploy.images import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Preprocess, iter_batches, scan_folder

transforms = require("torchvision.transforms", "torchvision is the reference transform", module_level=True)


def reference(input_size: int, crop_pct: float | None, default_mean_std: bool = True):
    """The official eval transform (VanillaNet's datasets.py, from ConvNeXt), rebuilt with torchvision."""
    mean, std = (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if default_mean_std else ((0.5,) * 3, (0.5,) * 3)
    t = []
    if input_size > 32:
        if input_size >= 384:
            t.append(transforms.Resize((input_size, input_size),
                                       interpolation=transforms.InterpolationMode.BICUBIC))
        else:
            crop_pct = 224 / 256 if crop_pct is None else crop_pct
            t.append(transforms.Resize(int(input_size / crop_pct), interpolation=transforms.InterpolationMode.BICUBIC))
            t.append(transforms.CenterCrop(input_size))
    t += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(t)


def _images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    h, w = 480, 640
    gradient = np.stack(np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h)) + [np.full((h, w), 90.0)], -1)
    noise = rng.integers(0, 256, (300, 17, 3), dtype=np.uint8)
    blobs = (np.sin(np.arange(500)[:, None] / 9.0) * np.cos(np.arange(500)[None, :] / 13.0) * 127 + 128)
    return {
        "gradient 640x480 RGB": Image.fromarray(gradient.astype(np.uint8)),
        "noise 17x300 RGB": Image.fromarray(noise),
        "blobs 500x500 L": Image.fromarray(blobs.astype(np.uint8), "L"),
        "noise 224x224 RGBA": Image.fromarray(rng.integers(0, 256, (224, 224, 4), dtype=np.uint8), "RGBA"),
        "tiny 20x30 RGB": Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)),
    }


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize(("input_size", "crop_pct", "default_mean_std"),
                         [(224, None, True), (224, 0.95, False), (160, 1.0, True), (384, None, True),
                          (64, 1.15, True)])
def test_equals_the_official_transform(tmp_path: Path, fmt: str, input_size: int, crop_pct: float | None,
                                       default_mean_std: bool) -> None:
    ours = Preprocess.from_args({"input_size": input_size, "crop_pct": crop_pct,
                                 "imagenet_default_mean_and_std": default_mean_std})
    ref = reference(input_size, crop_pct, default_mean_std)
    for name, image in _images().items():
        if fmt == "JPEG" and image.mode == "RGBA":
            image = image.convert("RGB")
        path = tmp_path / f"{name.replace(' ', '_')}.{fmt.lower()}"
        image.save(path, fmt)
        with Image.open(path) as loaded:
            expected = ref(loaded.convert("RGB")).numpy()
            got = ours(loaded)
        assert got.shape == expected.shape == (3, input_size, input_size), name
        assert np.abs(got - expected).max() <= 1e-6, name


def test_values_and_where_they_came_from() -> None:
    pre = Preprocess.from_args({"input_size": 256, "crop_pct": 0.9, "imagenet_default_mean_and_std": False})
    assert (pre.img_size, pre.crop_pct, pre.mean) == (256, 0.9, (0.5, 0.5, 0.5))
    assert dict(pre.sources) == {"img_size": "checkpoint args.input_size", "crop_pct": "checkpoint args.crop_pct",
                                 "mean_std": "checkpoint args.imagenet_default_mean_and_std"}
    given = Preprocess.from_args({"input_size": 256}, img_size=96)
    assert (given.img_size, given.crop_pct, given.mean) == (96, 224 / 256, IMAGENET_DEFAULT_MEAN)
    assert dict(given.sources) == {"img_size": "--img-size", "crop_pct": "default", "mean_std": "default"}
    assert Preprocess.from_args({"crop_pct": None}).sources["crop_pct"] == "default"
    for bad in (0, -5, True, "224", 224.0):  # unusable args.input_size: the default, labelled so
        assert Preprocess.from_args({"input_size": bad}).sources["img_size"] == "default"
        assert Preprocess.from_args({"input_size": bad}).img_size == 224


def test_metadata_round_trip() -> None:
    pre = Preprocess.from_args({"input_size": 160, "crop_pct": 0.95, "imagenet_default_mean_and_std": False})
    back = Preprocess.from_metadata({"variant": "vanillanet_5", **pre.metadata()})
    assert back is not None
    assert (back.img_size, back.crop_pct, back.mean, back.std) == (pre.img_size, pre.crop_pct, pre.mean, pre.std)
    assert set(back.sources.values()) == {"onnx metadata"} and back.exported_sources == pre.sources
    assert back.as_dict()["exported_sources"]["crop_pct"] == "checkpoint args.crop_pct"
    assert Preprocess.from_metadata({"img_size": "224", "precision": "fp32"}) is None  # an older export: not recorded
    with pytest.raises(ValueError):
        Preprocess.from_metadata({**pre.metadata(), "crop_pct": "-1"})


def test_folders_labels_and_skipped_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for cls in ("b_dog", "a_cat"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "a_cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "b_dog" / "notes.txt").write_text("not an image")
    folder = scan_folder(tmp_path)
    assert folder.classes == ("a_cat", "b_dog") and folder.labels == (0, 0, 0, 1, 1)  # sorted = label index
    skipped: list = []
    batches = list(iter_batches(folder, Preprocess(img_size=48), batch=2, skipped=skipped))
    assert [len(b[0]) for b in batches] == [2, 2] and [list(b[1]) for b in batches] == [[0, 0], [1, 1]]
    assert sorted(p.name for p, _ in skipped) == ["broken.jpg", "notes.txt"]
    flat = tmp_path / "a_cat"
    assert scan_folder(flat).labels is None and len(scan_folder(flat).files) == 3


def _png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(path)


def test_classes_and_samples_equal_torchvision_image_folder(tmp_path: Path) -> None:
    datasets = require("torchvision.datasets", "torchvision's ImageFolder is the reference")
    names = [".hidden", "B_upper", "a", "a-b", "a b", "10", "9", "ünï", "_x"]  # dot-names are classes too
    for i, name in enumerate(names):
        _png(tmp_path / name / f"{i}.png", i)
        _png(tmp_path / name / "sub" / "deeper.JPG", i)  # nested, upper-case extension
        _png(tmp_path / name / "sub-dir" / "z.jpeg", i)  # '-' sorts before '/' as text
    _png(tmp_path / "a" / ".dotfile.png", 99)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    _png(tmp_path / "loose.png", 7)  # a loose file at the root of the tree
    (tmp_path / "README").write_text("loose")
    reference = datasets.ImageFolder(str(tmp_path))
    folder = scan_folder(tmp_path)
    assert dict(zip(folder.classes, range(len(folder.classes)))) == reference.class_to_idx
    assert [(str(p), label) for p, label in zip(folder.files, folder.labels)] == reference.samples
    skipped: list = []
    for _ in iter_batches(folder, Preprocess(img_size=48), batch=64, skipped=skipped):
        pass
    assert sorted(p.name for p, _ in skipped) == ["README", "loose.png", "notes.txt"]
    assert all("root of a class tree" in why for p, why in skipped if p.parent == tmp_path)


def test_a_decompression_bomb_is_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _png(tmp_path / "small.png")
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # 40 000 px > 2 × the limit: PIL refuses to decode it
    skipped: list = []
    batches = list(iter_batches(scan_folder(tmp_path), Preprocess(img_size=48), batch=4, skipped=skipped))
    assert [len(b[0]) for b in batches] == [1]
    assert [(p.name, why.split(":")[0]) for p, why in skipped] == [("bomb.png", "DecompressionBombError")]
