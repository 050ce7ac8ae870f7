import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from gmat.commands.evaluate import add_mlm_arguments as add_mlm_eval_arguments
from gmat.commands.evaluate import run_mlm as run_mlm_eval
from gmat.data import CorpusError, SpecialTokens, WordPieceTokenizer
from gmat.modeling.factory import ModelSettings
from gmat.modeling.probes import swapped_memory
from gmat.tasks.mlm import (
    IGNORE_INDEX,
    MLMMetrics,
    MLMTask,
    MLMTaskSpec,
    evaluate_mlm,
    mask_tokens,
    outside_chunk_flags,
)

SPECIAL = SpecialTokens(pad=0, unk=100, cls=101, sep=102, mask=103)


@pytest.fixture(autouse=True)
def _one_thread():
    # the shared CI / dev machines are oversubscribed; tiny models run far faster on one thread
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
    "upsilon phi chi psi omega river mountain forest city"
).split()


def corpus(path, n_docs=12, words=60, seed=0):
    rng = np.random.default_rng(seed)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS, size=words))}) for _ in range(n_docs)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_masking_statistics_80_10_10_and_specials_never_masked():
    rng = np.random.default_rng(0)
    length = 200_000
    ids = rng.integers(1000, 30000, size=length)
    ids[::50] = SPECIAL.sep
    ids[0] = SPECIAL.cls
    ids[7::97] = SPECIAL.pad
    inputs, labels = mask_tokens(ids, np.random.default_rng(1), special=SPECIAL, vocab_size=30522)
    selected = labels != IGNORE_INDEX
    specials = np.isin(ids, SPECIAL.as_tuple())
    assert not (selected & specials).any()
    assert np.array_equal(inputs[specials], ids[specials])  # special tokens are never altered
    assert np.array_equal(labels[selected], ids[selected])
    assert abs(selected.sum() / (~specials).sum() - 0.15) < 0.005
    as_mask = (inputs == SPECIAL.mask) & selected
    unchanged = (inputs == ids) & selected
    replaced = selected & ~as_mask & ~unchanged
    n = selected.sum()
    assert abs(as_mask.sum() / n - 0.8) < 0.01
    assert abs(unchanged.sum() / n - 0.1) < 0.01  # (a random draw equal to the original is ~1/30000)
    assert abs(replaced.sum() / n - 0.1) < 0.01
    assert not np.isin(inputs[replaced], SPECIAL.as_tuple()).any()
    assert (inputs[~selected] == ids[~selected]).all()


def test_masking_selects_at_least_one_token_and_never_draws_specials():
    ids = np.array([SPECIAL.cls, 2000, SPECIAL.sep])
    for seed in range(20):
        _, labels = mask_tokens(ids, np.random.default_rng(seed), special=SPECIAL, vocab_size=30522)
        assert labels.tolist() == [IGNORE_INDEX, 2000, IGNORE_INDEX]
    # a vocabulary that is almost all specials: random replacements must still avoid them
    small = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4)
    ids = np.full(5000, 5)
    inputs, labels = mask_tokens(ids, np.random.default_rng(0), special=small, vocab_size=7, probability=0.5)
    assert set(np.unique(inputs)) <= {4, 5, 6}


def test_outside_chunk_split_on_a_hand_made_example():
    # chunk size 4: chunks [0..3] [4..7] [8..9]; token 7 appears at 1 (masked), 2 (visible, same chunk) and
    # 9 (visible, other chunk); token 8 masked at 5 appears only masked at 8; token 9 masked at 6 appears
    # visible at 4 (same chunk) only; token 5 at 0 masked, visible at 9? no: visible at 3 (same chunk).
    original = torch.tensor([[5, 7, 7, 5, 9, 8, 9, 6, 8, 7]])
    labels = torch.full_like(original, IGNORE_INDEX)
    for p in (0, 1, 5, 6, 8):
        labels[0, p] = original[0, p]
    inputs = original.clone()
    inputs[labels != IGNORE_INDEX] = SPECIAL.mask
    flags = outside_chunk_flags(inputs, labels, chunk_size=4)
    # 0: token 5 visible only at 3 (own chunk) -> False; 1: token 7 visible at 9 (chunk 2) -> True;
    # 5: token 8 only masked elsewhere -> False; 6: token 9 visible at 4 (own chunk) -> False;
    # 8: token 8 masked at 5, not visible anywhere -> False
    assert flags[0].tolist() == [False, True, False, False, False, False, False, False, False, False]
    # with chunk 2, position 6's chunk is [6, 7]; token 9 at 4 is now outside -> True; 0: token 5 at 3 -> True
    flags2 = outside_chunk_flags(inputs, labels, chunk_size=2)
    assert flags2[0].nonzero().flatten().tolist() == [0, 1, 6]
    # rows are independent: the same token visible in another batch row does not count
    batch_inputs = torch.cat([inputs, torch.full_like(inputs, 8)])
    batch_labels = torch.cat([labels, torch.full_like(labels, IGNORE_INDEX)])
    assert outside_chunk_flags(batch_inputs, batch_labels, 4)[0].tolist() == flags[0].tolist()


