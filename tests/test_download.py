"""MNIST by --download (core/download.py): the standard library against a real HTTP server on
loopback that serves the test slice; checked by content checksum, written only when whole, and
nothing left behind when it fails."""

import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import stat
import threading
from pathlib import Path

import pytest
from conftest import DATA_DIR, assert_one_line_error

from ddpm.core import download
from ddpm.core.files import current_umask
from ddpm.runtime.eval_cli import main as eval_main
from ddpm.train.cli import main as train_main
from tests_support import assert_usage_error

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def content_sha256(path: Path) -> str:
    return hashlib.sha256(gzip.open(path).read()).hexdigest()


@pytest.fixture
def slice_checksums(monkeypatch):
    """The checksums of the test slice in tests/data/mnist stand in for full MNIST's."""
    monkeypatch.setattr(
        download,
        "CONTENT_SHA256",
        {**download.CONTENT_SHA256, **{name: content_sha256(DATA_DIR / f"{name}.gz") for name in TEST_FILES}},
    )


class Mirror:
    """A folder served over HTTP on 127.0.0.1, counting the requests for each path."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.requests = folder, []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                mirror.requests.append(self.path)

        (folder / "mnist").mkdir(parents=True)
        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
        )
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mnist/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def put(self, name: str, data: bytes) -> None:
        (self.folder / "mnist" / f"{name}.gz").write_bytes(data)


@pytest.fixture
def mirror(tmp_path):
    served = Mirror(tmp_path / "www")
    for name in TEST_FILES:
        served.put(name, (DATA_DIR / f"{name}.gz").read_bytes())
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture
def dead_url():
    """A loopback URL where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


EVAL_ARGS = ("-n", 4, "--sampler", "ddim", "--steps", 2, "-q")


def test_ddpm_eval_downloads_the_test_files_and_tries_the_next_mirror(
    invoke, slice_checksums, mirror, dead_url, tmp_path
):
    data = tmp_path / "data" / "mnist"
    result = invoke(
        eval_main, *EVAL_ARGS[:-1], "--data-dir", data, "--download", "--mirror", dead_url, "--mirror", mirror.url
    )
    assert result.code == 0, result.err
    for name in TEST_FILES:
        written = data / f"{name}.gz"
        assert written.read_bytes() == (DATA_DIR / f"{name}.gz").read_bytes()
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~current_umask()  # not mkstemp's 0600
        assert f"downloaded {mirror.url}{name}.gz" in result.err
    assert sorted(os.listdir(data)) == [f"{name}.gz" for name in sorted(TEST_FILES)]  # no temporary left
    assert "Fréchet distance" in result.out
    mirror.requests.clear()
    assert invoke(eval_main, *EVAL_ARGS, "--data-dir", data, "--download", "--mirror", mirror.url).code == 0
    assert mirror.requests == []  # present files are not fetched again


def test_offline_is_one_line_and_leaves_no_folder(invoke, dead_url, tmp_path):
    data = tmp_path / "new" / "data" / "mnist"
    result = invoke(eval_main, *EVAL_ARGS, "--data-dir", data, "--download", "--mirror", dead_url)
    assert_one_line_error(result, "cannot download t10k-images-idx3-ubyte.gz", dead_url)
    assert not (tmp_path / "new").exists()


def test_ddpm_train_offline_leaves_neither_the_data_folder_nor_the_run_folder(invoke, dead_url, tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, dead_url)
    monkeypatch.chdir(tmp_path)
    result = invoke(train_main, "--preset", "tiny", "--download", "--max-steps", 1)
    assert_one_line_error(result, "cannot download train-images-idx3-ubyte.gz", dead_url)
    assert os.listdir(tmp_path) == []  # neither data/mnist nor runs/tiny


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda data: data[: len(data) // 2], "not readable gzip data"),
        (lambda data: gzip.compress(gzip.decompress(data)[:-1] + b"\x01"), "does not match MNIST's checksum"),
    ],
)
def test_a_damaged_file_is_refused_and_nothing_is_left(invoke, slice_checksums, mirror, tmp_path, damage, reason):
    name = TEST_FILES[0]
    mirror.put(name, damage((DATA_DIR / f"{name}.gz").read_bytes()))
    data = tmp_path / "mnist"
    result = invoke(eval_main, *EVAL_ARGS, "--data-dir", data, "--download", "--mirror", mirror.url)
    assert_one_line_error(result, f"cannot download {name}.gz", reason)
    assert not data.exists()


