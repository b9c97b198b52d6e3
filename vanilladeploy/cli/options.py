"""Options that more than one command takes, declared once. Their checks live in the library
(:mod:`vanilladeploy.validate`, the commands' own option checks), so the Python API refuses the same things."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vanilladeploy.runtimes import ONNX_RUNTIMES
from vanilladeploy.triton.config import RepoOptions

EXIT_CODES_HELP = (
    "Exit codes: 0 ok · 1 verification failed (an artifact does not match the reference, or `check` found "
    "problems) · 2 bad input or usage (unreadable, unsafe or inexact checkpoint, bad option) · "
    "3 optional dependency or GPU missing (export --trt: the ONNX was still written and verified, no engine) · "
    "4 internal error (a bug) · 130 interrupted."
)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and more detail on errors.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Variant name; overrides detection (required to "
                                                "tell vanillanet_13_x1_5_ada_pool from vanillanet_13_x1_5 when the "
                                                "file records no args.model).")]
KeyOpt = Annotated[Optional[str], typer.Option("--key", help="Container entry holding the weights (default: "
                                               "model_ema, else model, else state_dict, else the file itself).")]
SourceArg = Annotated[str, typer.Argument(help="Checkpoint file (.pth/.pt/.safetensors), or a variant name such as "
                                          "vanillanet_6 for an untrained model with seeded random weights.",
                                          show_default=False)]
ExportSource = Annotated[Path, typer.Argument(help="An export directory or a .onnx file.", show_default=False)]
DetConfig = Annotated[Optional[Path], typer.Option("--det-config", help="Detection checkpoints: an mmdetection config "
                                                  "file to read instead of meta['config'] (parsed as plain data, "
                                                  "never executed); missing values fall back to the official "
                                                  "configs'.", show_default=False)]
JsonPrint = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]

# Serving: what repo and serve both configure (RepoOptions holds the defaults).
MaxBatch = Annotated[int, typer.Option("--max-batch", min=0, help="Largest batch Triton forms (max_batch_size; 0: "
                                       "no batching, for an ONNX exported with a fixed batch).")]
Instances = Annotated[int, typer.Option("--instances", min=1, help="Model instances.")]
QueueDelay = Annotated[int, typer.Option("--max-queue-delay-us", min=0, help="Dynamic batching: how long a request "
                                         "may wait for others.")]
Labels = Annotated[Optional[str], typer.Option("--labels", help="Class names for the output (one per line), or "
                                               "'imagenet'.", show_default=False)]
Runtime = Annotated[Optional[str], typer.Option("--runtime", help="What runs the model inside Triton's python "
                                                f"backend: {' or '.join(ONNX_RUNTIMES)}.",
                                                show_default="onnxruntime")]
OpenVinoHint = Annotated[Optional[str], typer.Option(
    "--openvino-hint", help="With --runtime openvino: LATENCY runs each dynamic batch as one inference over every "
    "core (best with few clients in flight); THROUGHPUT runs each request on its own stream (best under load on "
    "some CPUs, about half the speed of LATENCY at one client). Measured in docs/serving.md.",
    show_default="LATENCY")]
Images = Annotated[bool, typer.Option("--images", help="Also an image ensemble <model>_image: clients send encoded "
                                      "JPEG/PNG/WebP files (BYTES, one per batch element), preprocessed in the server "
                                      "exactly as the export records; with --labels, Triton's classification "
                                      "answers score:index:label.")]
# A server we did not start (serve-bench, eval): where it is and which of its models.
ServerUrl = Annotated[Optional[str], typer.Option("--url", help="A running KServe v2 / Triton server to measure "
                                                  "instead of starting one: HOST:PORT, http://, https:// or grpc:// "
                                                  "HOST:PORT. Only our requests are bounded there.",
                                                  show_default=False)]
ServedName = Annotated[Optional[str], typer.Option("--model", help="The model's name on --url.",
                                                   show_default="the server's only ready model")]
DEFAULT_MAX_BATCH = RepoOptions().max_batch
DEFAULT_INSTANCES = RepoOptions().instances
DEFAULT_QUEUE_DELAY_US = RepoOptions().max_queue_delay_us

