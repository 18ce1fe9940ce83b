"""The run's settings record (core/record.py): the files it writes hold the JSON earlier versions wrote."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from ddpm.core.errors import DDPMError
from ddpm.core.outputs import npz_bytes, png_bytes
from ddpm.core.record import RunSettings
from ddpm.runtime.pipeline import DDPM, class_prior_labels
from ddpm.runtime.samples_file import SETTINGS_KEPT, read_samples


def old_settings(ddpm: DDPM, n, plan, seed, batch, engine, labels, labels_drawn) -> dict:
    """The settings dict written out by hand: what the record must hold."""
    return {
        "seed": seed,
        "num_samples": n,
        **{"sampler": plan.sampler, "steps": plan.steps, **plan.options},
        "timesteps": ddpm.timesteps,
        **(
            {"labels": labels.tolist(), "labels_drawn": labels_drawn, "guidance": plan.guidance}
            if labels is not None
            else {}
        ),
        "batch_size": batch,
        "engine": engine,
        "variance": ddpm.info.variance,
        "noise_at_last_step": ddpm.info.noise_at_last_step,
        "provider": ddpm.provider,
        "model": ddpm.session.path.name,
        "model_sha256": ddpm.session.file_sha256,
        "checkpoint_sha256": ddpm.info.source.get("sha256", ""),
        "transform": ddpm.info.source.get("transform", "pad"),
    }


@pytest.fixture(scope="module")
def ddpm() -> DDPM:
    return DDPM.load(provider="cpu")  # the embedded model: class-conditional, so both runs record labels


@pytest.mark.parametrize("case", ["ddim", "guided"])
def test_the_files_hold_the_json_earlier_versions_wrote(ddpm, case, tmp_path):
    n, seed = 3, 11
    if case == "ddim":  # no digits requested: labels drawn from the class prior, no guidance
        plan = ddpm.plan(sampler="ddim", steps=2, eta=0.5, spacing="quadratic")
        labels, drawn = class_prior_labels(n, ddpm.info.num_classes, seed), True
    else:  # requested digits, guided, on the default digit sampler (its own spacing option)
        plan = ddpm.plan(steps=2, digits=[4, 9], guidance=1.5)
        labels, drawn = plan.labels(n), False
    run = ddpm.generate(n, plan, seed=seed, batch_size=2)
    expected = json.dumps(old_settings(ddpm, n, plan, seed, 2, "plain", labels, drawn), sort_keys=True)

    assert isinstance(run.settings, RunSettings)
    assert json.dumps(run.settings.to_dict(), sort_keys=True) == expected
    archive = np.load(io.BytesIO(npz_bytes(run.images, run.settings)))
    assert str(archive["settings"]) == expected and int(archive["seed"]) == seed
    text = Image.open(io.BytesIO(png_bytes(run.images, settings=run.settings))).text
    assert text["ddpm.settings"] == expected and text["ddpm.seed"] == str(seed)

    # ddpm-eval reads the archive back as it read those of earlier versions.
    path = tmp_path / "run.npz"
    path.write_bytes(npz_bytes(run.images, run.settings))
    images, settings, source = read_samples(path, 100)
    np.testing.assert_array_equal(images, run.images)
    assert (
        settings == json.loads(expected) and settings["labels"] == labels.tolist() and settings["labels_drawn"] is drawn
    )
    assert source == {
        "npz": str(path),
        **{k: json.loads(expected)[k] for k in SETTINGS_KEPT if k in json.loads(expected)},
    }


def test_the_record_reads_by_attribute(ddpm):
    run = ddpm.generate(2, ddpm.plan(sampler="ddim", steps=2, eta=0.25), seed=5, batch_size=2)
    record = run.settings
    assert (record.seed, record.num_samples, record.sampler, record.steps, record.batch_size) == (5, 2, "ddim", 2, 2)
    assert record.options == {"eta": 0.25, "spacing": "uniform"} and record.guidance == 0.0 and record.labels_drawn
    assert record.labels == tuple(class_prior_labels(2, ddpm.info.num_classes, 5).tolist())


FIELDS = dict(
    seed=1,
    num_samples=2,
    sampler="ancestral",
    steps=4,
    timesteps=4,
    batch_size=2,
    engine="plain",
    variance="beta",
    noise_at_last_step=False,
    provider="CPUExecutionProvider",
    model="m.onnx",
    model_sha256="",
    checkpoint_sha256="",
    transform="pad",
)


def test_an_unconditional_record_writes_no_label_keys():
    recorded = RunSettings(**FIELDS).to_dict()
    assert not {"labels", "labels_drawn", "guidance"} & set(recorded)
    assert recorded == FIELDS  # no options: the ancestral loop has none


def test_the_record_keeps_its_own_copies():
    options, labels = {"eta": 0.0}, np.array([3, 4])
    record = RunSettings(**FIELDS, options=options, labels=labels, guidance=1.0)
    options["eta"], labels[0] = 1.0, 7
    assert record.options == {"eta": 0.0} and record.labels == (3, 4)
    assert json.dumps(record.to_dict())  # numpy labels became plain ints
    with pytest.raises(AttributeError):
        record.steps = 5


@pytest.mark.parametrize("change", [{"guidance": 1.0}, {"labels": [1, 2]}, {"labels_drawn": True}])
def test_labels_and_guidance_are_recorded_together(change):
    with pytest.raises(DDPMError, match="labels and guidance are recorded together"):
        RunSettings(**FIELDS, **change)


def test_the_record_names_the_model_file_and_its_own_hash(ddpm):
    import hashlib

    settings = ddpm.generate(2, ddpm.plan(sampler="ddim", steps=2), seed=0).settings.to_dict()
    assert settings["model"] == "default.onnx"  # the name, not the site-packages path
    assert settings["model_sha256"] == hashlib.sha256(ddpm.session.path.read_bytes()).hexdigest()
    assert settings["checkpoint_sha256"] == ddpm.info.source["sha256"] != settings["model_sha256"]
