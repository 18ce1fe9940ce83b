"""Export and verification as one library call (export/pipeline.py): staged with the caller's files,
nothing written when verification fails."""

import pytest

from tests_support import session

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def test_export_and_verify_stages_with_the_callers_files_and_writes_nothing_on_failure(tiny_export, tmp_path):
    from ddpm.core.errors import DDPMError
    from ddpm.core.files import StagedFiles
    from ddpm.core.variant import Variant
    from ddpm.export.load import load_for_export
    from ddpm.export.pipeline import ExportOutputs, Tolerances, export_and_verify

    source = load_for_export(tiny_export / "model.pt")
    target = tmp_path / "m.onnx"
    with pytest.raises(DDPMError, match="verification failed.*m.onnx.*nothing written"):
        export_and_verify(source, ExportOutputs({Variant(): target}), tolerances=Tolerances(atol=1e-30))
    assert list(tmp_path.iterdir()) == []
    with StagedFiles() as staged:
        report = export_and_verify(source, ExportOutputs({Variant(): target}), staged=staged)
        assert not target.exists() and report.temporary[target].is_file()  # the caller's commit writes it
        staged.commit()
    assert session(target).get_inputs()[0].name == "x" and report.differences["m.onnx"] < 1e-4
