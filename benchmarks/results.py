"""Benchmark results as files: JSON (one record per model × runtime × device × precision × batch, plus the machine;
the runtime's field is still called "backend"), CSV (the same records, flat) and a PNG plot like the paper's
Figure 1 (top-1 vs latency) beside depth vs latency. Every file is written to a temporary name and renamed into
place."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from vanilladeploy.atomic import write_atomically

SCHEMA_VERSION = 3
"""3: ``peaks`` lists every precision asked (``available`` false with a reason where none was measured), failed peak
candidates with their reason, and ``theoretical_peak`` with its clock and ``below_measured``."""
CSV_FIELDS = ("model", "family", "form", "backend", "device", "precision", "batch", "img_size", "status", "reason",
              "iterations", "median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms", "std_ms", "throughput_img_s",
              "peak_memory_mb", "gflops", "params_m", "depth", "floor_ms", "efficiency", "floor_exceeded",
              "speedup_vs_fp32", "peak_used", "calibration", "top1",
              "published_pytorch_a100_ms", "published_trt_fp32_a100_ms", "published_trt_fp16_a100_ms")


def write_json(path: Path, document: dict[str, Any]) -> Path:
    text = json.dumps({"schema_version": SCHEMA_VERSION, **document}, indent=2, allow_nan=False) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def flat_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record as one CSV row: statistics and published numbers lifted to the top level."""
    row = {k: v for k, v in record.items() if not isinstance(v, dict)}
    row.update(record.get("stats") or {})
    row.update({f"published_{k}": v for k, v in (record.get("published") or {}).items() if k != "top1"})
    row["top1"] = (record.get("published") or {}).get("top1")
    return {k: row.get(k) for k in CSV_FIELDS}


def write_csv(path: Path, records: list[dict[str, Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat_record(r) for r in records)
    return write_atomically(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))


def write_plot(path: Path, records: list[dict[str, Any]], *, title: str) -> Path:
    """Left: published top-1 vs our median latency (one series per runtime, VanillaNets joined by a line); right:
    depth vs latency. Needs matplotlib (``pip install 'vanilladeploy[bench]'``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    for backend, precision in dict.fromkeys((r["backend"], r["precision"]) for r in ok):
        for family, marker in (("vanillanet", "o"), ("resnet", "s"), ("swin", "^")):
            rows = sorted((r for r in ok if (r["backend"], r["precision"]) == (backend, precision)
                           and r["family"] == family),
                          key=lambda r: r["stats"]["median_ms"])
            if not rows:
                continue
            label = f"{family} · {backend} {precision}"
            ranked = [r for r in rows if r["published"].get("top1") is not None]
            if ranked:
                left.plot([r["stats"]["median_ms"] for r in ranked], [r["published"]["top1"] for r in ranked],
                          marker=marker, linestyle="-" if family == "vanillanet" else ":", label=label)
                for r in ranked:
                    left.annotate(r["model"].replace("vanillanet_", "V-"), (r["stats"]["median_ms"],
                                  r["published"]["top1"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            right.plot([r["depth"] for r in rows], [r["stats"]["median_ms"] for r in rows], marker=marker,
                       linestyle="none", label=label)
    left.set(xlabel="median latency (ms, ours)", ylabel="ImageNet top-1 (%, published)", title="accuracy vs latency")
    right.set(xlabel="depth (weight layers on the main path)", ylabel="median latency (ms)",
              title="depth vs latency", xscale="log")
    depths = _spread(sorted({r["depth"] for r in ok}))
    if depths:  # plain integer ticks on the log axis (not "6×10⁰")
        from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

        right.xaxis.set_major_locator(FixedLocator(depths))
        right.xaxis.set_major_formatter(ScalarFormatter())
        right.xaxis.set_minor_locator(NullLocator())
        right.xaxis.set_minor_formatter(NullFormatter())
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def _spread(values: list[int], min_ratio: float = 1.12) -> list[int]:
    """Tick positions for a log axis that do not overlap: each at least ``min_ratio`` × the previous."""
    kept: list[int] = []
    for v in values:
        if not kept or v >= kept[-1] * min_ratio:
            kept.append(v)
    return kept


__all__ = ["CSV_FIELDS", "SCHEMA_VERSION", "flat_record", "write_csv", "write_json", "write_plot"]