def test_outside_chunk_flags_match_a_loop():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(1, 12, (3, 37), generator=g)
    labels = torch.where(
        torch.rand(3, 37, generator=g) < 0.3,
        torch.randint(1, 12, (3, 37), generator=g),
        torch.full((3, 37), IGNORE_INDEX),
    )
    flags = outside_chunk_flags(inputs, labels, 8)
    for b in range(3):
        for p in range(37):
            want = labels[b, p] != IGNORE_INDEX and any(
                inputs[b, q] == labels[b, p] and q // 8 != p // 8 for q in range(37)
            )
            assert bool(flags[b, p]) == bool(want)


def test_metrics_groups_partition_the_tokens():
    metrics = MLMMetrics()
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 0, 2])
    metrics.update(logits, targets, torch.tensor([True, True, False, False]))
    out = metrics.compute()
    assert out["all"]["tokens"] == 4 and out["outside_chunk"]["tokens"] == 2 and out["chunk_only"]["tokens"] == 2
    assert out["outside_chunk"]["accuracy"] == 1.0 and out["chunk_only"]["accuracy"] == 0.0
    assert out["all"]["accuracy"] == 0.5
    assert out["all"]["perplexity"] == pytest.approx(np.exp(out["all"]["loss"]))
    total = out["outside_chunk"]["loss"] * 2 + out["chunk_only"]["loss"] * 2
    assert out["all"]["loss"] * 4 == pytest.approx(total)


@pytest.fixture
def task(tmp_path):
    spec = MLMTaskSpec(
        train_data=str(corpus(tmp_path / "train.jsonl")),
        eval_data=str(corpus(tmp_path / "v.jsonl", n_docs=4, seed=1)),
        test_data=str(tmp_path / "missing.jsonl"),
        cache_dir=str(tmp_path / "cache"),
        seq_len=32,
        eval_size=3,
        split_chunk_size=8,
    )
    return MLMTask(spec, progress=False)


def test_task_batches_are_deterministic_and_dynamic(task):
    a, b = task.batch("train", range(4, 8)), task.batch("train", range(4, 8))
    for key in a:
        assert torch.equal(a[key], b[key])
        assert a[key].shape == (4, 32)
    assert torch.equal(task.batch("train", [6])["input_ids"][0], a["input_ids"][2])
    n = len(task.examples("train"))
    # the next epoch sees every example again with new masks
    epoch0 = task.batch("train", range(n))
    epoch1 = task.batch("train", range(n, 2 * n))
    originals0 = torch.where(epoch0["labels"] != IGNORE_INDEX, epoch0["labels"], epoch0["input_ids"])
    assert not torch.equal(epoch0["labels"] != IGNORE_INDEX, epoch1["labels"] != IGNORE_INDEX)
    originals1 = torch.where(epoch1["labels"] != IGNORE_INDEX, epoch1["labels"], epoch1["input_ids"])
    assert sorted(map(tuple, originals0.tolist())) == sorted(map(tuple, originals1.tolist()))
    assert (a["input_ids"][:, 0] == task.special.cls).all()
    assert len(task.eval_indices()) == 3
    counts = task.metric_counts(torch.randn(4, 32, task.vocab_size), a["labels"])
    metrics = task.compute_metrics(counts)
    assert set(metrics) == {"accuracy", "mlm_loss", "perplexity"}


def test_missing_test_corpus_is_a_clear_error(task):
    with pytest.raises(CorpusError, match="does not exist"):
        task.batch("test", [0])


