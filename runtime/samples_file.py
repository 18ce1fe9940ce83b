"""Reading a ``ddpm-run --npz`` archive back: its uint8 images and the settings they were drawn with,
from a file that may be anything, so every claim the archive makes is checked before it is believed.

    from ddpm.runtime.samples_file import load_npz
    images, settings = load_npz(Path("samples.npz"))   # uint8 [N, H, W], the settings ddpm-run stored
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..core.errors import DDPMError, summary
from ..core.files import input_problem

# The most bytes an --npz member may declare: ddpm-eval scores at most 5000 images (half the test
# set), 5 MB of 32x32 uint8; the cap only stops an archive from claiming gigabytes.
MAX_NPZ_MEMBER_BYTES = 64 << 20

# The settings an evaluation report keeps to say where its images came from.
SETTINGS_KEPT = ("seed", "sampler", "steps", "eta", "spacing", "guidance", "model", "model_sha256", "checkpoint_sha256")


def load_npz(path: Path) -> tuple[np.ndarray, dict]:
    """uint8 ``images`` [N, H, W] and the settings of a ddpm-run archive, checked.

    What the archive claims is checked before anything is inflated or allocated: every member's
    declared size against ``MAX_NPZ_MEMBER_BYTES``, and the shape in each array's header against
    the bytes its member holds (NumPy allocates what a header declares before reading the data).
    """
    problem = input_problem(path)
    if problem:
        raise DDPMError(f"--npz {path} {problem}")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for info in members:
                # zipfile inflates a member no further than its declared size, so this bounds the inflating.
                if info.file_size > MAX_NPZ_MEMBER_BYTES:
                    raise DDPMError(
                        f"{path}: member {info.filename} declares {info.file_size} bytes, "
                        f"which exceeds the {MAX_NPZ_MEMBER_BYTES}-byte limit for an archive member"
                    )
            names = {info.filename: info for info in members}
            if "images.npy" not in names:
                found = ", ".join(name.removesuffix(".npy") for name in names)
                raise DDPMError(f"{path} has no 'images' array (found: {found or 'nothing'})")
            images = _read_npy_member(path, archive, names["images.npy"])
            settings = (
                json.loads(str(_read_npy_member(path, archive, names["settings.npy"])))
                if "settings.npy" in names
                else {}
            )
    except DDPMError:
        raise
    # zlib.error: corrupt deflate data; RuntimeError: an encrypted member or an unsupported compression method.
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, zlib.error, RuntimeError) as exc:
        raise DDPMError(f"{path} is not a readable .npz archive ({summary(exc, 120)})") from None
    if images.dtype != np.uint8:
        raise DDPMError(f"{path}: images are {images.dtype}, expected uint8 (as ddpm-run writes them)")
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise DDPMError(f"{path}: images have shape {list(images.shape)}, expected [N, H, W] with H = W")
    if len(images) < 2:
        raise DDPMError(f"{path} holds {len(images)} images; at least 2 are needed")
    return images, settings if isinstance(settings, dict) else {}


def _read_npy_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """The array in one .npy member of an open archive, once its header's shape is found to match
    the bytes the member holds."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:  # 3.0 only serves structured dtypes with non-Latin-1 field names, which ddpm-run never writes
            raise DDPMError(f"{path}: {info.filename} uses .npy format {version[0]}.{version[1]}; expected 1.0 or 2.0")
        if dtype.hasobject:
            raise DDPMError(f"{path}: {info.filename} holds Python objects; only plain arrays are read")
        declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow for any shape
        held = info.file_size - member.tell()  # what follows the header
        if declared > MAX_NPZ_MEMBER_BYTES:
            raise DDPMError(
                f"{path}: {info.filename} declares shape {list(shape)} of {dtype} ({declared} bytes), "
                f"which exceeds the {MAX_NPZ_MEMBER_BYTES}-byte limit"
            )
        if declared != held:
            raise DDPMError(
                f"{path}: {info.filename} declares shape {list(shape)} of {dtype} ({declared} bytes) "
                f"but holds {held} bytes"
            )
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


SETTING_TYPES = {
    "transform": str,
    "labels_drawn": bool,
    "seed": int,
    "sampler": str,
    "steps": int,
    "guidance": (int, float),
}


def check_settings(npz: Path, settings: dict, count: int) -> None:
    """The settings ddpm-eval uses, each of its type: labels a list of ``count`` class indices, the
    transform a known name, flags true or false (never a string such as "no")."""
    for name, kind in SETTING_TYPES.items():
        value = settings.get(name)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise DDPMError(f"{npz}: its settings' {name} is {value!r}, not {getattr(kind, '__name__', 'a number')}")
    if settings.get("transform", "pad") not in ("pad", "resize"):
        raise DDPMError(f"{npz}: its settings' transform is {settings['transform']!r}, not pad or resize")
    labels = settings.get("labels")
    if labels is None:
        return
    if not isinstance(labels, list) or not all(
        isinstance(y, int) and not isinstance(y, bool) and 0 <= y <= 9 for y in labels
    ):
        raise DDPMError(f"{npz}: its settings' labels are not a list of digits 0-9")
    if len(labels) != count:
        raise DDPMError(f"{npz}: its settings list {len(labels)} labels for {count} images")


def read_samples(npz: Path, limit: int) -> tuple[np.ndarray, dict, dict]:
    """Images and settings that ``ddpm-run --npz`` wrote, at most ``limit`` images (ddpm-eval: half the
    test set, as many as the floor can match) with one label each where labels are listed, and the
    report's note of their source."""
    images, settings = load_npz(npz)
    if len(images) > limit:
        raise DDPMError(
            f"{npz} holds {len(images)} images; at most {limit} (half the test set) can be compared with the floor"
        )
    check_settings(npz, settings, len(images))
    return images, settings, {"npz": str(npz), **{k: settings[k] for k in SETTINGS_KEPT if k in settings}}
