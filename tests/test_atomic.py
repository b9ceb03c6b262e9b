"""Atomic writes: a failed write leaves the old file, a new file gets the usual mode."""
import pytest


def test_atomic_writes_leave_the_old_file_and_use_the_usual_mode(tmp_path):
    import os

    from ld3m_fast.atomic import write_atomic
    target = tmp_path / "f.txt"
    write_atomic(target, lambda p: open(p, "w").write("one"))
    assert target.read_text() == "one" and (os.stat(target).st_mode & 0o777) == 0o666 & ~_umask()

    def fails(p):
        open(p, "w").write("half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        write_atomic(target, fails)
    assert target.read_text() == "one" and [f.name for f in tmp_path.iterdir()] == ["f.txt"]



def _umask():
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask

