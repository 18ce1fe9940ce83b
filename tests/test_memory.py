"""The memory a run needs (runtime/memory.py): what is kept grows the estimate, and both pictures of each
frame count."""

import pytest


def test_memory_estimate_grows_with_what_is_kept():
    from ddpm.runtime.memory import memory_needed

    plain = memory_needed(1000, 32, 1, frames=0, scale=0)
    assert plain == 3 * 4 * 1000 * 32 * 32  # x, ε and the next x in float32
    assert memory_needed(2000, 32, 1, 0, 0) == 2 * plain
    assert memory_needed(1000, 32, 1, 40, 3) > 40 * 1000 * 32 * 32 * 9  # every frame as an upscaled grid


def test_memory_check_counts_both_pictures_of_each_frame(monkeypatch):
    """--show both keeps x_t and x̂_0 for every frame: twice the frames of --show xt."""
    from types import SimpleNamespace

    import ddpm.runtime.memory as memory
    from ddpm.core.errors import DDPMError

    info = SimpleNamespace(image_size=32, image_channels=1, output_size=32, output_channels=1)
    one_picture = memory.memory_needed(100, 32, 1, frames=40, scale=3)
    monkeypatch.setattr(memory, "available_memory", lambda: one_picture)
    memory.check_memory(100, info, SimpleNamespace(frames=40, show="xt"), 3)  # fits exactly
    with pytest.raises(DDPMError, match="-n 100 needs about"):
        memory.check_memory(100, info, SimpleNamespace(frames=40, show="both"), 3)
