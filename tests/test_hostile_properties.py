"""Property tests: arbitrary bytes and metadata (a U-Net's, a latent U-Net's, its decoder's) never escape the
project's own error type."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ddpm.core.errors import DDPMError
from ddpm.core.metadata import PREFIX, DecoderInfo, ModelInfo
from ddpm.core.mnist import read_idx
from ddpm.runtime.decoder import decoder_path
from ddpm.runtime.onnx_check import read_outline
from ddpm.runtime.pipeline import default_model_path, embedded_model_path

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FEWER = settings(FAST, max_examples=100)  # the latent model's files: the same readers as above, more of them to cover


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


json_values = st.recursive(  # with integers beyond float's range: JSON holds them, float() overflows on them
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400)])
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
FIELDS = [
    "format",
    "format_version",
    "schedule",
    "image_size",
    "image_channels",
    "data_range",
    "prediction",
    "variance",
    "noise_at_last_step",
    "num_classes",
    "fixed_batch",
    "model_config",
    "source",
    "versions",
    "latent",
]
LATENT_KEYS = ["image_size", "image_channels", "scale_factor", "decoder_file", "decoder_sha256", "autoencoder_sha256"]
DECODER_FIELDS = [
    "format",
    "format_version",
    "latent_channels",
    "latent_size",
    "image_size",
    "image_channels",
    "data_range",
    "scale_factor",
    "autoencoder_sha256",
    "model_config",
    "source",
    "versions",
]


def embedded_latent_files() -> dict[str, Path]:
    """The embedded latent model's U-Net and the decoder it names."""
    unet = embedded_model_path("latent")
    return {"latent": unet, "latent decoder": decoder_path(unet, ModelInfo.from_metadata(outline_of(unet).metadata))}


def outline_of(path: Path):
    return read_outline(path.read_bytes(), str(path))


@pytest.fixture(scope="module")
def latent_metadata() -> dict[str, dict[str, str]]:
    return {name: outline_of(path).metadata for name, path in embedded_latent_files().items()}


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS), json_values), st.booleans())
@example(
    {
        "schedule": {"kind": "linear", "timesteps": 10},
        "image_size": 32,
        "image_channels": 1,
        "data_range": [0, 10**400],
    },
    True,
)
def test_metadata_parser_random_values(values, valid_format):
    props = {PREFIX + key: json.dumps(value) for key, value in values.items()}
    if valid_format:
        props[PREFIX + "format"], props[PREFIX + "format_version"] = '"ddpm-mnist-onnx"', "1"
    try:
        info = ModelInfo.from_metadata(props)
    except DDPMError:
        return
    assert info.problems() == []


@FEWER
@given(
    st.dictionaries(st.sampled_from(LATENT_KEYS), json_values), st.dictionaries(st.sampled_from(FIELDS), json_values)
)
@example({"scale_factor": 10**400}, {})
def test_latent_unet_metadata_with_random_values(latent_metadata, latent_values, values):
    """A real latent U-Net's metadata with values of its latent object, and of its other fields, replaced."""
    props = dict(latent_metadata["latent"])
    props[PREFIX + "latent"] = json.dumps({**json.loads(props[PREFIX + "latent"]), **latent_values})
    props.update({PREFIX + key: json.dumps(value) for key, value in values.items()})
    try:
        info = ModelInfo.from_metadata(props)
    except DDPMError:
        return
    assert info.problems() == []


@FEWER
@given(st.dictionaries(st.sampled_from(DECODER_FIELDS), json_values))
@example({"scale_factor": 10**400})
@example({"data_range": [10**400, 0]})
def test_decoder_metadata_with_random_values(latent_metadata, values):
    """A real decoder's metadata with some of its values replaced."""
    props = {**latent_metadata["latent decoder"], **{PREFIX + key: json.dumps(value) for key, value in values.items()}}
    try:
        info = DecoderInfo.from_metadata(props)
    except DDPMError:
        return
    assert info.problems() == []


@pytest.mark.parametrize("reader", [ModelInfo, DecoderInfo])
@FAST
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=6))
def test_metadata_parser_random_text(reader, props):
    with pytest.raises(DDPMError):
        reader.from_metadata(props)


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


@pytest.fixture(scope="module", params=["latent", "latent decoder"])
def latent_file(request) -> tuple[bytes, type]:
    """The bytes of one of the embedded latent model's files, and the metadata reader that belongs to them."""
    return embedded_latent_files()[
        request.param
    ].read_bytes(), DecoderInfo if request.param == "latent decoder" else ModelInfo


FLIPS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8)


def corrupted(model_bytes: bytes, flips, near_ends: bool) -> bytes:
    """``model_bytes`` with a few bytes overwritten, often near the ends (graph structure, metadata)."""
    data = bytearray(model_bytes)
    size = len(data)
    for fraction, value in flips:
        if near_ends:  # first 64 kB or last 16 kB, where the graph's small fields and the metadata live
            position = int(fraction * 65536) if fraction < 0.5 else size - 1 - int((fraction - 0.5) * 32768)
        else:
            position = int(fraction * size)
        data[position] = value
    return bytes(data)


@FAST
@given(FLIPS, st.booleans())
def test_onnx_outline_corrupted_model(model_bytes, flips, near_ends):
    """The embedded model with a few bytes overwritten."""
    try:
        outline = read_outline(corrupted(model_bytes, flips, near_ends))
    except DDPMError:
        return
    assert outline.has_graph


@FEWER
@given(FLIPS, st.booleans())
def test_corrupted_latent_files(latent_file, flips, near_ends):
    """What still reads as ONNX has its metadata read as its kind of file (latent U-Net or decoder) is."""
    model_bytes, reader = latent_file
    try:
        outline = read_outline(corrupted(model_bytes, flips, near_ends))
    except DDPMError:
        return
    assert outline.has_graph
    try:
        reader.from_metadata(outline.metadata)
    except DDPMError:
        pass
