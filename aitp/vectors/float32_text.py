"""Shortest decimal text for float32 values, computed for a whole matrix at once.

The task API takes at most 100 kB per body, so every float32 goes out in its shortest form that
reads back as the same float32 (what `str(numpy.float32(x))` prints). Formatting each value in
Python costs about 0.5 µs; this finds the shortest digit count with a few array passes instead and
returns float64 values whose own shortest repr (what msgspec writes) is that text.

Why it is exact: for d significant digits, `n = rint(x * 10**k)` with `k = d - 1 - exponent` is
the nearest d-digit decimal, and `n / 10**k` is one correctly rounded IEEE division of two exact
numbers (an integer below 2**53 and a power of ten up to 10**22), so it is the float64 nearest
that decimal, and its repr has at most d digits. 9 digits always read back as the float32; a
d-digit decimal that does exists only if a (d+1)-digit one does, so each value stops shortening
at its first failure. Values outside [1e-14, 10) (never in a unit vector) are formatted one by one.
"""

from __future__ import annotations

import numpy as np

_FLOAT32_DIGITS = 9                      # 9 significant digits always round-trip a float32
_LARGEST_EXACT_POWER = 22                # 10**k is exact in float64 up to k = 22
_SMALLEST_FAST_EXPONENT = _FLOAT32_DIGITS - 1 - _LARGEST_EXACT_POWER
_POWERS_FROM = -50                       # covers every float32 exponent, subnormals included
_POWERS_OF_TEN = 10.0 ** np.arange(_POWERS_FROM, 41, dtype=np.float64)


def _power_of_ten(exponent: np.ndarray) -> np.ndarray:
    return _POWERS_OF_TEN[exponent - _POWERS_FROM]


def shortest_float32(values: np.ndarray) -> np.ndarray:
    """float64 values of the same shape, each the shortest decimal that reads back as the float32."""
    x32 = np.asarray(values, dtype=np.float32)
    x = x32.astype(np.float64)
    magnitude = np.abs(x)
    nonzero = magnitude > 0
    exponent = np.floor(np.log10(np.where(nonzero, magnitude, 1.0))).astype(np.int64)
    exponent += magnitude >= _power_of_ten(exponent + 1)     # log10 can land a hair off at powers of 10
    exponent -= nonzero & (magnitude < _power_of_ten(exponent))
    fast = nonzero & (exponent >= _SMALLEST_FAST_EXPONENT) & (exponent <= 0)
    exponent[~fast] = 0

    shortest = x.copy()                  # zeros (and -0.0) are already as short as they get
    shortening = fast
    scale = _power_of_ten(_FLOAT32_DIGITS - 1 - exponent)   # 10**8 .. 10**22, all exact
    rounded = np.empty_like(x)
    for _digits in range(_FLOAT32_DIGITS, 0, -1):
        np.multiply(x, scale, out=rounded)
        np.rint(rounded, out=rounded)
        np.divide(rounded, scale, out=rounded)
        shortening = shortening & (rounded.astype(np.float32) == x32)
        if not shortening.any():
            break
        np.copyto(shortest, rounded, where=shortening)
        scale /= 10.0                    # exact: the quotient is again a power of ten

    slow = np.flatnonzero(nonzero & ~fast)
    if slow.size:
        flat_shortest, flat_x32 = shortest.reshape(-1), x32.reshape(-1)
        for i in slow:
            flat_shortest[i] = float(str(flat_x32[i]))
    return shortest
