"""A checkpoint path that is a directory is a clear error, not a silent no-op."""

from __future__ import annotations

import pytest


def test_a_checkpoint_path_that_is_a_directory_is_a_clear_error(make_runner, tmp_path):
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}.*directory.*latest.pth"):
        make_runner(checkpoint=str(tmp_path))
    runner = make_runner()
    with pytest.raises(ValueError, match="directory"):
        runner.load_checkpoint(str(tmp_path))
