import msgspec
import numpy as np
import pytest

from aitp.vectors.float32_text import shortest_float32

pytestmark = pytest.mark.timeout(60)


def significant_digits(text: str) -> int:
    mantissa = text.lstrip("-").split("e")[0].replace(".", "").strip("0")
    return len(mantissa) or 1


def assert_shortest_round_trip(values: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.float32)
    written = msgspec.json.encode(shortest_float32(values).reshape(-1).tolist())
    read_back = np.asarray(msgspec.json.decode(written), dtype=np.float32)
    assert np.array_equal(read_back, values.reshape(-1))
    assert np.array_equal(np.signbit(read_back), np.signbit(values.reshape(-1)))     # -0.0 stays -0.0
    for text, value in zip(written[1:-1].decode().split(","), values.reshape(-1)):
        assert significant_digits(text) == significant_digits(str(value)), (text, str(value))


def test_every_float32_bit_pattern_sampled_reads_back_in_the_fewest_digits():
    bits = np.random.default_rng(7).integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    assert_shortest_round_trip(values[np.isfinite(values)])


def test_unit_vector_components_and_edges_of_the_fast_path():
    rng = np.random.default_rng(8)
    unit = rng.standard_normal((16, 768))
    assert_shortest_round_trip(unit / np.linalg.norm(unit, axis=1, keepdims=True))
    edges = [0.0, -0.0, 1.0, -1.0, 0.1, 1e-45, -1e-38, 1e-14, 9.99999e-15, 1e22, 9.999999e22,
             3.4028235e38, 9.9999999, 999999.94, 123456789.0, 0.30000001, 1e-4, 5e-5]
    assert_shortest_round_trip(np.asarray(edges))
    for scale in range(-45, 39, 3):
        assert_shortest_round_trip(rng.standard_normal(64) * 10.0 ** scale)


def test_keeps_the_shape_it_was_given():
    assert shortest_float32(np.ones((3, 5), dtype=np.float32)).shape == (3, 5)
