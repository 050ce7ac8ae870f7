import numpy as np
import pytest
import torch

from gmat.tasks.synthetic import (
    IGNORE_INDEX,
    TaskSpec,
    chunk_oracle_accuracy,
    chunk_oracle_tagging_f1,
    compute_metrics,
    make_task,
)

ALL_TASKS = ("majority", "majority_tagging", "lookup")


@pytest.mark.parametrize("name", ALL_TASKS)
def test_generation_is_deterministic_by_seed_split_and_index(name):
    task = make_task(TaskSpec(name=name, seq_len=256, seed=3))
    again = make_task(TaskSpec(name=name, seq_len=256, seed=3))
    other_seed = make_task(TaskSpec(name=name, seq_len=256, seed=4))
    a, b = task.batch("train", range(5, 9)), again.batch("train", range(5, 9))
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["input_ids"], other_seed.batch("train", range(5, 9))["input_ids"])
    assert not torch.equal(a["input_ids"], task.batch("eval", range(5, 9))["input_ids"])
    # an example does not depend on which batch it is collated in (sharding across ranks relies on it)
    assert torch.equal(task.batch("train", [7])["input_ids"][0], a["input_ids"][2])


@pytest.mark.parametrize("seq_len,num_symbols,margin", [(2048, 8, 0.5), (512, 4, 0.1), (100, 7, 0.3)])
def test_majority_counts_have_a_unique_winner_by_the_margin(seq_len, num_symbols, margin):
    task = make_task(TaskSpec(name="majority", seq_len=seq_len, num_symbols=num_symbols, margin=margin))
    gap = max(1, round(margin * seq_len / num_symbols))
    for i in range(20):
        ex = task.example("train", i)
        counts = np.bincount(ex["input_ids"] - 1, minlength=num_symbols)
        assert counts.sum() == seq_len and ex["input_ids"].min() >= 1
        order = np.sort(counts)
        assert order[-1] - order[-2] == gap  # unique, exactly `gap` ahead of the runner-up
        assert counts.argmax() == ex["labels"]


def test_majority_tagging_marks_exactly_the_majority_symbol():
    spec = dict(seq_len=300, num_symbols=5, margin=0.4, seed=1)
    seq_task = make_task(TaskSpec(name="majority", **spec))
    tag_task = make_task(TaskSpec(name="majority_tagging", **spec))
    for i in range(5):
        seq, tag = seq_task.example("train", i), tag_task.example("train", i)
        assert np.array_equal(seq["input_ids"], tag["input_ids"])
        assert np.array_equal(tag["labels"], (seq["input_ids"] - 1 == seq["labels"]).astype(np.int64))
    assert tag_task.num_labels == 2 and tag_task.metric_name == "f1"


def test_lookup_queries_ask_for_values_of_pairs_in_the_other_half():
    task = make_task(TaskSpec(name="lookup", seq_len=128, num_pairs=6, num_queries=4, num_keys=16, num_values=8))
    for i in range(10):
        ex = task.example("train", i)
        ids, labels = ex["input_ids"], ex["labels"]
        asked = np.flatnonzero(labels != IGNORE_INDEX)
        assert len(asked) == 4 and (asked >= 64).all()
        pair_pos = np.flatnonzero((ids >= task._pair0) & (ids < task._query0))
        assert len(pair_pos) == 6 and (pair_pos < 64).all()
        value_of = dict(divmod(int(ids[p]) - task._pair0, 8) for p in pair_pos)  # key -> value
        assert len(value_of) == 6  # distinct keys
        for q in asked:
            assert value_of[int(ids[q]) - task._query0] == labels[q]
        assert ids.max() < task.vocab_size and ids.min() >= 1


def test_lookup_with_copies_and_more_queries_than_pairs():
    task = make_task(
        TaskSpec(name="lookup", seq_len=256, num_pairs=4, pair_copies=5, num_queries=32, num_keys=16, num_values=8)
    )
    for i in range(5):
        ex = task.example("test", i)
        ids, labels = ex["input_ids"], ex["labels"]
        pair_pos = np.flatnonzero((ids >= task._pair0) & (ids < task._query0))
        assert len(pair_pos) == 20 and (pair_pos < 128).all()
        pairs, copies = np.unique(ids[pair_pos], return_counts=True)
        assert len(pairs) == 4 and (copies == 5).all()
        value_of = dict(divmod(int(p) - task._pair0, 8) for p in pairs)
        asked = np.flatnonzero(labels != IGNORE_INDEX)
        assert len(asked) == 32 and (asked >= 128).all()
        assert {int(ids[q]) - task._query0 for q in asked} == set(value_of)  # every pair is asked
        for q in asked:
            assert value_of[int(ids[q]) - task._query0] == labels[q]


