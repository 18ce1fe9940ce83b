"""Model metadata (core/metadata.py): sizes bounded before anything is allocated, settings that could only end
in NaN refused, and NaN in the stored JSON refused."""

import re

import pytest


def test_metadata_timesteps_are_bounded_before_allocating():
    from ddpm.core.metadata import ModelInfo

    info = ModelInfo(
        schedule={"kind": "linear", "timesteps": 10**8}, image_size=32, image_channels=1, data_range=(-1.0, 1.0)
    )
    problems = info.problems()  # refused by the bound, not after building 10^8 betas
    assert any("timesteps 100000000 is not an integer in 1..100000" in p for p in problems)
    assert any(
        "timesteps True" in p
        for p in ModelInfo(
            schedule={"kind": "linear", "timesteps": True}, image_size=32, image_channels=1, data_range=(-1.0, 1.0)
        ).problems()
    )


@pytest.mark.parametrize(
    "change, fragment",
    [
        (
            {"schedule": {"kind": "linear", "timesteps": 1000, "beta_start": 1e-20, "beta_end": 0.02}},
            "1 - alpha_bar round",
        ),
        ({"data_range": (-1e308, 1e308)}, "within ±1e+06"),
        ({"data_range": (0.0, float("nan"))}, "data_range"),
    ],
)
def test_settings_that_can_only_end_in_nan_are_impossible(change, fragment):
    from ddpm.core.metadata import ModelInfo

    settings = {
        "schedule": {"kind": "linear", "timesteps": 1000},
        "image_size": 32,
        "image_channels": 1,
        "data_range": (-1.0, 1.0),
    }
    assert ModelInfo(**settings).problems() == []
    problems = ModelInfo(**{**settings, **change}).problems()
    assert len(problems) == 1 and fragment in problems[0], problems


def test_metadata_with_nan_is_refused_as_not_json():
    from ddpm.core.errors import DDPMError
    from ddpm.core.metadata import ModelInfo

    props = ModelInfo(
        schedule={"kind": "linear", "timesteps": 1000},
        image_size=32,
        image_channels=1,
        data_range=(-1.0, 1.0),
        source={"step": 3},
    ).to_metadata()
    assert ModelInfo.from_metadata(props).source == {"step": 3}
    props["ddpm.source"] = '{"step": NaN}'  # Python's json reads it; --info would print it, and it is not JSON
    with pytest.raises(DDPMError, match="ddpm.source is not valid JSON"):
        ModelInfo.from_metadata(props)


# Every field's type, checked once where the file is read, and the class count against the graph.


def rewritten(onnx_path, tmp_path, **changes):
    """A copy of the ONNX file ``onnx_path`` with metadata fields (ddpm.NAME) replaced by JSON values."""
    import json

    import onnx

    model = onnx.load(onnx_path)
    for prop in model.metadata_props:
        name = prop.key.removeprefix("ddpm.")
        if name in changes:
            prop.value = json.dumps(changes[name])
    path = tmp_path / "changed.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"source": "a string"}, "source 'a string' is not an object"),
        ({"model_config": [1, 2]}, "model_config [1, 2] is not an object"),
        ({"noise_at_last_step": "no"}, "noise_at_last_step 'no' is not true or false"),
        ({"image_size": True}, "image_size True is not an integer"),
        ({"source": {"sha256": 5}}, "source.sha256 5 is not a string"),
    ],
)
def test_fields_of_the_wrong_type_are_refused_at_load(tiny_export, tmp_path, changes, fragment):
    from ddpm.core.errors import DDPMError
    from ddpm.runtime.session import UNetSession

    with pytest.raises(DDPMError, match=re.escape(fragment)):
        UNetSession(rewritten(tiny_export / "unet.onnx", tmp_path, **changes), provider="cpu")


@pytest.mark.parametrize("classes", [1, 9, True])
def test_a_class_count_that_contradicts_the_graph_is_refused(conditional, tmp_path, classes):
    from ddpm.core.errors import DDPMError
    from ddpm.runtime.session import UNetSession

    with pytest.raises(
        DDPMError,
        match="num_classes True is not an integer"
        if classes is True
        else f"says {classes} classes, but the graph's class embedding .* has 11 rows",
    ):
        UNetSession(rewritten(conditional / "unet.onnx", tmp_path, num_classes=classes), provider="cpu")
    assert UNetSession(conditional / "unet.onnx", provider="cpu").info.num_classes == 10  # the true count passes