def test_a_file_missing_on_the_mirror_is_named_and_the_verified_ones_stay(invoke, slice_checksums, mirror, tmp_path):
    (mirror.folder / "mnist" / f"{TEST_FILES[1]}.gz").unlink()
    data = tmp_path / "mnist"
    result = invoke(eval_main, *EVAL_ARGS, "--data-dir", data, "--download", "--mirror", mirror.url)
    assert_one_line_error(result, f"cannot download {TEST_FILES[1]}.gz", "HTTP 404")
    assert os.listdir(data) == [f"{TEST_FILES[0]}.gz"]  # checked whole, so a retry fetches only the rest


def test_an_oversized_answer_is_cut_off(invoke, slice_checksums, mirror, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 1000)
    data = tmp_path / "mnist"
    result = invoke(eval_main, *EVAL_ARGS, "--data-dir", data, "--download", "--mirror", mirror.url)
    assert_one_line_error(result, "cannot download t10k-images-idx3-ubyte.gz", "larger than")
    assert not data.exists()


def test_without_download_a_missing_folder_names_the_ways_to_give_it(invoke, tmp_path):
    result = invoke(eval_main, *EVAL_ARGS, "--data-dir", tmp_path / "nowhere")
    assert_one_line_error(result, "--data-dir", "does not exist", "DDPM_DATA_DIR", "--download")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(
        invoke(eval_main, *EVAL_ARGS, "--data-dir", tmp_path / "empty"),
        "lacks the MNIST test files t10k-images-idx3-ubyte[.gz]",
    )


def test_a_mirror_that_is_no_url_is_a_usage_error(invoke, tmp_path):
    assert_usage_error(
        invoke(eval_main, *EVAL_ARGS, "--download", "--mirror", "ftp://example.org/mnist"), "'ftp://example.org/mnist'"
    )


def test_an_output_may_not_take_the_place_of_a_file_the_download_writes(invoke, tmp_path):
    data = tmp_path / "mnist"
    result = invoke(
        eval_main, *EVAL_ARGS, "--data-dir", data, "--download", "--json", data / "t10k-images-idx3-ubyte.gz"
    )
    assert_one_line_error(result, "--json", "t10k-images-idx3-ubyte.gz")


def test_a_file_url_mirror_works_offline(invoke, slice_checksums, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in TEST_FILES:
        shutil.copy(DATA_DIR / f"{name}.gz", folder)
    result = invoke(eval_main, *EVAL_ARGS, "--data-dir", tmp_path / "mnist", "--download", "--mirror", folder.as_uri())
    assert result.code == 0, result.err


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="needs the full MNIST files beside the checkout")
def test_the_checksums_are_those_of_full_mnist():
    for name, expected in download.CONTENT_SHA256.items():
        assert content_sha256(SHARED_MNIST / f"{name}.gz") == expected, name


def test_files_whose_content_is_not_mnists_are_named(tmp_path):
    assert download.unlike_mnist(DATA_DIR, "test") == [
        f"{name}.gz" for name in TEST_FILES
    ]  # a slice is not the test set
    assert download.unlike_mnist(tmp_path, "test") == []  # missing files are require_mnist's to report


def test_files_with_mnists_content_pass_gzipped_or_not(slice_checksums, tmp_path):
    assert download.unlike_mnist(DATA_DIR, "test") == []
    for name in TEST_FILES:
        (tmp_path / name).write_bytes(gzip.decompress((DATA_DIR / f"{name}.gz").read_bytes()))
    assert download.unlike_mnist(tmp_path, "test") == []
    labels = tmp_path / TEST_FILES[1]
    labels.write_bytes(labels.read_bytes()[:-1] + b"\x01")  # one label changed
    assert download.unlike_mnist(tmp_path, "test") == [TEST_FILES[1]]


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="needs the full MNIST files beside the checkout")
def test_full_mnist_is_recognised():
    assert download.unlike_mnist(SHARED_MNIST, "test") == []
