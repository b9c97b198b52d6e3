"""Images in, the official way: ONE preprocessing used by ``eval``, INT8 calibration and serving clients.

:class:`Preprocess` is the official evaluation transform (``build_transform(is_train=False)`` of the VanillaNet
repository, inherited from ConvNeXt) as data, computed with PIL and NumPy exactly as torchvision's PIL path does:

- ``input_size > 32``: at 384 px and above, warp to ``input_size``×``input_size`` (bicubic, no crop); below, resize
  the shorter side to ``int(input_size / crop_pct)`` (bicubic; crop_pct defaults to 224/256) and center-crop
  ``input_size``. (``input_size ≤ 32``: no resize, no crop — the official code's CIFAR branch.)
- ToTensor (÷255, CHW, float32), then Normalize with ImageNet's mean/std, or Inception's (0.5) when the checkpoint's
  ``args.imagenet_default_mean_and_std`` is false.
- For a model exported with ``--input uint8`` (``input_dtype``), the transform stops before ToTensor: uint8 RGB
  pixels, CHW — the graph normalizes them itself.

Folders: an ImageFolder tree (``class/xxx.jpg``; every subdirectory is a class, names sorted = label index, files
found exactly as torchvision's ``ImageFolder`` finds them) or a flat folder (no labels). A file that is not an image
(loose files at a tree's root included), an image that cannot be decoded, or a decompression bomb is skipped and
counted, never a crash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vanilladeploy.errors import MissingDependencyError, UsageError
from vanilladeploy.extras import install_hint

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)
DEFAULT_CROP_PCT = 224 / 256
ONNX_METADATA = "onnx metadata"
"""The source label of preprocessing values read from an exported ONNX's ``metadata_props``."""
INPUT_DTYPES = ("float32", "uint8")
"""What a model takes: normalized float32, or uint8 pixels (0–255, after resize and crop) it normalizes itself."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ``IMG_EXTENSIONS``."""


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError(f"reading images needs Pillow: {install_hint('eval')}") from None
    return Image


