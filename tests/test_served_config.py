"""vanilladeploy/serving/client.py: what a served model's config says, read as the server gives it (HTTP's JSON, or
gRPC's message as a dict): which file it is, whether it is an engine or asks for bf16, and so the bound its answers
are held to against the local ONNX. No server needed: the config dicts are what Triton 2.51 answers."""

from __future__ import annotations

from dataclasses import replace

from vanilladeploy.serving.client import Endpoint, ServedModel, _computes, _recorded, served_tolerance
from vanilladeploy.verify import TOLERANCE_FP16, TOLERANCE_FP32, TOLERANCE_INT8_ENGINE

SERVED = ServedModel(Endpoint("127.0.0.1:8000", "http"), "m", "input", "FP32", (-1, 3, 32, 32), "logits", 1, 4)


def test_the_recorded_sha256_and_nothing_else_is_read() -> None:
    config = {"parameters": {"artifact_sha256": {"string_value": "ab"}, "runtime": {"string_value": "openvino"},
                             "onnx_sha256": {"string_value": ""}}}
    assert _recorded(config) == {"artifact_sha256": "ab"} and _recorded(None) == {}


def test_an_engine_and_bf16_are_read_from_the_config() -> None:
    assert _computes({"platform": "tensorrt_plan", "backend": "tensorrt"}) == (True, False)
    assert _computes({"backend": "openvino", "parameters": {"HINT_BF16": {"string_value": "YES"}}}) == (False, True)
    assert _computes({"backend": "python", "parameters": {"precision": {"string_value": "bf16"}}}) == (False, True)
    assert _computes(None) == (False, False)


def test_a_served_answer_is_held_to_what_the_server_computes_in() -> None:
    assert served_tolerance(SERVED, "fp32") == TOLERANCE_FP32
    assert served_tolerance(SERVED, "int8") == TOLERANCE_FP16
    assert served_tolerance(replace(SERVED, bf16=True), "fp32") == TOLERANCE_FP16
    assert served_tolerance(replace(SERVED, engine=True), "fp32") == TOLERANCE_INT8_ENGINE
