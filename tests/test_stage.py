"""How the stages split their PATCHes into chunks, one chunk per connection and thread."""

import pytest

from actors.stage import chunk_sizes


@pytest.mark.parametrize("items, pace, sizes", [
    (256, None, [32] * 8),               # pace unknown yet: every thread
    (256, 0.003, [32] * 8),              # 3 ms a PATCH: a chunk of 16 takes the 50 ms
    (256, 0.0006, [86, 85, 85]),         # chunks of at least 83
    (256, 0.0002, [256]),                # a fast API: one chunk, one thread woken
    (15, None, [15]),                    # a batch's results: one chunk
    (40, 0.5, [20, 20]),                 # never fewer than 16 a chunk while pipelining
    (0, None, []),
])
def test_chunks_take_about_50_ms_each_at_the_measured_pace(items, pace, sizes):
    assert chunk_sizes(items, 8, True, pace) == sizes


def test_without_pipelining_a_slow_api_gets_every_thread():
    assert chunk_sizes(20, 8, False, 0.05) == [3, 3, 3, 3, 2, 2, 2, 2]
    assert chunk_sizes(20, 8, False, 0.0001) == [20]


@pytest.mark.parametrize("items", [1, 17, 255, 1000])
@pytest.mark.parametrize("pace", [None, 0.00001, 0.0003, 0.01])
def test_chunks_cover_every_item_once_and_never_outnumber_the_threads(items, pace):
    sizes = chunk_sizes(items, 8, True, pace)
    assert sum(sizes) == items and 1 <= len(sizes) <= 8 and min(sizes) > 0
