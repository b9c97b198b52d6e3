"""vanilladeploy/triton/ensemble.py and image_model.py: images in, labels out, on a REAL Triton. Real JPEG and
PNG files sent as BYTES give the logits ``vd.load(onnx).predict(path)`` gives in process (rel. L2 ≤ 1e-5); with
labels, Triton's classification answers equal the in-process top-k; a truncated JPEG is refused alone (400) while the
requests batched with it are answered; ``serve --images`` through the CLI, including a preprocess stub killed and
the ensemble reloaded. Bounded: few requests, timeouts on every call, every server stopped."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from triton_helpers import READY, assert_nothing_left, cmdlines, require_triton, serve, stop, stubs, wait_for_line
from typer.testing import CliRunner

import vanilladeploy as vd
from vanilladeploy.cli import app
from vanilladeploy.errors import UsageError
from vanilladeploy.serving.serve_bench import free_ports
from vanilladeploy.serving.server import TritonServer
from vanilladeploy.triton.config import RepoOptions, parse_config
from vanilladeploy.triton.repository import write_repository
from vanilladeploy.verify import compare

require_triton()
pytestmark = [pytest.mark.triton]
MODEL, IMG, CLASSES = "vanillanet_5", 48, 1000
ENSEMBLE = f"{MODEL}_image"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, vanillanet_5_export: Callable[[int], Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    export = vanillanet_5_export(IMG)
    rng = np.random.default_rng(11)
    for i, (h, w) in enumerate([(64, 80), (120, 60), (50, 50)]):
        pixels = (np.linspace(0, 255, w)[None, :, None] * rng.random(3) + rng.normal(0, 30, (h, w, 3)))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"{i}.{'png' if i == 1 else 'jpg'}")
    jpeg = (root / "0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "labels.txt").write_text("".join(f"name {i}\n" for i in range(CLASSES)))
    return {"export": export, "onnx": export / f"{MODEL}.onnx", "root": root,
            "labels": root / "labels.txt", "images": [root / "0.jpg", root / "1.png", root / "2.jpg"]}


@pytest.fixture(scope="module")
def server(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_repository(files["export"], repo, RepoOptions(backend="python", max_batch=4, max_queue_delay_us=50000,
                                                        labels=str(files["labels"])), images=True)
    with TritonServer(repo, free_ports(), start_timeout_s=120, model=ENSEMBLE) as s:
        yield s


def _send(url: str, paths: list[Path] | list[bytes], class_count: int = 0) -> np.ndarray:
    import tritonclient.http as http

    data = [p if isinstance(p, bytes) else p.read_bytes() for p in paths]
    client = http.InferenceServerClient(url.removeprefix("http://"), network_timeout=30, connection_timeout=30)
    tensor = http.InferInput("image", [len(data), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[d] for d in data], dtype=object))
    output = http.InferRequestedOutput("logits", class_count=class_count)
    return client.infer(ENSEMBLE, [tensor], outputs=[output]).as_numpy("logits")


def test_the_repository_holds_classifier_preprocess_and_ensemble(files: dict[str, Path], tmp_path: Path) -> None:
    result = write_repository(files["export"], tmp_path, RepoOptions(backend="python", max_batch=4), images=True)
    names = sorted(p.parent.name for p in tmp_path.glob("*/config.pbtxt"))
    assert names == [MODEL, ENSEMBLE, f"{MODEL}_preprocess"]
    ensemble = parse_config((tmp_path / ENSEMBLE / "config.pbtxt").read_text())
    assert ensemble.platform == "ensemble" and (tmp_path / ENSEMBLE / "1").is_dir()
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [f"{MODEL}_preprocess", MODEL]
    pre = parse_config((tmp_path / f"{MODEL}_preprocess" / "config.pbtxt").read_text())
    recorded = json.loads(pre.parameters["preprocessing"].string_value)
    assert recorded["img_size"] == str(IMG) and list(pre.output[0].dims) == [3, IMG, IMG]
    assert (tmp_path / f"{MODEL}_preprocess" / "1" / "model.py").is_file() and len(result.files) > 3


def test_images_give_the_logits_of_predict_in_process(server: TritonServer, files: dict[str, Path]) -> None:
    served = _send(server.http_url, files["images"])
    with vd.load(files["onnx"]) as model:
        local = model.predict([str(p) for p in files["images"]])
    assert served.shape == (3, CLASSES)
    for i in range(3):
        assert compare(served[i:i + 1], local[i:i + 1], tolerance=1e-5), (i, compare(served[i:i + 1], local[i:i + 1]))


def test_classification_answers_equal_the_in_process_top_k(server: TritonServer, files: dict[str, Path]) -> None:
    answers = _send(server.http_url, files["images"][:2], class_count=3)
    with vd.load(files["onnx"]) as model:
        local = model.predict([str(p) for p in files["images"][:2]])
    for row, logits in zip(answers, local):
        fields = [a.decode().split(":") for a in row]
        assert [int(f[1]) for f in fields] == list(np.argsort(-logits)[:3])
        assert [f[2] for f in fields] == [f"name {int(f[1])}" for f in fields]
        assert np.allclose([float(f[0]) for f in fields], np.sort(logits)[::-1][:3], rtol=1e-4)


def test_a_truncated_jpeg_is_refused_alone(server: TritonServer, files: dict[str, Path]) -> None:
    """Three requests at once (one dynamic batch of the preprocess step, 50 ms queue delay): the truncated one gets
    its 400 with the reason; the two others their logits."""
    from tritonclient.utils import InferenceServerException

    bodies = [files["images"][0], files["root"] / "truncated.jpg", files["images"][2]]
    answers: dict[int, object] = {}

    def send(i: int) -> None:
        try:
            answers[i] = _send(server.http_url, [bodies[i]])
        except InferenceServerException as e:
            answers[i] = e

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    refused = answers[1]
    assert isinstance(refused, InferenceServerException) and refused.status() == "400", refused
    assert "image 0 of the request could not be read as an image" in str(refused)
    with vd.load(files["onnx"]) as model:
        for i in (0, 2):
            assert compare(answers[i], model.predict([str(bodies[i])]), tolerance=1e-5), answers[i]


def _rss_mb(pids: list[int]) -> float:
    return sum(int(line.split()[1]) for pid in pids for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:")) / 1024


def test_eight_clients_with_valid_and_truncated_jpegs(server: TritonServer, files: dict[str, Path]) -> None:
    """8 concurrent clients, each sending valid images and a truncated JPEG in turn: every valid answer equals
    predict in process, every truncated one is refused alone (400), and server + stubs' memory stays flat from a
    first round to a three times longer second one (≤ 15 % or 32 MB more, as the soak test bounds it)."""
    from tritonclient.utils import InferenceServerException

    with vd.load(files["onnx"]) as model:
        local = {p: model.predict([str(p)]) for p in files["images"]}
    bodies = [*files["images"], files["root"] / "truncated.jpg"]
    problems: list[str] = []
    answered = {"right": 0, "refused": 0}
    lock = threading.Lock()

    def client(n: int, rounds: int) -> None:
        for r in range(rounds):
            path = bodies[(n + r) % len(bodies)]
            try:
                y = _send(server.http_url, [path])
                ok = path in local and bool(compare(y, local[path], tolerance=1e-5))
                problem = None if ok else f"{path.name}: answered {'wrong' if path in local else 'not refused'}"
            except InferenceServerException as e:
                ok = path not in local and e.status() == "400"
                problem = None if ok else f"{path.name}: {e.status()} {e}"
            with lock:
                (problems.append(problem) if problem else None)
                answered["right" if path in local else "refused"] += ok

    def load(rounds: int) -> None:
        threads = [threading.Thread(target=client, args=(n, rounds)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)

    assert server.process is not None
    pids = [server.process.pid, *stubs(server.shm_prefix)]
    assert len(pids) >= 3, pids  # the server, the classifier's stub, the preprocess step's stub
    load(4)
    warm = _rss_mb(pids)
    load(12)
    after = _rss_mb(pids)
    assert problems == [], problems[:5]
    assert answered == {"right": 96, "refused": 32}, answered
    assert after <= warm + max(0.15 * warm, 32.0), f"server + stubs RSS grew from {warm:.0f} MB to {after:.0f} MB"


def test_images_need_a_batching_classifier_and_recorded_preprocessing(files: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--max-batch 1 or more"):
        write_repository(files["export"], tmp_path / "a", RepoOptions(backend="python", max_batch=0), images=True)
    import onnx

    bare = onnx.load(files["onnx"])
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(UsageError, match="records no preprocessing"):
        write_repository(tmp_path / "bare.onnx", tmp_path / "b", RepoOptions(backend="python"), images=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_repo_images_through_the_cli(files: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["repo", str(files["export"]), "--out", str(tmp_path), "--backend", "python",
                                      "--images", "--labels", str(files["labels"])])
    assert result.exit_code == 0, result.output
    assert (tmp_path / ENSEMBLE / "labels.txt").read_text() == files["labels"].read_text()
    assert f"{ENSEMBLE}/config.pbtxt" in result.output


def test_serve_images_answers_images_and_reloads_a_killed_preprocess_stub(files: dict[str, Path]) -> None:
    ports = list(vars(free_ports()).values())
    process = serve(files["export"], ports, "--images")
    try:
        output = wait_for_line(process, READY, timeout_s=120)
        assert ENSEMBLE in output and "IMAGE.jpg" in output, output
        url = f"http://127.0.0.1:{ports[0]}"
        before = _send(url, files["images"][:1])
        running = cmdlines()
        (preprocess,) = [p for p in stubs(f"vanilladeploy-{process.pid}-") if "_preprocess" in running.get(p, "")]
        os.kill(preprocess, signal.SIGKILL)
        wait_for_line(process, "reloaded in", timeout_s=60)
        after = _send(url, files["images"][:1])
    finally:
        stop(process)
    assert process.returncode == 0
    assert compare(after, before, tolerance=1e-6)
    with vd.load(files["onnx"]) as model:
        assert compare(before, model.predict([str(files["images"][0])]), tolerance=1e-5)
    assert_nothing_left(ports[0], process.pid)


def test_serve_a_repository_with_images_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    write_repository(files["export"], tmp_path, RepoOptions(backend="python"))
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--images", "--http-port", str(free_ports().http)])
    assert result.exit_code == 2 and "served as it is" in result.output, result.output
