"""vanilladeploy/checkpoint.py and arch.py: containers, safe loading, the λ rule, variant detection."""

import argparse
import datetime
import io
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ALL_VARIANTS, official_checkpoint, random_model
from safetensors.torch import save_file
from test_cli import run
from test_hostile import _in_torch_zip

from vanilladeploy.arch import check_keys_and_shapes, detect_architecture
from vanilladeploy.checkpoint import lambda_of, load_checkpoint, trained_lambda
from vanilladeploy.errors import ArchitectureError, CheckpointError
from vanilladeploy.models.vanillanet import create_vanillanet


@pytest.fixture(scope="module")
def sd() -> dict:
    return random_model("vanillanet_5", seed=2).state_dict()


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_official_container_prefers_model_ema(tmp_path: Path, sd: dict) -> None:
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    path = _save(official_checkpoint(sd, variant="vanillanet_5", ema=ema, epoch=299), tmp_path / "c.pth")
    ckpt = load_checkpoint(path)
    assert ckpt.container_key == "model_ema" and ckpt.form == "train"
    assert torch.equal(ckpt.state_dict["stem1.0.weight"], ema["stem1.0.weight"])
    assert ckpt.epoch == 299 and ckpt.args["model"] == "vanillanet_5" and ckpt.args["decay_epochs"] == 100
    assert len(ckpt.sha256) == 64
    assert torch.equal(load_checkpoint(path, key="model").state_dict["stem1.0.weight"], sd["stem1.0.weight"])


@pytest.mark.parametrize("wrap,key", [
    (lambda sd: sd, None),
    (lambda sd: {"model": sd}, "model"),
    (lambda sd: {"state_dict": sd, "meta": {"note": "x"}}, "state_dict"),
    (lambda sd: {f"module.{k}": v for k, v in sd.items()}, None),
    (lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, "model"),
])
def test_containers_and_ddp_prefix(tmp_path: Path, sd: dict, wrap, key) -> None:
    ckpt = load_checkpoint(_save(wrap(sd), tmp_path / "c.pt"))
    assert ckpt.container_key == key
    assert set(ckpt.state_dict) == set(sd)
    assert ckpt.epoch is None and lambda_of(ckpt).assumed


def test_safetensors(tmp_path: Path, sd: dict) -> None:
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    ckpt = load_checkpoint(path)
    assert ckpt.form == "train" and torch.equal(ckpt.state_dict["cls2.0.weight"], sd["cls2.0.weight"])


def test_deploy_form_detected(tmp_path: Path) -> None:
    deploy = random_model("vanillanet_6", deploy=True).state_dict()
    ckpt = load_checkpoint(_save({"model": deploy}, tmp_path / "d.pth"))
    assert ckpt.form == "deploy"
    assert detect_architecture(ckpt.state_dict, "deploy").name == "vanillanet_6"


def test_unsafe_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    pickled = pickle.dumps({"model": Payload()}, protocol=2)
    with pytest.raises(CheckpointError, match="refused to load.*system.*not allow-listed"):
        load_checkpoint(_in_torch_zip(pickled, tmp_path / "evil.pth"))
    bare = tmp_path / "evil.pkl"
    bare.write_bytes(pickled)
    with pytest.raises(CheckpointError, match="bare pickle"):
        load_checkpoint(bare)
    assert not marker.exists()


def test_legacy_torch_format_is_refused_with_a_conversion_hint(tmp_path: Path, sd: dict) -> None:
    path = tmp_path / "legacy.pth"
    torch.save({"model": sd}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="pre-1.6 format.*weights_only=True"):
        load_checkpoint(path)


@pytest.mark.parametrize("epoch,decay_epochs,linear,expected", [
    (0, 100, True, 0.0), (50, 100, True, 0.5), (99, 100, True, 0.99), (100, 100, True, 1.0), (299, 100, True, 1.0),
    (50, 100, False, 0.5), (25, 100, False, 0.5 * (1 - math.cos(math.pi / 4))), (120, 100, False, 1.0),
    (5, 0, True, 1.0), (5, -1, True, 1.0),
])
def test_trained_lambda(epoch: int, decay_epochs: int, linear: bool, expected: float) -> None:
    assert trained_lambda(epoch, decay_epochs, linear) == pytest.approx(expected, abs=1e-12)