@dataclass(frozen=True)
class Preprocess:
    """The official eval transform as data; ``sources`` says where each value came from (``img_size``,
    ``crop_pct``, ``mean_std``); ``exported_sources``, for values read from an ONNX, where the exporter got them;
    ``input_dtype`` what the model takes (:data:`INPUT_DTYPES`): uint8 pixels stop before the normalization."""

    img_size: int = 224
    crop_pct: float = DEFAULT_CROP_PCT
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    sources: Mapping[str, str] = field(default_factory=lambda: {"img_size": "default", "crop_pct": "default",
                                                                "mean_std": "default"})
    exported_sources: Mapping[str, str] | None = None
    input_dtype: str = "float32"

    @classmethod
    def from_args(cls, args: Mapping[str, Any], *, img_size: int | None = None,
                  img_size_source: str = "--img-size") -> Preprocess:
        """Values from a checkpoint's ``args`` (``input_size``, ``crop_pct``, ``imagenet_default_mean_and_std``);
        an explicit ``img_size`` (labelled ``img_size_source``: an option, a graph's input) wins over
        ``args.input_size``; what is absent or unusable is the default, labelled so."""
        sources = {}
        if img_size is not None:
            size, sources["img_size"] = img_size, img_size_source
        elif _positive_number(args.get("input_size"), integer=True):
            size, sources["img_size"] = args["input_size"], "checkpoint args.input_size"
        else:
            size, sources["img_size"] = 224, "default"
        crop = args.get("crop_pct")
        crop_ok = _positive_number(crop, integer=False)
        sources["crop_pct"] = "checkpoint args.crop_pct" if crop_ok else "default"
        flag = args.get("imagenet_default_mean_and_std")
        sources["mean_std"] = "checkpoint args.imagenet_default_mean_and_std" if isinstance(flag, bool) else "default"
        inception = flag is False
        return cls(size, float(crop) if crop_ok else DEFAULT_CROP_PCT,
                   IMAGENET_INCEPTION_MEAN if inception else IMAGENET_DEFAULT_MEAN,
                   IMAGENET_INCEPTION_STD if inception else IMAGENET_DEFAULT_STD, sources)

    def metadata(self) -> dict[str, str]:
        """The ONNX ``metadata_props`` entries that carry this preprocessing (read back by :meth:`from_metadata`)."""
        meta = {"img_size": str(self.img_size), "crop_pct": repr(self.crop_pct), "mean": json.dumps(list(self.mean)),
                "std": json.dumps(list(self.std)), "preprocessing_sources": json.dumps(dict(self.sources))}
        return meta if self.input_dtype == "float32" else {**meta, "input_dtype": self.input_dtype}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> Preprocess | None:
        """The preprocessing an ONNX was exported with (:meth:`metadata`), labelled ``"onnx metadata"``; None when
        the ONNX does not record it. Raises ValueError for entries that are there but unreadable."""
        if not {"img_size", "crop_pct", "mean", "std"} <= meta.keys():
            return None
        size, crop = int(meta["img_size"]), float(meta["crop_pct"])
        mean, std = (tuple(float(v) for v in json.loads(meta[k])) for k in ("mean", "std"))
        dtype = meta.get("input_dtype", "float32")
        if size < 1 or not crop > 0 or len(mean) != 3 or len(std) != 3 or not all(v > 0 for v in std) \
                or dtype not in INPUT_DTYPES:
            raise ValueError(f"img_size {size}, crop_pct {crop}, mean {mean}, std {std}, input_dtype {dtype}")
        recorded = json.loads(meta.get("preprocessing_sources", "{}"))
        return cls(size, crop, mean, std, dict.fromkeys(("img_size", "crop_pct", "mean_std"), ONNX_METADATA),
                   {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else None, dtype)

    def as_dict(self) -> dict[str, Any]:
        info = {"img_size": self.img_size, "crop_pct": self.crop_pct, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize_rule(), "interpolation": "bicubic", "sources": dict(self.sources)}
        if self.exported_sources is not None:
            info["exported_sources"] = dict(self.exported_sources)
        if self.input_dtype != "float32":
            info["input_dtype"] = self.input_dtype
        return info

    def resize_rule(self) -> str:
        if self.img_size <= 32:
            return "none (input_size <= 32)"
        if self.img_size >= 384:
            return f"warp to {self.img_size}x{self.img_size}"
        return f"shorter side to {int(self.img_size / self.crop_pct)}, center crop {self.img_size}"

    def __call__(self, image: Any) -> np.ndarray:
        """A PIL image (any mode) → float32 (3, img_size, img_size), normalized; uint8 pixels for a uint8 model."""
        pixels = self.pixels(image)
        return pixels if self.input_dtype == "uint8" else self.normalize(pixels)

    def pixels(self, image: Any) -> np.ndarray:
        """A PIL image (any mode) → uint8 RGB pixels (3, img_size, img_size), resized and cropped."""
        Image = _pil()
        image = image.convert("RGB")
        if self.img_size <= 32 and image.size != (self.img_size, self.img_size):
            raise UsageError(f"a {image.size[0]}×{image.size[1]} image for a {self.img_size}-pixel model: at an image "
                             "size ≤ 32 the official eval transform neither resizes nor crops (CIFAR-style), so give "
                             f"{self.img_size}×{self.img_size} images, or export with a larger --img-size.")
        if self.img_size > 32:
            if self.img_size >= 384:
                image = image.resize((self.img_size, self.img_size), Image.BICUBIC)
            else:
                image = _center_crop(_resize_shorter(image, int(self.img_size / self.crop_pct)), self.img_size)
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (…×3×H×W) → float32 x = (p/255 − mean)/std (ToTensor, then Normalize)."""
        x = np.asarray(pixels).astype(np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)

    def model_input(self, x: np.ndarray) -> np.ndarray:
        """A batch (N×3×H×W) as the model takes it: uint8 pixels (after resize and crop) go to a uint8 model as
        they are and are normalized for a float one; a float array is taken as already normalized, which a uint8
        model refuses (its pixels cannot be recovered)."""
        x = np.asarray(x)
        if x.dtype == np.uint8:
            return np.ascontiguousarray(x) if self.input_dtype == "uint8" else self.normalize(x)
        if self.input_dtype == "uint8":
            raise UsageError(f"this model takes uint8 pixels (0-255, N×3×H×W RGB, after resize and crop), not "
                             f"{x.dtype} data: give a uint8 array or the images themselves.")
        return np.ascontiguousarray(x, dtype=np.float32)


def _positive_number(value: Any, *, integer: bool) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and value > 0


def _resize_shorter(image: Any, size: int) -> Any:
    """torchvision ``Resize(size)`` on a PIL image: shorter side → ``size``, longer side scaled and truncated."""
    Image = _pil()
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return image.resize((new_w, new_h), Image.BICUBIC)


def _center_crop(image: Any, size: int) -> Any:
    """torchvision ``CenterCrop(size)``: zero padding first when the image is smaller, then the rounded center."""
    w, h = image.size
    if w < size or h < size:
        from PIL import ImageOps

        pad_l, pad_t = (size - w) // 2 if size > w else 0, (size - h) // 2 if size > h else 0
        pad_r, pad_b = (size - w + 1) // 2 if size > w else 0, (size - h + 1) // 2 if size > h else 0
        image = ImageOps.expand(image, border=(pad_l, pad_t, pad_r, pad_b), fill=0)
        w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


class NoReadableImagesError(UsageError):
    """Every image selected for a run was skipped (unreadable or not an image): nothing to infer on (exit 2)."""


@dataclass(frozen=True)
class ImageFolder:
    """Image files under ``root``: an ImageFolder tree (``labels``, ``classes``) or a flat folder (both None).
    ``ignored`` are files that are not images by extension, and in a tree the loose files at its root (counted as
    skipped)."""

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...] | None
    classes: tuple[str, ...] | None
    ignored: tuple[Path, ...] = ()

    def ignored_with_reasons(self) -> list[tuple[Path, str]]:
        """``ignored`` with why each is skipped."""
        loose = "a loose file at the root of a class tree (torchvision's ImageFolder ignores it)"
        return [(p, loose if self.classes is not None and p.parent == self.root else
                 "not an image file (by extension)") for p in self.ignored]


def is_image_file(name: str) -> bool:
    """torchvision's ``has_file_allowed_extension`` with ``IMG_EXTENSIONS`` (case-insensitive name ending)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def scan_folder(root: Path) -> ImageFolder:
    """An ImageFolder tree when ``root`` has subdirectories (classes and files exactly as torchvision's
    ``ImageFolder`` finds them), else a flat folder of its files."""
    if not root.is_dir():
        raise UsageError(f"{root}: no such directory (an image folder is needed).")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())  # torchvision's find_classes
    folder = _scan_tree(root, classes) if classes else _scan_flat(root)
    if not folder.files:
        raise UsageError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found.")
    return folder


