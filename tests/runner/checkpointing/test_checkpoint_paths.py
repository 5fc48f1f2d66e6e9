"""A checkpoint path that is a directory is a clear error, not a silent no-op."""

from __future__ import annotations

import os

import pytest


def test_a_checkpoint_path_that_is_a_directory_is_a_clear_error(make_runner, tmp_path):
    # A directory without a checkpoint: the error names it, and no path that does not exist.
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*no checkpoint that verifies") as error:
        make_runner(checkpoint=str(tmp_path))
    assert all(os.path.exists(path) for path in str(error.value).split("'")[1::2])
    runner = make_runner()
    with pytest.raises(FileNotFoundError, match="directory"):
        runner.load_checkpoint(str(tmp_path))
