"""Positional encodings of non-negative integers in arbitrary alphabets (base58, base62, base64)."""

from __future__ import annotations


class BaseX:
    r"""
    Encode non-negative integers as strings over an alphabet, and back.

    Args:
        alphabet: Symbols in order of value; its length is the base. Defaults to the class's `alphabet`.

    Raises:
        ValueError: If the alphabet has fewer than two symbols or repeats one.

    Examples:
        >>> binary = BaseX("01")
        >>> binary.encode(6)
        '110'
        >>> binary.decode("110")
        6
    """

    alphabet: str = ""

    def __init__(self, alphabet: str | None = None) -> None:
        if alphabet is not None:
            self.alphabet = alphabet
        if len(self.alphabet) < 2 or len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError(f"alphabet must hold at least two distinct symbols, but got {self.alphabet!r}")
        self.base = len(self.alphabet)
        self._values = {symbol: value for value, symbol in enumerate(self.alphabet)}

    def encode(self, number: int) -> str:
        r"""
        Encode a non-negative integer.

        Args:
            number: Integer to encode.

        Returns:
            The digits of `number` in this base, most significant first.

        Raises:
            ValueError: If `number` is negative.
        """
        if number < 0:
            raise ValueError(f"only non-negative integers can be encoded, but got {number}")
        digits = []
        while True:
            number, remainder = divmod(number, self.base)
            digits.append(self.alphabet[remainder])
            if number == 0:
                return "".join(reversed(digits))

    def decode(self, string: str) -> int:
        r"""
        Decode a string produced by [`encode`][danling.utils.basex.BaseX.encode].

        Args:
            string: Digits in this base.

        Returns:
            The integer value.

        Raises:
            ValueError: If `string` contains a symbol outside the alphabet.
        """
        number = 0
        for symbol in string:
            if symbol not in self._values:
                raise ValueError(f"symbol {symbol!r} is not in the alphabet {self.alphabet!r}")
            number = number * self.base + self._values[symbol]
        return number


class Base58(BaseX):
    r"""
    Bitcoin's base58 alphabet (no `0`, `O`, `I`, `l`).

    Examples:
        >>> Base58().encode(57)
        'z'
    """

    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class Base62(BaseX):
    r"""
    Digits, then upper-case, then lower-case letters.

    Examples:
        >>> Base62().encode(61)
        'z'
    """

    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class Base64(BaseX):
    r"""
    Base62 followed by `+` and `/` (a positional number system, not RFC 4648 byte encoding).

    Examples:
        >>> Base64().encode(63)
        '/'
    """

    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/"


base58 = Base58()
base62 = Base62()
base64 = Base64()
