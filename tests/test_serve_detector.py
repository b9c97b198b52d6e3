"""An exported detector served by a REAL Triton (the nvidia-pytriton wheel's server, python backend) on loopback:
requests of different heights and widths, every output answered, boxes equal to ONNX Runtime's in process. Bounded:
two requests per protocol, client timeouts, the server stopped on every exit path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from detection_fixtures import save_detector
from triton_helpers import require_triton

from vanilladeploy.checkpoint import load_checkpoint
from vanilladeploy.pipeline.detection import DetectionExportOptions, export_detector
from vanilladeploy.runtimes.runners import ort_session
from vanilladeploy.serving.serve_bench import free_ports
from vanilladeploy.serving.server import TritonServer
from vanilladeploy.triton.config import RepoOptions
from vanilladeploy.triton.repository import write_repository

require_triton()
pytestmark = [pytest.mark.triton]
MODEL = "retinanet_custom"
OUTPUTS = ("boxes", "scores", "labels", "num_detections")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("det")
    ckpt = load_checkpoint(save_detector(root / "retinanet.pth"))
    return export_detector(ckpt, DetectionExportOptions(out_dir=root / "out", sizes=((256, 320),))).out_dir


@pytest.fixture(scope="module")
def server(export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_repository(export_dir, repo, RepoOptions(backend="python", max_batch=4))
    write_repository(export_dir, repo, RepoOptions(backend="python", max_batch=4, name=f"{MODEL}_openvino",
                                                   parameters={"runtime": "openvino"}))
    with TritonServer(repo, free_ports(), start_timeout_s=120) as s:
        yield s


def _ask(server: TritonServer, protocol: str, x: np.ndarray, model: str = MODEL) -> list[np.ndarray]:
    if protocol == "http":
        import tritonclient.http as client
        c = client.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=60.0)
    else:
        import tritonclient.grpc as client
        c = client.InferenceServerClient(server.grpc_url)
    tensor = client.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    kwargs = {"timeout": 60} if protocol == "http" else {"client_timeout": 60.0}
    result = c.infer(model, [tensor], outputs=[client.InferRequestedOutput(n) for n in OUTPUTS], **kwargs)
    return [result.as_numpy(n) for n in OUTPUTS]


@pytest.mark.parametrize(("protocol", "model"), [("http", MODEL), ("grpc", MODEL), ("http", f"{MODEL}_openvino")])
def test_served_detections_equal_onnxruntime_in_process(server: TritonServer, export_dir: Path,
                                                         protocol: str, model: str) -> None:
    """ONNX Runtime inside Triton, and OpenVINO fp32 (the same graph, another runtime: same boxes within 1e-3 px)."""
    session = ort_session(export_dir / f"{MODEL}.onnx")
    rng = np.random.default_rng(7)
    for h, w in ((256, 320), (320, 192)):  # two sizes: the dynamic height and width through Triton
        x = rng.standard_normal((1, 3, h, w), dtype=np.float32)
        served, local = _ask(server, protocol, x, model), session.run(None, {"input": x})
        count = int(np.asarray(served[3]).reshape(-1)[0])
        assert count == int(local[3][0]) and count > 0
        assert served[0].shape == (1, 100, 4) and served[2].dtype == np.int64
        np.testing.assert_array_equal(served[2], local[2])
        np.testing.assert_allclose(served[0], local[0], rtol=0, atol=1e-3)
        np.testing.assert_allclose(served[1], local[1], rtol=0, atol=1e-5)
