"""Hashing beside the I/O: the parts a block is cut into, and digests equal to `hashlib`'s for every cut."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from danling.runner.checkpointing.streams import EDGE, PART, Digest, HashingReader, HashingWriter, part_bounds

LENGTHS = [1, EDGE - 1, EDGE, EDGE + 1, PART, 2 * PART, 2 * PART + EDGE, 2 * PART + EDGE + 1, 5 * PART + 7]


@pytest.mark.parametrize("length", LENGTHS)
def test_parts_cover_the_block_in_order(length):
    bounds = part_bounds(length)
    assert bounds[0][0] == 0
    assert bounds[-1][1] == length
    assert all(end > start for start, end in bounds)
    assert all(first[1] == second[0] for first, second in zip(bounds, bounds[1:]))
    assert max(end - start for start, end in bounds) <= PART


def test_a_large_block_starts_and_ends_with_short_parts():
    sizes = [end - start for start, end in part_bounds(6 * PART + 5)]
    assert sizes[0] == sizes[-1] == EDGE
    assert PART in sizes


@pytest.mark.parametrize("length", [2 * PART, 3 * PART + 12345])
def test_a_transfer_hashes_every_byte_once_in_order(length):
    data = bytearray(os.urandom(length))
    digest = Digest()
    moved = digest.transfer(memoryview(data), len)
    digest.close()
    assert moved == length
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_state_written_and_read_through_the_hashing_streams_matches_hashlib(tmp_path):
    state = {"big": torch.randn(3 * PART // 4 + 11), "small": torch.arange(5)}
    path = tmp_path / "state.pth"
    with open(path, "wb", buffering=0) as raw, HashingWriter(raw) as writer:
        torch.save(state, writer)
        written = writer.hexdigest()
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    with open(path, "rb", buffering=0) as raw, HashingReader(raw, os.path.getsize(path)) as reader:
        loaded = torch.load(reader, weights_only=True)
        read = reader.hexdigest()
    assert written == read == expected
    assert torch.equal(loaded["big"], state["big"])
    assert torch.equal(loaded["small"], state["small"])