def test_lambda_read_from_checkpoint(tmp_path: Path, sd: dict) -> None:
    early = load_checkpoint(_save(official_checkpoint(sd, variant="vanillanet_5", epoch=40, decay_linear=False),
                                  tmp_path / "e.pth"))
    info = lambda_of(early)
    assert not info.exact and info.epoch == 40 and info.decay_linear is False
    assert info.value == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.4)))
    done = load_checkpoint(_save(official_checkpoint(sd, variant="vanillanet_5", epoch=100), tmp_path / "d.pth"))
    assert lambda_of(done).exact and not lambda_of(done).assumed


def _meta_state_dict(variant: str, *, deploy: bool, act_num: int = 3, num_classes: int = 1000) -> dict:
    with torch.device("meta"):
        return create_vanillanet(variant, deploy=deploy, act_num=act_num, num_classes=num_classes).state_dict()


@pytest.mark.parametrize("variant", [v for v in ALL_VARIANTS if "x1_5" not in v])
@pytest.mark.parametrize("deploy", [False, True])
def test_detect_every_variant_from_shapes(variant: str, deploy: bool) -> None:
    sd = _meta_state_dict(variant, deploy=deploy, act_num=2, num_classes=37)
    form = "deploy" if deploy else "train"
    arch = detect_architecture(sd, form)
    assert (arch.name, arch.act_num, arch.num_classes) == (variant, 2, 37)
    check_keys_and_shapes(sd, arch, form)


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_x1_5_twins_are_ambiguous_without_args_model(form: str) -> None:
    sd = _meta_state_dict("vanillanet_13_x1_5_ada_pool", deploy=form == "deploy")
    with pytest.raises(ArchitectureError, match="fit vanillanet_13_x1_5 and vanillanet_13_x1_5_ada_pool.*--arch"):
        detect_architecture(sd, form)
    assert detect_architecture(sd, form, args_model="vanillanet_13_x1_5").name == "vanillanet_13_x1_5"


def test_ada_pool_resolved_by_args_model_or_arch() -> None:
    sd = _meta_state_dict("vanillanet_13_x1_5_ada_pool", deploy=False)
    assert detect_architecture(sd, "train", args_model="vanillanet_13_x1_5_ada_pool").spec.ada_pool
    assert detect_architecture(sd, "train", arch="vanillanet_13_x1_5_ada_pool").detected_from == "--arch"


def test_arch_that_contradicts_the_tensors_is_refused() -> None:
    with pytest.raises(ArchitectureError, match="vanillanet_7 has widths.*which is vanillanet_6"):
        detect_architecture(_meta_state_dict("vanillanet_6", deploy=True), "deploy", arch="vanillanet_7")


def test_key_and_shape_problems_are_named() -> None:
    sd = _meta_state_dict("vanillanet_5", deploy=False)
    arch = detect_architecture(sd, "train")
    missing = {k: v for k, v in sd.items() if k != "stages.1.act.bn.running_var"}
    with pytest.raises(ArchitectureError, match="missing key 'stages.1.act.bn.running_var'"):
        check_keys_and_shapes(missing, arch, "train")
    with pytest.raises(ArchitectureError, match="unexpected key 'extra.weight'"):
        check_keys_and_shapes({**sd, "extra.weight": torch.zeros(1)}, arch, "train")
    bad = {**sd, "stages.0.conv1.0.bias": torch.zeros(3)}
    with pytest.raises(ArchitectureError, match="'stages.0.conv1.0.bias' has shape \\[3\\]"):
        check_keys_and_shapes(bad, arch, "train")


def test_namespace_is_the_only_extra_type_allowed(tmp_path: Path, sd: dict) -> None:
    path = _save({"model": sd, "args": argparse.Namespace(model="vanillanet_5"), "epoch": 300}, tmp_path / "a.pth")
    assert load_checkpoint(path).args == {"model": "vanillanet_5"}
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(_save({"model": sd, "args": datetime.datetime.now()}, tmp_path / "b.pth"))


# --- damaged zip containers the large fuzz (test_fuzz_large.py) found reaching "internal error" -----------------------

