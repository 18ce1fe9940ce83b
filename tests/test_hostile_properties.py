"""Property tests: arbitrary bytes and metadata never escape the project's own error type."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpm.core.errors import DDPMError
from ddpm.core.metadata import PREFIX, ModelInfo
from ddpm.core.mnist import read_idx
from ddpm.runtime.onnx_check import read_outline
from ddpm.runtime.pipeline import default_model_path

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=3))
def test_idx_reader_random_bytes(tmp_path_factory, data, ndim):
    path = tmp_path_factory.mktemp("idx") / "file"
    path.write_bytes(data)
    try:
        array = read_idx(path, ndim)
    except DDPMError:
        return
    assert array.dtype == np.uint8 and array.ndim == ndim


@FAST
@given(st.lists(st.integers(0, 255), min_size=0, max_size=6), st.binary(max_size=64))
def test_idx_reader_plausible_headers(tmp_path_factory, dims, body):
    """Headers that look right with bodies of any length."""
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path = tmp_path_factory.mktemp("idx") / "file"
    path.write_bytes(header + body)
    try:
        array = read_idx(path, len(dims) or 1)
    except DDPMError:
        return
    assert list(array.shape) == dims


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
FIELDS = ["format", "format_version", "schedule", "image_size", "image_channels", "data_range", "prediction",
          "variance", "noise_at_last_step", "num_classes", "fixed_batch", "model_config", "source", "versions"]


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS), json_values), st.booleans())
def test_metadata_parser_random_values(values, valid_format):
    props = {PREFIX + key: json.dumps(value) for key, value in values.items()}
    if valid_format:
        props[PREFIX + "format"], props[PREFIX + "format_version"] = '"ddpm-mnist-onnx"', "1"
    try:
        info = ModelInfo.from_metadata(props)
    except DDPMError:
        return
    assert info.problems() == []


@FAST
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=6))
def test_metadata_parser_random_text(props):
    with pytest.raises(DDPMError):
        ModelInfo.from_metadata(props)


@FAST
@given(st.binary(max_size=4096))
def test_onnx_outline_random_bytes(data):
    try:
        read_outline(data)
    except DDPMError:
        pass


@pytest.fixture(scope="module")
def model_bytes():
    return default_model_path().read_bytes()


@FAST
@given(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8), st.booleans())
def test_onnx_outline_corrupted_model(model_bytes, flips, near_ends):
    """The embedded model with a few bytes overwritten, often near the ends (graph structure, metadata)."""
    data = bytearray(model_bytes)
    size = len(data)
    for fraction, value in flips:
        if near_ends:  # first 64 kB or last 16 kB, where the graph's small fields and the metadata live
            position = int(fraction * 65536) if fraction < 0.5 else size - 1 - int((fraction - 0.5) * 32768)
        else:
            position = int(fraction * size)
        data[position] = value
    try:
        outline = read_outline(bytes(data))
    except DDPMError:
        return
    assert outline.has_graph