def test_task_loss_weights_positives_of_tagging_only():
    logits = torch.randn(2, 6, 2)
    labels = torch.tensor([[1, 0, 0, 0, 1, IGNORE_INDEX], [0, 0, 0, 1, 0, 0]])
    plain = make_task(TaskSpec(name="majority_tagging", seq_len=16))
    weighted = make_task(TaskSpec(name="majority_tagging", seq_len=16, positive_weight=3.0))
    flat, target = logits.reshape(-1, 2), labels.reshape(-1)
    torch.testing.assert_close(plain.loss(logits, labels), torch.nn.functional.cross_entropy(flat, target))
    keep = target != IGNORE_INDEX
    per = torch.nn.functional.cross_entropy(flat[keep], target[keep], reduction="none")
    w = 1.0 + 2.0 * (target[keep] == 1)
    torch.testing.assert_close(weighted.loss(logits, labels), (per * w).sum() / w.sum())
    majority = make_task(TaskSpec(name="majority", seq_len=16))
    seq_logits, seq_labels = torch.randn(3, 8), torch.tensor([1, 7, 0])
    torch.testing.assert_close(
        majority.loss(seq_logits, seq_labels), torch.nn.functional.cross_entropy(seq_logits, seq_labels)
    )


def test_metrics_on_hand_checked_examples():
    task = make_task(TaskSpec(name="majority_tagging", seq_len=16))
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # predicts 1 0 1 0
    labels = torch.tensor([[1, 1, 0, IGNORE_INDEX]])
    counts = task.metric_counts(logits, labels)  # tp=1 fp=1 fn=1 tn=0 (last position ignored)
    assert counts.tolist() == [1.0, 1.0, 1.0, 0.0]
    metrics = task.compute_metrics(counts)
    assert metrics["f1"] == pytest.approx(0.5) and metrics["balanced_accuracy"] == pytest.approx(0.25)
    assert compute_metrics("majority", torch.tensor([3.0, 4.0, 0, 0])) == {"accuracy": 0.75}
    lookup = make_task(TaskSpec(name="lookup", seq_len=64))
    logits = torch.zeros(1, 3, lookup.num_labels)
    logits[0, 0, 2] = logits[0, 1, 5] = 1.0
    counts = lookup.metric_counts(logits, torch.tensor([[2, 4, IGNORE_INDEX]]))
    assert lookup.compute_metrics(counts)["accuracy"] == 0.5


def test_a_chunk_alone_rarely_reveals_the_majority():
    # the demo's setting: L=2048, V=8, margin 0.5, chunks of 32
    task = make_task(TaskSpec(name="majority", seq_len=2048, num_symbols=8, margin=0.5))
    chunk = chunk_oracle_accuracy(task, chunk_size=32, num_examples=300)
    whole = chunk_oracle_accuracy(task, chunk_size=2048, num_examples=50)
    assert whole == 1.0  # global counts always solve it
    assert chunk < 0.45  # exact counts of one chunk: far from solved (chance 0.125)
    # the experiment's setting: L=512, chunks of 32
    small = make_task(TaskSpec(name="majority", seq_len=512, num_symbols=8, margin=0.5))
    assert chunk_oracle_accuracy(small, chunk_size=32, num_examples=300) < 0.45


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(name="parity"), "task.name"),
        (dict(seq_len=4), "task.seq_len"),
        (dict(margin=0.0), "task.margin"),
        (dict(name="lookup", num_pairs=2, num_queries=0), "num_queries"),
        (dict(name="lookup", num_pairs=40, num_keys=32), "num_pairs"),
        (dict(name="lookup", seq_len=64, num_pairs=4, pair_copies=9), "pair_copies|fit"),
        (dict(name="lookup", pair_copies=0), "pair_copies"),
        (dict(name="majority_tagging", positive_weight=0.0), "positive_weight"),
    ],
)
def test_spec_validation_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        TaskSpec(**bad)


def test_chunk_local_tagging_is_far_from_solved_in_the_experiment_setting():
    # configs/synthetic/majority-tagging-*.yaml: L=512, V=8, margin 0.75, chunks of 16
    task = make_task(TaskSpec(name="majority_tagging", seq_len=512, num_symbols=8, margin=0.75))
    assert chunk_oracle_tagging_f1(task, chunk_size=512, num_examples=20) == 1.0
    assert 0.3 < chunk_oracle_tagging_f1(task, chunk_size=16, num_examples=100) < 0.6
    with pytest.raises(ValueError, match="majority_tagging"):
        chunk_oracle_tagging_f1(make_task(TaskSpec(name="majority")), 16)


def test_tagging_chance_is_the_f1_of_tagging_everything_positive():
    task = make_task(TaskSpec(name="majority_tagging", seq_len=512, num_symbols=8, margin=0.75))
    labels = task.batch("test", range(20))["labels"]
    all_positive = torch.stack([torch.zeros_like(labels), torch.ones_like(labels)], dim=-1).float()
    f1 = task.compute_metrics(task.metric_counts(all_positive, labels))["f1"]
    assert f1 == pytest.approx(task.chance)