def _central_entry(raw: bytes, suffix: str) -> int:
    """Offset of the central-directory record of the member whose name ends with ``suffix``."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        offset = archive.start_dir
        for info in archive.infolist():
            if info.filename.endswith(suffix):
                return offset
            name_len, extra_len, comment_len = struct.unpack_from("<HHH", raw, offset + 28)
            offset += 46 + name_len + extra_len + comment_len
    raise AssertionError(f"no member *{suffix}")


def _official_bytes(sd: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(official_checkpoint(sd, variant="vanillanet_5"), buffer)
    return buffer.getvalue()


def _damaged(raw: bytes, path: Path, edits: dict[int, bytes]) -> Path:
    damaged = bytearray(raw)
    for offset, data in edits.items():
        damaged[offset:offset + len(data)] = data
    path.write_bytes(bytes(damaged))
    return path


def test_an_unsupported_zip_version_is_a_checkpoint_error(tmp_path: Path, sd: dict) -> None:
    raw = _official_bytes(sd)
    entry = _central_entry(raw, "data.pkl")
    path = _damaged(raw, tmp_path / "v.pth", {entry + 6: bytes([99])})  # "version needed to extract": 9.9
    with pytest.raises(NotImplementedError, match="zip file version 9.9"):  # what the zip reader itself raises
        zipfile.ZipFile(path).infolist()
    with pytest.raises(CheckpointError, match="cannot read this zip container.*NotImplementedError: zip file version"):
        load_checkpoint(path)
    result = run("inspect", path)
    assert result.exit_code == 2 and "zip file version" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "internal error" not in result.output


def test_an_unsupported_version_in_a_local_header_is_not_a_crash(tmp_path: Path, sd: dict) -> None:
    raw = _official_bytes(sd)
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        local = next(i.header_offset for i in archive.infolist() if i.filename.endswith("data.pkl"))
    path = _damaged(raw, tmp_path / "v.pth", {local + 4: struct.pack("<H", 99)})  # neither reader checks it
    assert load_checkpoint(path).container_key == "model_ema"


def test_a_damaged_central_directory_size_is_a_checkpoint_error(tmp_path: Path, sd: dict) -> None:
    raw = _official_bytes(sd)
    entry = _central_entry(raw, "data.pkl")
    sizes = struct.pack("<II", 7, 7)  # compressed and uncompressed size of data.pkl: 7 bytes of a longer pickle
    path = _damaged(raw, tmp_path / "cd.pth", {entry + 20: sizes})
    with pytest.raises(struct.error):  # what torch's weights-only unpickler raises on the cut pickle
        torch.load(path, weights_only=True)
    with pytest.raises(CheckpointError, match=r"truncated or corrupted \(error: unpack requires"):
        load_checkpoint(path)
    result = run("inspect", path)
    assert result.exit_code == 2 and "unpack requires" in result.output, result.output
    assert "internal error" not in result.output


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_finite_check_is_exact_even_where_the_sum_overflows(dtype: torch.dtype) -> None:
    from vanilladeploy.checkpoint import _all_finite

    big = torch.full((1000,), torch.finfo(dtype).max, dtype=dtype)  # every value finite, their sum is not
    assert not torch.isfinite(big.sum()) and _all_finite(big)
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = torch.randn(1000, dtype=torch.float32).to(dtype)
        t[437] = bad
        assert not _all_finite(t)
        big[3] = bad
        assert not _all_finite(big)
        big[3] = torch.finfo(dtype).max
    assert _all_finite(torch.randn(10, dtype=torch.float32).to(dtype))


def test_the_digest_names_the_bytes_that_were_read(tmp_path: Path, sd: dict) -> None:
    import hashlib

    from vanilladeploy.checkpoint import sha256_of

    path = _save(official_checkpoint(sd, variant="vanillanet_5", epoch=299), tmp_path / "c.pth")
    ckpt = load_checkpoint(path)
    original = hashlib.sha256(path.read_bytes()).hexdigest()
    assert ckpt.sha256 == original == sha256_of(path)
    changed = load_checkpoint(path)
    with path.open("ab") as f:  # the file changes after it was read, before anyone asked for its digest
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="changed after it was read"):
        changed.sha256  # noqa: B018
    assert ckpt.sha256 == original != sha256_of(path)  # asked before the change: the digest of what was read