def tiny_model(task, **kw):
    settings = ModelSettings(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_memory_tokens=kw.get("m", 2),
        attention_pattern="chunked",
        chunk_size=8,
        attention_window=None,
        attn_backend="auto",
    )
    return task.build_model(settings), settings


def test_evaluate_mlm_saved_model_and_cli(task, tmp_path, capsys):
    model, _ = tiny_model(task)
    model.save_pretrained(tmp_path / "model")
    data = tmp_path / "v.jsonl"
    result = evaluate_mlm(tmp_path / "model", data, length=32, batch_size=2, cache_dir=tmp_path / "cache")
    m = result["metrics"]
    assert result["split_chunk_size"] == 8 and result["length"] == 32 and result["num_examples"] > 0
    assert m["all"]["tokens"] == m["outside_chunk"]["tokens"] + m["chunk_only"]["tokens"] > 0
    assert m["all"]["perplexity"] == pytest.approx(np.exp(m["all"]["loss"]))
    # per-example counts (for paired model comparisons) add up to the totals, group by group
    paired = evaluate_mlm(
        tmp_path / "model", data, length=32, batch_size=3, cache_dir=tmp_path / "cache", per_example=True
    )
    assert len(paired["per_example"]) == result["num_examples"]
    for group in ("all", "outside_chunk", "chunk_only"):
        loss_sum, _, tokens = np.sum([e[group] for e in paired["per_example"].values()], axis=0)
        assert tokens == m[group]["tokens"]
        assert loss_sum / max(tokens, 1) == pytest.approx(m[group]["loss"], rel=1e-6, nan_ok=True)
    # the same seed scores the same tokens; the model instance path gives the same numbers
    again = evaluate_mlm(model, data, length=32, batch_size=3, cache_dir=tmp_path / "cache")
    assert again["metrics"]["all"]["loss"] == pytest.approx(m["all"]["loss"], rel=1e-5)

    parser = argparse.ArgumentParser()
    add_mlm_eval_arguments(parser)
    args = parser.parse_args(
        [
            "--model",
            str(tmp_path / "model"),
            "--data",
            str(data),
            "--length",
            "32",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert run_mlm_eval(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["all"]["tokens"] == m["all"]["tokens"]
    assert (tmp_path / "model" / "eval-mlm-v-L32.json").is_file()
    # bad data: a clear error and exit status 2, not a traceback
    (tmp_path / "empty.jsonl").write_text("")
    for bad in ("empty.jsonl", "nope.jsonl"):
        args = parser.parse_args(
            [
                "--model",
                str(tmp_path / "model"),
                "--data",
                str(tmp_path / bad),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--output",
                "-",
            ]
        )
        assert run_mlm_eval(args) == 2
    args = parser.parse_args(
        ["--model", str(tmp_path / "model"), "--data", str(data), "--length", "64", "--cache-dir", str(tmp_path / "c")]
    )
    assert run_mlm_eval(args) == 2  # longer than the model accepts


def test_build_mlm_model_from_a_pretrained_checkpoint_checks_the_pattern(task, tmp_path):
    model, settings = tiny_model(task)
    model.save_pretrained(tmp_path / "ckpt")
    spec = MLMTaskSpec(**{**vars(task.spec), "pretrained": str(tmp_path / "ckpt")})
    pre_task = MLMTask(spec, progress=False)
    loaded = pre_task.build_model(settings)
    assert torch.equal(loaded.gmat.embeddings.word_embeddings.weight, model.gmat.embeddings.word_embeddings.weight)
    with pytest.raises(ValueError, match="task.pretrained=.* has pattern"):
        pre_task.build_model(dataclasses.replace(settings, num_memory_tokens=5))


def test_one_training_step_through_the_task(task):
    model, _ = tiny_model(task)
    batch = task.batch("train", range(2))
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.gmat.embeddings.memory_embeddings.grad.abs().sum() > 0


def test_training_loop_eval_with_sparse_prediction_matches_full_logits(task):
    """The loop's evaluation (the head on masked rows only) equals scoring the full (B, L, V) logits."""
    from gmat.tasks.mlm import masked_token_counts
    from gmat.training.loop import evaluate_model

    model, _ = tiny_model(task)
    assert model.config.sparse_prediction
    metrics = evaluate_model(model, task, batch_size=2)
    counts = torch.zeros(4, dtype=torch.float64)
    model.config.sparse_prediction = False
    with torch.no_grad():
        for batch in task.iter_eval(2):
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, L, V)
            assert logits.dim() == 3
            counts += masked_token_counts(logits, batch["labels"])
    expected = task.compute_metrics(counts)
    assert metrics["mlm_loss"] == pytest.approx(expected["mlm_loss"], rel=1e-5)
    assert metrics["accuracy"] == expected["accuracy"]
    with pytest.raises(ValueError, match="rows for"):
        masked_token_counts(torch.zeros(3, 5), torch.tensor([[1, -100], [2, -100]]))


def test_tokenizer_special_ids_are_bert_s():
    tok = WordPieceTokenizer()
    assert tok.special == SPECIAL and tok.vocab_size == 30522


def test_build_mlm_model_converts_a_bert_checkpoint_with_the_run_settings(task, tmp_path):
    from transformers import BertConfig, BertModel

    bert_config = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=task.vocab_size, max_position_embeddings=16, **bert_config))
    bert.save_pretrained(tmp_path / "bert")
    _, settings = tiny_model(task, m=3)
    spec = MLMTaskSpec(**{**vars(task.spec), "pretrained": str(tmp_path / "bert")})
    model = MLMTask(spec, progress=False).build_model(settings)
    c = model.config
    assert (c.num_memory_tokens, c.attention_pattern, c.chunk_size, c.max_position_embeddings) == (3, "chunked", 8, 32)
    assert c.sparse_prediction
    ours, theirs = model.gmat.state_dict(), bert.state_dict()
    for key in ("encoder.layer.0.attention.self.query.weight", "embeddings.word_embeddings.weight"):
        assert torch.equal(ours[key], theirs[key])
    # positions past BERT's 16 are copies of its table (the Longformer recipe of convert_bert_to_gmat)
    positions = "embeddings.position_embeddings.weight"
    assert torch.equal(ours[positions][16:], theirs[positions])
    assert torch.equal(model.cls.predictions.decoder.weight, theirs["embeddings.word_embeddings.weight"])
    model(**task.batch("train", range(2))).loss.backward()  # trains

    BertModel(BertConfig(vocab_size=50, **bert_config)).save_pretrained(tmp_path / "small-vocab")
    spec = MLMTaskSpec(**{**vars(task.spec), "pretrained": str(tmp_path / "small-vocab")})
    with pytest.raises(ValueError, match="vocabulary of 50"):
        MLMTask(spec, progress=False).build_model(settings)


