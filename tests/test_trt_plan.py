"""vanilladeploy/runtimes/trt_plan.py: options, sizes, trtexec lines for TensorRT 10 and 11, the engine sidecar and
its check."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest
import torch

from vanilladeploy.exporters.trt_compat import BatchProfile
from vanilladeploy.runtimes.trt_plan import (
    EngineMismatchError,
    TrtBuildOptions,
    check_engine_sidecar,
    engine_name,
    engine_sidecar,
    parse_size,
    tensorrt_missing,
    trtexec_command,
)

SHAPE = (1, 3, 224, 224)


def test_parse_size() -> None:
    assert parse_size("4GiB") == parse_size("4G") == parse_size(str(4 << 30)) == 4 << 30
    assert parse_size("512MiB") == 512 << 20 and parse_size("1GB") == 10**9 and parse_size("1.5g") == 3 << 29
    for bad in ("", "-1", "4 parsecs", "0", "GiB"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="precision"):
        TrtBuildOptions(precision="int4")
    with pytest.raises(ValueError, match="optimization level"):
        TrtBuildOptions(opt_level=7)
    assert engine_name("vanillanet_6", "fp16") == "vanillanet_6.fp16.engine"


def _args(line: str) -> list[str]:
    return shlex.split(line)


def test_trtexec_fp32_dynamic() -> None:
    opts = TrtBuildOptions(profile=BatchProfile(1, 2, 8), workspace_bytes=2 << 30, timing_cache=Path("t.cache"),
                           opt_level=4)
    args = _args(trtexec_command(Path("out dir/m.onnx"), Path("out dir/m.fp32.engine"), input_name="input",
                                 input_shape=SHAPE, dynamic_batch=True, opts=opts, tensorrt_major=10))
    assert args[:3] == ["trtexec", "--onnx=out dir/m.onnx", "--saveEngine=out dir/m.fp32.engine"]  # quoted path
    for flag in ("--minShapes=input:1x3x224x224", "--optShapes=input:2x3x224x224", "--maxShapes=input:8x3x224x224",
                 "--shapes=input:2x3x224x224", "--noTF32", "--memPoolSize=workspace:2048M",
                 "--builderOptimizationLevel=4", "--timingCacheFile=t.cache"):
        assert flag in args
    assert "--fp16" not in args


def test_trtexec_fp16_differs_between_tensorrt_10_and_11() -> None:
    opts = TrtBuildOptions(precision="fp16", workspace_bytes=1000)
    ten = _args(trtexec_command(Path("m.onnx"), Path("m.fp16.engine"), input_name="input", input_shape=SHAPE,
                                dynamic_batch=False, opts=opts, tensorrt_major=10))
    eleven = _args(trtexec_command(Path("m.fp16.onnx"), Path("m.fp16.engine"), input_name="input",
                                   input_shape=SHAPE, dynamic_batch=False, opts=opts, tensorrt_major=11))
    assert "--fp16" in ten and "--fp16" not in eleven  # TensorRT 11 removed the precision flags
    assert {"--useCudaGraph", "--noDataTransfers"} <= set(ten)  # timing switches TensorRT 11 ignores with a warning
    assert not {"--useCudaGraph", "--noDataTransfers"} & set(eleven)
    assert "--onnx=m.fp16.onnx" in eleven and "--memPoolSize=workspace:1000B" in ten
    assert not any(a.startswith(("--minShapes", "--shapes")) for a in ten)  # static batch: no shapes
    assert "--noTF32" not in ten


def _sidecar() -> dict:
    return engine_sidecar(trt_version="10.7.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                          opts=TrtBuildOptions(profile=BatchProfile(1, 1, 4)), onnx_sha256="ab" * 32,
                          onnx_name="m.onnx", input_shape=SHAPE, build_s=12.34567, strongly_typed=False)


def test_sidecar_records_what_an_engine_is_tied_to() -> None:
    s = _sidecar()
    assert s["tensorrt_version"] == "10.7.0" and s["gpu"]["compute_capability"] == "9.0"
    assert s["profile"] == {"min": [1, 3, 224, 224], "opt": [1, 3, 224, 224], "max": [4, 3, 224, 224]}
    assert s["precision"] == "fp32" and s["tf32"] is False and s["build_s"] == 12.346
    assert s["onnx"]["sha256"] == "ab" * 32


def test_sidecar_check_refuses_other_gpu_or_version() -> None:
    s, engine = _sidecar(), Path("m.fp32.engine")
    check_engine_sidecar(s, trt_version="10.7.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                         engine=engine)  # same machine: no error
    with pytest.raises(EngineMismatchError, match="built with TensorRT 10.7.0, this is TensorRT 11.0.0"):
        check_engine_sidecar(s, trt_version="11.0.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                             engine=engine)
    with pytest.raises(EngineMismatchError, match="built for NVIDIA H100.*this GPU is NVIDIA A100"):
        check_engine_sidecar(s, trt_version="10.7.0", gpu_name="NVIDIA A100-SXM4-80GB", compute_capability=(8, 0),
                             engine=engine)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available(),
                    reason="TensorRT and a GPU are present here")
def test_tensorrt_missing_names_the_fix() -> None:
    reason = tensorrt_missing()
    assert reason is not None and "pip install 'vanilladeploy[trt]'" in reason


def test_int8_float_layers_run_in_fp16_on_tensorrt_10_and_as_typed_on_11() -> None:
    def line(float_layers: tuple[str, ...], major: int) -> list[str]:
        opts = TrtBuildOptions(precision="int8", float_layers=float_layers)
        return _args(trtexec_command(Path("m.int8.onnx"), Path("m.int8.engine"), input_name="input",
                                     input_shape=SHAPE, dynamic_batch=False, opts=opts, tensorrt_major=major))

    assert "--int8" in line((), 10) and "--fp16" not in line((), 10)
    assert {"--int8", "--fp16"} <= set(line(("stem/conv",), 10))  # the float Convs may use fp16 kernels
    assert not {"--int8", "--fp16"} & set(line(("stem/conv",), 11))  # strongly typed: as the graph types them
