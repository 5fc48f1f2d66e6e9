from __future__ import annotations

import pytest

from danling.utils import BaseX, base58, base62, base64

NUMBERS = [0, 1, 57, 58, 61, 62, 63, 64, 12345, 2**64, 2**128 - 1]


@pytest.mark.parametrize("codec", [base58, base62, base64, BaseX("01"), BaseX("abc")], ids=repr)
@pytest.mark.parametrize("number", NUMBERS)
def test_round_trip(codec: BaseX, number: int) -> None:
    encoded = codec.encode(number)
    assert set(encoded) <= set(codec.alphabet)
    assert codec.decode(encoded) == number


@pytest.mark.parametrize(("codec", "base"), [(base58, 58), (base62, 62), (base64, 64)])
def test_bases_and_alphabets(codec: BaseX, base: int) -> None:
    assert codec.base == base
    assert len(set(codec.alphabet)) == base
    assert codec.encode(base - 1) == codec.alphabet[-1]
    assert codec.encode(base) == codec.alphabet[1] + codec.alphabet[0]


def test_base58_leaves_out_ambiguous_symbols() -> None:
    assert not set("0OIl") & set(base58.alphabet)


def test_doc_examples() -> None:
    assert BaseX("01").encode(6) == "110"
    assert BaseX("01").decode("110") == 6
    assert (base58.encode(57), base62.encode(61), base64.encode(63)) == ("z", "z", "/")


@pytest.mark.parametrize(
    ("codec", "string"), [(base58, "0"), (base58, "l"), (base62, "+"), (base64, "-"), (base62, "a b")]
)
def test_invalid_symbol(codec: BaseX, string: str) -> None:
    with pytest.raises(ValueError, match="alphabet"):
        codec.decode(string)


def test_negative_numbers_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        base62.encode(-1)


@pytest.mark.parametrize("alphabet", ["", "a", "aba"])
def test_invalid_alphabets(alphabet: str) -> None:
    with pytest.raises(ValueError, match="alphabet"):
        BaseX(alphabet)
