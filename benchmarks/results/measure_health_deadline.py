"""How long a health inference (vanilladeploy/serving/health.py) takes idle and under 16 clients, against the deadline
derived from the idle one: ``python benchmarks/results/measure_health_deadline.py vanillanet_6 224`` (the serve
extra; seeded random weights; the repository ``serve`` writes, on Triton's python backend with ONNX Runtime)."""

import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as http

from vanilladeploy.pipeline.export import ExportOptions, export_checkpoint
from vanilladeploy.serving.health import HealthProbe
from vanilladeploy.serving.serve_bench import free_ports
from vanilladeploy.serving.server import TritonServer
from vanilladeploy.triton.config import RepoOptions
from vanilladeploy.triton.repository import write_repository


def main(variant: str, img: int) -> None:
    root = Path(tempfile.mkdtemp())
    export_checkpoint(variant, ExportOptions(out_dir=root / "e", img_size=img))
    repo = root / "repo"
    repo.mkdir()
    write_repository(root / "e", repo, RepoOptions(backend="python"))
    with TritonServer(repo, free_ports(), model=variant) as server:
        addr = server.http_url.removeprefix("http://")
        config = json.loads(urllib.request.urlopen(f"{server.http_url}/v2/models/{variant}/config").read())
        probe = HealthProbe(addr, variant, config)
        assert probe.measure() is None
        print(f"{variant} {img}px: idle slowest of 3 = {probe.idle_s * 1000:.1f} ms -> deadline "
              f"{probe.timeout_s:.2f} s (max_batch {probe.max_batch})")
        stop = threading.Event()
        x = np.random.default_rng(0).standard_normal((1, 3, img, img), dtype=np.float32)
        def client() -> None:
            c = http.InferenceServerClient(addr, network_timeout=120, connection_timeout=120)
            while not stop.is_set():
                t = http.InferInput("input", [1, 3, img, img], "FP32")
                t.set_data_from_numpy(x)
                c.infer(variant, [t])

        threads = [threading.Thread(target=client, daemon=True) for _ in range(16)]
        for t in threads:
            t.start()
        time.sleep(3)
        lat = []
        for _ in range(20):
            s = time.perf_counter()
            assert probe._send(timeout_s=120) is None
            lat.append(time.perf_counter() - s)
            time.sleep(0.2)
        stop.set()
        print(f"under 16 clients: probe p50 {np.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms "
              f"({max(lat) / probe.timeout_s:.2f} of the deadline)")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
