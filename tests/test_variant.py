"""core.variant: the one rule that names an export's file, shared by ddpm-export, the runtime and the benchmarks."""

import pytest

from ddpm.core.errors import DDPMError
from ddpm.core.variant import Variant


@pytest.mark.parametrize(
    "variant, name",
    [
        (Variant(), "unet.onnx"),
        (Variant("int8"), "unet.int8.onnx"),
        (Variant("fp16"), "unet.fp16.onnx"),
        (Variant(fixed_batch=3), "unet.b3.onnx"),
        (Variant(fused_step=True), "unet.step.onnx"),
        (Variant("fp16", fused_step=True, fixed_batch=16), "unet.step.fp16.b16.onnx"),
    ],
)
def test_file_names_keep_the_exports_names(variant, name):
    assert variant.file_name() == name


@pytest.mark.parametrize(
    "plain, name",
    [
        ("default.onnx", "default.int8.onnx"),  # the embedded model's int8 copy
        ("model.bin", "model.int8.bin"),  # --onnx PATH: tags go before whatever extension it has
        ("model.v2.onnx", "model.v2.int8.onnx"),
        ("model", "model.int8"),
    ],
)
def test_tags_go_before_the_plain_names_extension(plain, name):
    assert Variant("int8").file_name(plain) == name


def test_the_plain_copy_keeps_its_name_and_the_graph_follows_the_step():
    assert Variant().file_name("m.bin") == "m.bin"
    assert (Variant().graph, Variant(fused_step=True).graph) == ("eps", "fused-step")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"precision": "bf16"}, "precision 'bf16'"),
        ({"fixed_batch": 0}, "fixed batch 0"),
        ({"fixed_batch": True}, "fixed batch True"),
        ({"fixed_batch": 2.0}, "fixed batch 2.0"),
    ],
)
def test_a_variant_that_names_no_file_is_refused(kwargs, fragment):
    with pytest.raises(DDPMError, match=fragment):
        Variant(**kwargs)