def _scan_tree(root: Path, classes: list[str]) -> ImageFolder:
    """torchvision's ``make_dataset``: per class (sorted), ``sorted(os.walk(..., followlinks=True))``, names sorted."""
    files, labels, ignored = [], [], []
    for index, name in enumerate(classes):
        for directory, _, names in sorted(os.walk(root / name, followlinks=True)):
            for file in sorted(names):
                path = Path(directory) / file
                if is_image_file(file):
                    files.append(path)
                    labels.append(index)
                else:
                    ignored.append(path)
    loose = sorted(entry.name for entry in os.scandir(root) if not entry.is_dir())
    ignored = [root / name for name in loose] + ignored  # torchvision never reads them: skipped, counted
    return ImageFolder(root, tuple(files), tuple(labels), tuple(classes), tuple(ignored))


def _scan_flat(root: Path) -> ImageFolder:
    entries = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    return ImageFolder(root, tuple(p for p in entries if is_image_file(p.name)), None, None,
                       tuple(p for p in entries if not is_image_file(p.name)))


def load_image(path: Path, preprocess: Preprocess) -> np.ndarray:
    """Decode and preprocess one file; raises ``OSError``/``ValueError``/``SyntaxError`` for a file PIL
    cannot decode, ``PIL.Image.DecompressionBombError`` for one too large to decode safely."""
    Image = _pil()
    with Image.open(path) as image:
        image.load()
        return preprocess(image)


def iter_batches(folder: ImageFolder, preprocess: Preprocess, *, batch: int, indices: Sequence[int] | None = None,
                 skipped: list[tuple[Path, str]] | None = None
                 ) -> Iterator[tuple[np.ndarray, np.ndarray | None, list[int]]]:
    """Yield ``(images N×3×S×S, labels or None, folder indices)``; unreadable files go to ``skipped`` with the
    reason (non-image files of the folder included, once) and never interrupt the stream."""
    if skipped is not None and indices is None:
        skipped.extend(folder.ignored_with_reasons())
    order = range(len(folder.files)) if indices is None else indices
    unreadable = (OSError, ValueError, SyntaxError, _pil().DecompressionBombError)  # PIL's errors for broken files
    images: list[np.ndarray] = []
    kept: list[int] = []
    for i in order:
        try:
            images.append(load_image(folder.files[i], preprocess))
            kept.append(i)
        except unreadable as e:
            if skipped is not None:
                skipped.append((folder.files[i], f"{type(e).__name__}: {e}"))
        if len(images) == batch:
            yield _batch(folder, images, kept)
            images, kept = [], []
    if images:
        yield _batch(folder, images, kept)


def _batch(folder: ImageFolder, images: list[np.ndarray], kept: list[int]
           ) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    labels = None if folder.labels is None else np.asarray([folder.labels[i] for i in kept], dtype=np.int64)
    return np.stack(images), labels, list(kept)


__all__ = ["IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "INPUT_DTYPES", "ONNX_METADATA", "ImageFolder",
           "NoReadableImagesError", "Preprocess", "is_image_file", "iter_batches", "load_image", "scan_folder"]
