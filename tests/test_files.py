"""Writing files (core/files.py): an atomic write to a link replaces the file it points to."""


def test_a_link_to_a_file_is_written_through(tmp_path):
    from ddpm.core.files import atomic_write

    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    with atomic_write(link) as handle:
        handle.write(b"new")
    assert link.is_symlink() and real.read_text() == "new"