def test_swapped_memory_feeds_each_example_the_previous_examples_memory():
    from gmat import GmatConfig, GmatForMaskedLM

    torch.manual_seed(0)
    config = GmatConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_memory_tokens=3,
        attention_pattern="chunked",
        chunk_size=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.5,
    )  # big weights: visible effects
    model = GmatForMaskedLM(config).eval()
    ids = torch.randint(5, 50, (3, 12))
    own = model.gmat(ids).last_hidden_state  # (3, 12, d)
    with swapped_memory(model):
        swapped = model.gmat(ids).last_hidden_state
    # oracle, layer by layer: the second layer's rows of example i read the first layer's memory of i - 1
    with torch.no_grad():
        h = model.gmat.embeddings(ids, torch.zeros_like(ids), torch.arange(12)[None])  # (3, 3 + 12, d)
        h = model.gmat.encoder.layer[0](h, None)
        h = torch.cat([h[:, :3].roll(1, dims=0), h[:, 3:]], dim=1)
        expected = model.gmat.encoder.layer[1](h, None)[:, 3:]
    torch.testing.assert_close(swapped, expected)
    assert (swapped - own).abs().max() > 0.1
    # the hooks are gone after the block; identical examples have nothing to swap
    torch.testing.assert_close(model.gmat(ids).last_hidden_state, own)
    same = ids[:1].expand(3, -1)
    with swapped_memory(model):
        swapped_same = model.gmat(same).last_hidden_state
    torch.testing.assert_close(swapped_same, model.gmat(ids[:1]).last_hidden_state.expand(3, -1, -1))
    with pytest.raises(ValueError, match="memory rows"):
        with swapped_memory(GmatForMaskedLM(GmatConfig(**{**config.to_dict(), "num_memory_tokens": 0}))):
            pass


