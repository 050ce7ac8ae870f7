import pytest
import torch

from gmat.ops import AttentionPattern
from gmat.ops.pattern import and_masks, or_masks

GOLDEN = {
    # M=1, chunked C=2, L=5: memory row/column full, chunks {0,1},{2,3},{4}
    (AttentionPattern(1, "chunked", chunk_size=2), 5): [
        "111111",
        "111...",
        "111...",
        "1..11.",
        "1..11.",
        "1....1",
    ],
    # M=0, window w=1, L=5: tridiagonal band
    (AttentionPattern(0, "window", window=1), 5): [
        "11...",
        "111..",
        ".111.",
        "..111",
        "...11",
    ],
    # M=2, window w=0: memory plus the diagonal
    (AttentionPattern(2, "window", window=0), 3): [
        "11111",
        "11111",
        "111..",
        "11.1.",
        "11..1",
    ],
    (AttentionPattern(1, "dense"), 2): ["111", "111", "111"],
}


@pytest.mark.parametrize(("pattern", "seq_len"), list(GOLDEN))
def test_golden_ascii(pattern, seq_len):
    assert pattern.to_ascii(seq_len).splitlines() == GOLDEN[(pattern, seq_len)]


@pytest.mark.parametrize(
    "pattern",
    [
        AttentionPattern(3, "chunked", chunk_size=4),
        AttentionPattern(0, "chunked", chunk_size=1),
        AttentionPattern(2, "window", window=3),
        AttentionPattern(0, "window", window=0),
        AttentionPattern(5, "dense"),
    ],
)
@pytest.mark.parametrize("seq_len", [1, 7, 13])
def test_allowed_pairs_matches_dense(pattern, seq_len):
    assert pattern.allowed_pairs(seq_len) == int(pattern.to_dense(seq_len).sum())


def test_padding_removes_key_columns_only():
    pattern = AttentionPattern(1, "chunked", chunk_size=2)
    mask = torch.tensor([[True, False, True]])
    dense = pattern.to_dense(3, mask)  # (1, 1, 4, 4)
    assert dense.shape == (1, 1, 4, 4)
    assert not dense[0, 0, :, 2].any()  # sequence position 1 is padding: nobody sees it
    assert dense[0, 0, 2, :2].all()  # the padded query row still sees memory and its own chunk


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(num_memory=-1, kind="dense"), "num_memory"),
        (dict(num_memory=1.5, kind="dense"), "num_memory"),
        (dict(num_memory=0, kind="sparse"), "kind"),
        (dict(num_memory=0, kind="chunked"), "chunk_size"),
        (dict(num_memory=0, kind="chunked", chunk_size=0), "chunk_size"),
        (dict(num_memory=0, kind="chunked", chunk_size=-4), "chunk_size"),
        (dict(num_memory=0, kind="window"), "window"),
        (dict(num_memory=0, kind="window", window=-1), "window"),
        (dict(num_memory=0, kind="dense", chunk_size=4), "chunk_size"),
        (dict(num_memory=0, kind="chunked", chunk_size=4, window=2), "window"),
    ],
)
def test_invalid_patterns_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AttentionPattern(**kwargs)


def test_pattern_is_frozen_and_hashable():
    pattern = AttentionPattern(2, "chunked", chunk_size=8)
    assert hash(pattern) == hash(AttentionPattern(2, "chunked", chunk_size=8))
    with pytest.raises(AttributeError):
        pattern.num_memory = 3


def test_mask_combinators():
    i, j = torch.arange(4)[:, None], torch.arange(4)[None, :]
    lower = lambda a, b: a >= b  # noqa: E731
    diag = lambda a, b: a == b  # noqa: E731
    assert torch.equal(or_masks(lower, diag)(i, j), i >= j)
    assert torch.equal(and_masks(lower, diag)(i, j), i == j)


def test_key_valid_puts_real_memory_slots_before_the_mask():
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]])  # ints, as tokenizers return them
    got = AttentionPattern(2, "dense").key_valid(mask)
    assert got.dtype == torch.bool
    assert got.tolist() == [[True, True, True, False, True], [True, True, False, False, False]]
    assert AttentionPattern(0, "dense").key_valid(mask.bool()).tolist() == mask.bool().tolist()
    assert AttentionPattern(2, "dense").key_valid(None) is None


@pytest.mark.parametrize(
    ("pattern", "seq_len", "dense"),
    [
        (AttentionPattern(1, "chunked", chunk_size=4), 5, False),
        (AttentionPattern(1, "chunked", chunk_size=5), 5, True),
        (AttentionPattern(1, "chunked", chunk_size=10**6), 5, True),
        (AttentionPattern(0, "window", window=3), 5, False),
        (AttentionPattern(0, "window", window=4), 5, True),
        (AttentionPattern(0, "window", window=0), 1, True),
        (AttentionPattern(2, "dense"), 3, True),
    ],
)
def test_for_length_is_dense_exactly_when_the_pattern_covers_the_sequence(pattern, seq_len, dense):
    got = pattern.for_length(seq_len)
    assert (got.kind == "dense") == dense
    assert got.num_memory == pattern.num_memory
    assert torch.equal(got.to_dense(seq_len), pattern.to_dense(seq_len))  # the same pairs, always
