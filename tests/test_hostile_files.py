"""Hostile data files (corrupt gzip, gzip bombs, headers claiming huge shapes, npz bombs) end in the
project's one-line error, and nothing is allocated for what a file merely claims."""

import gzip
import io
import os
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR, assert_one_line_error

from ddpm.core.errors import DDPMError
from ddpm.core.mnist import MAX_IDX_BYTES, load_mnist, read_idx
from ddpm.runtime.eval_cli import main as eval_main
from ddpm.runtime.samples_file import MAX_NPZ_MEMBER_BYTES
from tests_support import copy_latent

TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_header(dims) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def corrupt_deflate(raw: bytes) -> bytes:
    """``raw`` gzipped, with the deflate block halfway through given the reserved block type 11:
    zlib stops there with zlib.error ("invalid block type"), which is no OSError."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip wrapper
    packed = bytearray(packer.compress(raw[: len(raw) // 2]) + packer.flush(zlib.Z_FULL_FLUSH))
    block = len(packed)  # a full flush ends on a byte boundary, so the next block's header starts here
    packed += packer.compress(raw[len(raw) // 2 :]) + packer.flush()
    packed[block] = (packed[block] & ~0b111) | 0b110  # BFINAL 0, BTYPE 11
    return bytes(packed)


def mnist_copy(folder: Path, images: bytes | None = None) -> Path:
    """The MNIST test slice copied to ``folder``, with the images file replaced by ``images`` if given."""
    folder.mkdir(exist_ok=True)
    for name in TEST_FILES:
        (folder / f"{name}.gz").write_bytes((DATA_DIR / f"{name}.gz").read_bytes())
    if images is not None:
        (folder / f"{TEST_FILES[0]}.gz").write_bytes(images)
    return folder


@pytest.fixture(scope="module")
def corrupt_images() -> bytes:
    corrupt = corrupt_deflate(gzip.decompress((DATA_DIR / f"{TEST_FILES[0]}.gz").read_bytes()))
    with pytest.raises(zlib.error):  # the case this file is about, not a CRC error (an OSError)
        gzip.decompress(corrupt)
    return corrupt


def test_corrupt_deflate_stream_is_a_ddpm_error(tmp_path, corrupt_images):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(corrupt_images)
    with pytest.raises(DDPMError, match=r"t10k-images-idx3-ubyte\.gz: cannot read .*corrupt gzip"):
        read_idx(path, ndim=3)
    with pytest.raises(DDPMError, match="cannot read"):
        load_mnist(mnist_copy(tmp_path / "data", corrupt_images), "test")


def test_corrupt_deflate_stream_is_one_line_in_ddpm_eval(invoke, tmp_path, corrupt_images):
    data = mnist_copy(tmp_path / "data", corrupt_images)
    result = invoke(eval_main, "--npz", tmp_path / "never-read.npz", "--data-dir", data)
    assert_one_line_error(result, "t10k-images-idx3-ubyte.gz", "cannot read")


def gzip_bomb(path: Path, dims, inflated: int) -> None:
    """A gzip file of the IDX header for ``dims`` followed by ``inflated`` zero bytes, written as
    repeated gzip members (valid gzip) so that building it stays small and fast."""
    chunk = 16 << 20
    zeros = gzip.compress(bytes(chunk), compresslevel=9, mtime=0)  # 16 MiB in about 16 KB
    with path.open("wb") as out:
        out.write(gzip.compress(idx_header(dims), mtime=0))
        for _ in range(-(-inflated // chunk)):
            out.write(zeros)


# The read runs in a child whose address space is capped at what it already uses plus 512 MiB: a
# reader that inflates the whole file (or allocates what the header claims) dies of MemoryError.
CAPPED_READ = textwrap.dedent("""
    import re, resource, sys
    from ddpm.core.errors import DDPMError
    from ddpm.core.mnist import read_idx
    status = open("/proc/self/status").read()
    in_use = int(re.search(r"VmSize:\\s+(\\d+) kB", status).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (in_use + (512 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        read_idx(sys.argv[1], ndim=3)
    except DDPMError as exc:
        print("DDPMError:", exc)
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to measure the address space")
@pytest.mark.parametrize(
    "dims, inflated, fragment",
    [
        ((1000, 28, 28), 2 << 30, "wrong size"),  # a plausible header, then 2 GiB of zeros
        ((20000, 256, 256), 20000 * 256 * 256, "exceeds"),  # a header claiming 1.3 GB, and as much data
    ],
    ids=["trailing-zeros", "huge-shape"],
)
def test_gzip_bomb_is_refused_within_bounded_memory(tmp_path, dims, inflated, fragment):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    gzip_bomb(path, dims, inflated)
    assert path.stat().st_size < 3 << 20
    child = subprocess.run([sys.executable, "-c", CAPPED_READ, str(path)], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("DDPMError:") and fragment in child.stdout, child.stdout + child.stderr
    assert str(dims) in child.stdout


@pytest.mark.parametrize("dims", [(2**32 - 1,) * 3, (2**31, 2**31, 4)], ids=["max-uint32", "wraps-to-zero"])
def test_dims_beyond_int64_are_refused(invoke, tmp_path, dims):
    """(2**31, 2**31, 4) holds 2**64 bytes: an int64 product wraps to 0, matching a header-only file."""
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_header(dims))
    with pytest.raises(DDPMError, match=rf"declares shape \({dims[0]}, .*exceeds the {MAX_IDX_BYTES}-byte limit"):
        read_idx(path, ndim=3)
    data = mnist_copy(tmp_path / "data")
    (data / f"{TEST_FILES[0]}.gz").unlink()
    path.rename(data / TEST_FILES[0])
    assert_one_line_error(invoke(eval_main, "--npz", tmp_path / "never-read.npz", "--data-dir", data), "exceeds")


def npz_member(archive: zipfile.ZipFile, name: str, shape, data_bytes: int) -> None:
    """A uint8 .npy member declaring ``shape`` and holding ``data_bytes`` zero bytes, streamed in."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with archive.open(name, "w", force_zip64=True) as member:
        member.write(header.getvalue())
        for start in range(0, data_bytes, 1 << 20):
            member.write(bytes(min(1 << 20, data_bytes - start)))


def test_npz_with_a_giant_declared_shape(invoke, tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        npz_member(archive, "images.npy", (10**7, 10**4, 10**4), 0)  # claims 10**15 bytes, holds none
    result = invoke(eval_main, "--npz", path, "--data-dir", DATA_DIR)
    assert_one_line_error(result, str(path), "images.npy", "[10000000, 10000, 10000]", "exceeds")


def test_npz_member_over_the_size_cap(invoke, tmp_path):
    path = tmp_path / "bomb.npz"
    count = MAX_NPZ_MEMBER_BYTES // (256 * 256) + 1  # one image more than the cap holds
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        npz_member(archive, "images.npy", (count, 256, 256), count * 256 * 256)
    assert path.stat().st_size < 1 << 20  # a small file that would inflate past the cap
    result = invoke(eval_main, "--npz", path, "--data-dir", DATA_DIR)
    assert_one_line_error(result, str(path), "images.npy", "exceeds")


def test_npz_header_that_disagrees_with_its_member(invoke, tmp_path):
    """A header claiming more than the member holds is refused by name, before NumPy allocates the claim."""
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        npz_member(archive, "images.npy", (4000, 32, 32), 100)
    result = invoke(eval_main, "--npz", path, "--data-dir", DATA_DIR)
    assert_one_line_error(result, str(path), "images.npy", "[4000, 32, 32]", "holds 100 bytes")


# Links and special files given where a file is read: each refused in one line with its true reason.


def special_file(tmp_path: Path, kind: str) -> Path:
    if kind == "loop":
        (tmp_path / "a").symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(tmp_path / "a")
        return tmp_path / "a"
    if kind == "dangling link":
        (tmp_path / "gone").symlink_to(tmp_path / "nothing-here")
        return tmp_path / "gone"
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        return tmp_path / "fifo"
    return Path({"/dev/zero": "/dev/zero", "/proc": "/proc/self/status"}[kind])


SPECIAL = {
    "loop": "is a loop of symbolic links",
    "dangling link": "is a link to nothing",
    "fifo": "is a FIFO, not a file",
    "/dev/zero": "is a character device, not a file",
    "/proc": "is a kernel file of /proc or /sys",
}


def special_decoder(unet: Path, kind: str) -> Path:
    """A latent U-Net's decoder (the file its metadata names, beside it) made a special file of ``kind``:
    a FIFO itself (opened for reading, it would block the command forever), the others as a link to one."""
    decoder = unet.with_name("unet.decoder.onnx")
    decoder.unlink()
    if kind == "fifo":
        os.mkfifo(decoder)
    else:
        decoder.symlink_to(special_file(unet.parent, kind))
    return decoder


@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize(
    "command",
    [
        "ddpm-run --onnx",
        "ddpm-eval --npz",
        "ddpm-export --ckpt",
        "ddpm-train --resume",
        "ddpm-run --onnx (its decoder)",
    ],
)
def test_links_and_special_files_get_their_true_reason(invoke, request, tmp_path, kind, command):
    from ddpm.export.cli import main as export_main
    from ddpm.runtime.cli import main as run_main
    from ddpm.train.cli import main as train_main

    if command == "ddpm-run --onnx (its decoder)":
        unet = copy_latent(request.getfixturevalue("latent_export"), tmp_path / "model")
        decoder = special_decoder(unet, kind)
        result = invoke(run_main, "--onnx", unet, "--png", tmp_path / "o.png")
        assert_one_line_error(result, f"the decoder of unet.onnx, {decoder}, {SPECIAL[kind]}")
        assert not (tmp_path / "o.png").exists()
        return
    path = special_file(tmp_path, kind)
    args = {
        "ddpm-run --onnx": (run_main, "--onnx", path, "--png", tmp_path / "o.png"),
        "ddpm-eval --npz": (eval_main, "--npz", path, "--data-dir", DATA_DIR),
        "ddpm-export --ckpt": (export_main, "--ckpt", path, "--out-dir", tmp_path / "out"),
        "ddpm-train --resume": (
            train_main,
            "--resume",
            path,
            "--data-dir",
            DATA_DIR,
            "--out",
            tmp_path / "run",
            "--preset",
            "tiny",
            "--max-steps",
            1,
            "--no-progress",
        ),
    }[command]
    assert_one_line_error(invoke(*args), SPECIAL[kind])


@pytest.mark.parametrize("damage", [b"", b"\x08\x01" + b"junk" * 100, "foreign"])
def test_a_corrupt_judge_is_one_line(invoke, package_copy, tmp_path, damage):
    judge = package_copy / "judge.onnx"
    judge.write_bytes((package_copy / "default.onnx").read_bytes() if damage == "foreign" else damage)
    result = invoke(eval_main, "-n", 2, "--steps", 2, "--data-dir", DATA_DIR)
    assert_one_line_error(result, "the judge model", "reinstall the package")


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"labels": "7" * 4}, "labels are not a list of digits"),
        ({"labels": [[1], [2], [3], [4]]}, "labels are not a list of digits"),
        ({"labels": [1, 2, 3, 12]}, "labels are not a list of digits"),
        ({"labels": [1, 2]}, "list 2 labels for 4 images"),
        ({"labels_drawn": "no"}, "labels_drawn is 'no', not bool"),
        ({"transform": 3}, "transform is 3, not str"),
        ({"transform": "warp"}, "transform is 'warp', not pad or resize"),
    ],
)
def test_npz_settings_of_the_wrong_type_are_one_line(invoke, tmp_path, settings, fragment):
    import json

    path = tmp_path / "s.npz"
    np.savez(path, images=np.zeros((4, 32, 32), np.uint8), settings=np.array(json.dumps(settings)))
    assert_one_line_error(invoke(eval_main, "--npz", path, "--data-dir", DATA_DIR), fragment)