def test_evaluate_mlm_memory_swap(task, tmp_path):
    model, _ = tiny_model(task, m=2)
    data = tmp_path / "v.jsonl"
    kw = dict(length=32, batch_size=2, cache_dir=tmp_path / "cache", per_example=True)
    own = evaluate_mlm(model, data, **kw)
    swapped = evaluate_mlm(model, data, memory_swap=True, **kw)
    n = own["num_examples"]
    assert swapped["memory"] == "swapped" and swapped["skipped_examples"] == n % 2
    assert swapped["num_examples"] == n - n % 2 and set(swapped["per_example"]) <= set(own["per_example"])
    assert swapped["metrics"]["all"]["loss"] != pytest.approx(own["metrics"]["all"]["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        evaluate_mlm(model, data, memory_swap=True, **{**kw, "batch_size": 1})
    no_memory, _ = tiny_model(task, m=0)
    with pytest.raises(ValueError, match="memory rows"):
        evaluate_mlm(no_memory, data, memory_swap=True, **kw)
    # the CLI flag; its JSON goes next to the plain evaluation's, with a -swap suffix
    model.save_pretrained(tmp_path / "model")
    parser = argparse.ArgumentParser()
    add_mlm_eval_arguments(parser)
    argv = ["--model", str(tmp_path / "model"), "--data", str(data), "--length", "32", "--batch-size", "2"]
    assert run_mlm_eval(parser.parse_args([*argv, "--cache-dir", str(tmp_path / "cache"), "--memory-swap"])) == 0
    written = json.loads((tmp_path / "model" / "eval-mlm-v-L32-swap.json").read_text())
    assert written["memory"] == "swapped"
    assert written["metrics"]["all"]["loss"] == pytest.approx(swapped["metrics"]["all"]["loss"], rel=1e-5)


def test_a_trained_mlm_folder_is_self_contained(task, tmp_path):
    # gmat train writes the tokenizer next to every checkpoint's weights: fill-mask and gmat eval mlm need
    # nothing but the folder, and the eval reuses the training run's token cache (same tokenizer fingerprint)
    from transformers import pipeline

    from gmat.training.config import parse_config
    from gmat.training.loop import train

    spec = task.spec
    config = parse_config(
        {
            "run_dir": str(tmp_path / "run"),
            "task": {
                "name": "mlm",
                "train_data": spec.train_data,
                "eval_data": spec.eval_data,
                "cache_dir": spec.cache_dir,
                "seq_len": 32,
                "eval_size": 2,
                "split_chunk_size": 8,
            },
            "model": {
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "num_memory_tokens": 2,
                "chunk_size": 8,
            },
            "train": {
                "steps": 2,
                "batch_size": 2,
                "eval_every": 2,
                "save_every": 2,
                "progress": False,
                "num_threads": 1,
            },
        }
    )
    train(config)
    caches = sorted((tmp_path / "cache").iterdir())
    for folder in (tmp_path / "run" / "best", tmp_path / "run" / "checkpoints" / "step_00000002"):
        manifest = json.loads((folder / "manifest.json").read_text())
        assert {"tokenizer.json", "tokenizer_config.json"} <= set(manifest), folder
        saved = WordPieceTokenizer(folder)
        assert saved.fingerprint() == task.tokenizer.fingerprint()
        assert saved.encode_batch(["alpha river omega"]) == task.tokenizer.encode_batch(["alpha river omega"])
    best = tmp_path / "run" / "best"
    evaluate_mlm(best, spec.eval_data, length=32, batch_size=2, cache_dir=spec.cache_dir)
    assert sorted((tmp_path / "cache").iterdir()) == caches  # no second tokenisation of the eval corpus

    fill = pipeline("fill-mask", model=str(best), device="cpu", top_k=3)
    assert fill.tokenizer.model_max_length == 32
    top = fill("alpha beta [MASK] delta")
    ids = [
        [
            task.special.cls,
            *task.tokenizer.encode_batch(["alpha beta"])[0],
            task.special.mask,
            *task.tokenizer.encode_batch(["delta"])[0],
            task.special.sep,
        ]
    ]
    model = fill.model
    with torch.no_grad():
        probs = model(input_ids=torch.tensor(ids)).logits[0, 3].softmax(-1)
    assert [t["token"] for t in top] == probs.topk(3).indices.tolist()
