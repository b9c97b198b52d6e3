"""vanilladeploy.det_config: an mmdetection config read as plain data; anything that would run is refused."""

from __future__ import annotations

import pytest
from detection_fixtures import config_text, small_dims

from vanilladeploy.det_config import MAX_CONFIG_CHARS, ConfigError, parse_config


def test_the_dumped_official_config_is_read() -> None:
    cfg = parse_config(config_text("RetinaNet", small_dims()), source="meta['config']")
    backbone = cfg["model"]["backbone"]
    assert backbone["type"] == "Vanillanet" and backbone["out_indices"] == [1, 8, 10]
    assert cfg["model"]["test_cfg"]["nms"] == {"type": "nms", "iou_threshold": 0.5}
    assert cfg["optimizer"]["paramwise_cfg"]["decay_rate"] == 0.6
    assert cfg["data"]["test"]["pipeline"][1]["img_scale"] == (1333, 800)


def test_the_raw_official_file_style_is_read() -> None:
    """The official configs' own text: names of earlier values, ``**`` and arithmetic (``128*4``), string joins."""
    text = """_base_ = ['../_base_/models/retinanet_r50_fpn.py']
data_root = 'data/coco/'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(backbone=dict(type='Vanillanet', act_num=4, dims=[128*4, 128*4, 256*4, 512*4, 1024*4],
                           strides=[1, 2, 2, 1]), neck=dict(in_channels=[256*4, 512*4, 1024*4]))
norm = dict(type='Normalize', **img_norm_cfg)
ann = data_root + 'annotations/instances_val2017.json'
lr = -8e-05 * 2 ** 3 // 1 % 7
"""
    cfg = parse_config(text, source="x.py")
    assert cfg["model"]["backbone"]["dims"] == [512, 512, 1024, 2048, 4096]
    assert cfg["norm"]["std"] == [58.395, 57.12, 57.375] and cfg["norm"]["type"] == "Normalize"
    assert cfg["ann"] == "data/coco/annotations/instances_val2017.json"
    assert cfg["_base_"] == ["../_base_/models/retinanet_r50_fpn.py"]


@pytest.mark.parametrize("text, what", [
    ("import os", "Import statement"),
    ("from os import system", "ImportFrom statement"),
    ("model = dict(type=__import__('os').system('true'))", "a call"),
    ("model = dict(type=__import__('os'))", "a call of '__import__'"),
    ("x = open('/etc/passwd').read()", "a call"),
    ("x = os.environ", "Attribute expression"),
    ("x = (lambda: 1)()", "a call"),
    ("x = [i for i in range(3)]", "ListComp expression"),
    ("x = f'{1}'", "JoinedStr expression"),
    ("x = undefined_name", "the name 'undefined_name'"),
    ("def f():\n    pass", "FunctionDef statement"),
    ("x = 10 ** 10 ** 10", "a power this large"),
    ("x = 'a' * 1000", "Mult on str and int"),
    ("x = dict(1, 2)", "a call of 'dict'"),
    ("x = {**[1]}", "** on a non-dict"),
    ("x = 1\nx.y = 2", "Assign statement"),
    ("a, b = 1, 2", "Assign statement"),
])
def test_anything_that_is_not_data_is_refused_with_its_line(text: str, what: str) -> None:
    with pytest.raises(ConfigError, match="line") as e:
        parse_config(text, source="evil.py")
    assert what in str(e.value) and "evil.py" in str(e.value)


def test_a_string_doubled_past_the_limit_is_refused() -> None:
    text = "a = 'xxxxxxxxxxxxxxxx'\n" + "a = a + a\n" * 20
    with pytest.raises(ConfigError, match="a string this long"):
        parse_config(text, source="big.py")


def test_not_python_and_too_long_are_refused() -> None:
    with pytest.raises(ConfigError, match="not valid Python"):
        parse_config("model = dict(", source="cut.py")
    with pytest.raises(ConfigError, match="refusing more than"):
        parse_config("#" * (MAX_CONFIG_CHARS + 1), source="huge.py")
    with pytest.raises(ConfigError, match="nested too deeply|not valid Python"):
        parse_config("x = " + "[" * 5000 + "]" * 5000, source="deep.py")
