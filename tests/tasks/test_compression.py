import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gmat.modeling.compression import GmatCompressionConfig, GmatForCompression
from gmat.tasks.compression import CompressionTask, CompressionTaskSpec, token_metrics
from gmat.tasks.mlm import IGNORE_INDEX, MLMTaskSpec


@pytest.fixture(autouse=True)
def _one_thread():
    # the shared CI / dev machines are oversubscribed; tiny models run far faster on one thread
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


V, M, L = 40, 4, 24


def config(**kw):
    base = dict(
        vocab_size=V,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_memory_tokens=M,
        attention_pattern="chunked",
        chunk_size=8,
        mask_token_id=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_encoder_layers=2,
        num_bottleneck_layers=1,
        num_decoder_layers=2,
    )
    base.update(kw)
    return GmatCompressionConfig(**base)


def ids(seed, shape=(2, L)):
    return torch.randint(5, V, shape, generator=torch.Generator().manual_seed(seed))


def test_shapes():
    model = GmatForCompression(config()).eval()
    x = ids(0)
    memory = model.encode(x, torch.ones_like(x))
    assert memory.shape == (2, M, 32)
    assert model.decode(memory, length=L).shape == (2, L, 32)
    out = model(x, torch.ones_like(x), labels=x)
    assert out.logits.shape == (2, L, V) and out.memory.shape == (2, M, 32) and out.loss.ndim == 0
    assert model.config.num_hidden_layers == 5
    assert model.cls.predictions.decoder.weight is model.embeddings.word_embeddings.weight


def test_decoder_sees_only_the_memory(monkeypatch):
    model = GmatForCompression(config()).eval()
    x1, x2 = ids(1), ids(2)
    memory = model.encode(x1)
    # once the memory is fixed, the tokens given to forward change nothing
    monkeypatch.setattr(model, "encode", lambda input_ids, attention_mask=None: memory)
    out1, out2 = model(x1).logits, model(x2).logits
    assert torch.equal(out1, out2)
    monkeypatch.undo()
    # ...while different inputs give different memories and different reconstructions
    assert not torch.allclose(model.encode(x1), model.encode(x2))
    assert not torch.allclose(model(x1).logits, model(x2).logits)
    # and a different memory changes the decoder output
    assert not torch.allclose(model.decode(memory, length=L), model.decode(memory + 1.0, length=L))


def test_gradient_flows_encoder_memory_decoder():
    model = GmatForCompression(config())
    x = ids(3)
    memory = model.encode(x)
    memory.retain_grad()
    loss = torch.nn.functional.cross_entropy(model.cls(model.decode(memory, length=L)).reshape(-1, V), x.reshape(-1))
    loss.backward()
    assert memory.grad is not None and memory.grad.abs().sum() > 0
    for name, module in (
        ("encoder", model.encoder[0]),
        ("bottleneck", model.bottleneck[0]),
        ("decoder", model.decoder[-1]),
    ):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
    assert model.embeddings.memory_embeddings.grad.abs().sum() > 0


def test_compressed_context_model_reads_context_only_through_memory():
    model = GmatForCompression(config(decoder_input="tokens", num_bottleneck_layers=0)).eval()
    b, a1, a2 = ids(4, (2, 12)), ids(5), ids(6)
    with_a1 = model(b, context_ids=a1).logits
    assert not torch.allclose(with_a1, model(b, context_ids=a2).logits)
    no_ctx = model(b)
    assert torch.allclose(no_ctx.memory, model.initial_memory(2))
    assert not torch.allclose(with_a1, no_ctx.logits)
    with pytest.raises(ValueError, match="context_ids are for"):
        GmatForCompression(config())(b, context_ids=a1)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(num_memory_tokens=0), "num_memory_tokens"),
        (dict(num_encoder_layers=0), "num_encoder_layers"),
        (dict(decoder_input="text"), "decoder_input"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        config(**kw)


def test_save_and_load_round_trip(tmp_path):
    model = GmatForCompression(config()).eval()
    model.save_pretrained(tmp_path)
    loaded = GmatForCompression.from_pretrained(tmp_path).eval()
    x = ids(7)
    assert torch.allclose(model(x).logits, loaded(x).logits)
    assert loaded.config.num_decoder_layers == 2 and loaded.config.model_type == "gmat-compression"


def test_reconstruction_loss_falls():
    # 8 fixed sequences: below the per-position entropy of the data only if the decoder reads the memory
    torch.manual_seed(0)
    model = GmatForCompression(
        config(
            max_position_embeddings=8,
            num_memory_tokens=2,
            num_encoder_layers=1,
            num_bottleneck_layers=0,
            num_decoder_layers=1,
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.randint(5, 13, (8, 6), generator=torch.Generator().manual_seed(0))
    # the best loss of a decoder that ignores the memory: per-position empirical entropy
    blind = np.mean(
        [-sum(c / 8 * np.log(c / 8) for c in np.unique(col, return_counts=True)[1]) for col in data.T.numpy()]
    )
    losses = []
    for _ in range(60):
        loss = model(data, labels=data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.6 * blind < losses[0]


def corpus(path, n_docs=10, words=80):
    rng = np.random.default_rng(0)
    vocab = "red green blue cyan magenta yellow black white orange purple brown grey".split()
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(vocab, words))}) + "\n" for _ in range(n_docs)))
    return str(path)


@pytest.mark.parametrize("mode", ["compressed", "none", "full"])
def test_compressed_context_batches(tmp_path, mode):
    data = corpus(tmp_path / "c.jsonl")
    spec = CompressionTaskSpec(
        name="compressed_context",
        train_data=data,
        eval_data=data,
        test_data=data,
        cache_dir=str(tmp_path / "cache"),
        seq_len=16,
        context_len=48,
        context_mode=mode,
        eval_size=2,
    )
    task = CompressionTask(spec, progress=False)
    batch = task.batch("train", range(3))
    window = np.stack([task.examples("train")[task._example_id("train", i)] for i in range(3)])
    if mode == "full":
        assert batch["input_ids"].shape == (3, 64)
        assert (batch["labels"][:, :48] == IGNORE_INDEX).all()
        assert torch.equal(batch["input_ids"][:, :48], torch.from_numpy(window[:, :48]))
    else:
        assert batch["input_ids"].shape == (3, 16)
        assert ("context_ids" in batch) == (mode == "compressed")
        if mode == "compressed":
            assert torch.equal(batch["context_ids"], torch.from_numpy(window[:, :48]))
    labels = batch["labels"][:, -16:]
    sel = labels != IGNORE_INDEX
    assert sel.any() and torch.equal(labels[sel], torch.from_numpy(window[:, 48:])[sel])
    # same masks in every mode: the three settings are scored on the same tokens
    other = CompressionTask(CompressionTaskSpec(**{**vars(spec), "context_mode": "compressed"}), progress=False)
    assert torch.equal(other.batch("train", range(3))["labels"], labels)


def test_reconstruction_task_batches_and_metrics(tmp_path):
    data = corpus(tmp_path / "c.jsonl")
    spec = CompressionTaskSpec(
        name="reconstruction",
        train_data=data,
        eval_data=data,
        test_data=data,
        cache_dir=str(tmp_path / "cache"),
        seq_len=32,
        eval_size=3,
    )
    task = CompressionTask(spec, progress=False)
    batch = task.batch("eval", [0, 1])
    assert batch["input_ids"].shape == (2, 32)
    assert (batch["labels"][:, 0] == IGNORE_INDEX).all()
    assert torch.equal(batch["labels"][:, 1:], batch["input_ids"][:, 1:])
    logits = torch.nn.functional.one_hot(batch["input_ids"], task.vocab_size).float() * 30
    metrics = task.compute_metrics(task.metric_counts(logits, batch["labels"]))
    assert metrics["accuracy"] == 1.0 and metrics["tokens"] == 62 and metrics["perplexity"] < 1.01
    assert token_metrics(torch.tensor([0.0, 0.0, 0.0, 0.0]))["tokens"] == 0
    assert len(list(task.iter_eval(2))) == 2


def test_reconstruction_train_label_fraction(tmp_path):
    """Training examples keep about the given fraction of labels, the same ones every time; eval keeps all."""
    data = corpus(tmp_path / "c.jsonl")
    common = dict(train_data=data, eval_data=data, test_data=data, cache_dir=str(tmp_path / "cache"), seq_len=32)
    task = CompressionTask(CompressionTaskSpec(train_label_fraction=0.25, **common), progress=False)
    full = CompressionTask(CompressionTaskSpec(**common), progress=False)
    labels = task.batch("train", range(8))["labels"]
    reference = full.batch("train", range(8))["labels"]
    kept = labels != IGNORE_INDEX
    assert torch.equal(labels[kept], reference[kept])
    assert 0.1 < kept.float().mean() < 0.4
    assert torch.equal(task.batch("train", range(8))["labels"], labels)
    assert torch.equal(task.batch("eval", [0, 1])["labels"], full.batch("eval", [0, 1])["labels"])
    with pytest.raises(ValueError, match="train_label_fraction"):
        CompressionTaskSpec(train_label_fraction=0.0)


CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name in ("mlm", "compression")], ids=lambda p: p.stem)
def test_configs_start_with_their_command_and_parse(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and str(path.relative_to(path.parents[2])) in first
    data = yaml.safe_load(path.read_text())
    spec = MLMTaskSpec(**data["task"]) if path.parent.name == "mlm" else CompressionTaskSpec(**data["task"])
    assert spec.cache_dir and data["run_dir"].endswith(path.stem)


def test_compression_from_masked_lm_copies_the_weights():
    from gmat.modeling import GmatConfig, GmatForMaskedLM
    from gmat.modeling.compression import compression_from_masked_lm

    torch.manual_seed(0)
    mlm = GmatForMaskedLM(
        GmatConfig(
            vocab_size=V,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
            num_memory_tokens=M,
            chunk_size=8,
        )
    )
    model = compression_from_masked_lm(
        mlm,
        num_encoder_layers=2,
        num_bottleneck_layers=1,
        num_decoder_layers=2,
        decoder_input="content_free",
        mask_token_id=3,
    )
    source = mlm.gmat.encoder.layer
    pairs = [
        (model.encoder[0], source[0]),
        (model.encoder[1], source[1]),
        (model.bottleneck[0], source[2]),
        (model.decoder[0], source[0]),
        (model.decoder[1], source[1]),
        (model.embeddings, mlm.gmat.embeddings),
        (model.cls, mlm.cls),
    ]
    for ours, theirs in pairs:
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), name
    c = model.config
    assert (c.num_memory_tokens, c.chunk_size, c.hidden_size, c.mask_token_id) == (M, 8, 16, 3)
    assert model.cls.predictions.decoder.weight is model.embeddings.word_embeddings.weight
    x = ids(1)
    model(x, labels=x).loss.backward()
    with pytest.raises(ValueError, match="has 3 layers"):
        compression_from_masked_lm(
            mlm,
            num_encoder_layers=3,
            num_bottleneck_layers=1,
            num_decoder_layers=1,
            decoder_input="content_free",
            mask_token_id=3,
        )


@pytest.mark.parametrize("mode", ["reconstruction", "full"])
def test_compression_task_builds_its_model_from_a_bert_checkpoint(tmp_path, mode):
    from transformers import BertConfig, BertModel

    from gmat.modeling import GmatForMaskedLM
    from gmat.modeling.factory import ModelSettings

    data = corpus(tmp_path / "c.jsonl")
    name, extra = (
        ("reconstruction", {}) if mode == "reconstruction" else ("compressed_context", {"context_mode": "full"})
    )
    spec = CompressionTaskSpec(
        name=name,
        train_data=data,
        eval_data=data,
        test_data=data,
        cache_dir=str(tmp_path / "cache"),
        seq_len=16,
        context_len=32,
        eval_size=2,
        pretrained=str(tmp_path / "bert"),
        **extra,
    )
    task = CompressionTask(spec, progress=False)
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=task.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=16,
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    pattern = (
        {"num_memory_tokens": 3, "chunk_size": 8}
        if mode == "reconstruction"
        else {"num_memory_tokens": 0, "attention_pattern": "dense", "chunk_size": None}
    )
    settings = ModelSettings(num_encoder_layers=2, num_bottleneck_layers=0, num_decoder_layers=2, **pattern)
    model = task.build_model(settings)
    theirs = bert.state_dict()["encoder.layer.1.attention.self.query.weight"]
    if mode == "reconstruction":
        assert isinstance(model, GmatForCompression) and model.config.num_memory_tokens == 3
        assert torch.equal(model.encoder[1].state_dict()["attention.self.query.weight"], theirs)
        assert torch.equal(model.decoder[1].state_dict()["attention.self.query.weight"], theirs)
    else:
        assert isinstance(model, GmatForMaskedLM) and model.config.attention_pattern == "dense"
        assert torch.equal(model.gmat.encoder.layer[1].state_dict()["attention.self.query.weight"], theirs)
    assert model.config.sparse_prediction
    model(**task.batch("train", range(2))).loss.backward()  # trains


def test_memory_swap_losses(tmp_path, monkeypatch):
    from gmat.tasks.compression import memory_swap_losses

    data = corpus(tmp_path / "c.jsonl")
    spec = CompressionTaskSpec(
        name="reconstruction",
        train_data=data,
        eval_data=data,
        test_data=data,
        cache_dir=str(tmp_path / "cache"),
        seq_len=24,
        eval_size=5,
    )
    task = CompressionTask(spec, progress=False)
    torch.manual_seed(0)
    model = GmatForCompression(config(vocab_size=task.vocab_size, mask_token_id=task.special.mask))
    result = memory_swap_losses(model, task, batch_size=2)  # batches of 2, 2 and a skipped single example
    assert result["tokens"] == 4 * 23
    assert result["swap_gap"] != 0.0  # a random decoder already depends on its memory
    # own_loss is the task's own evaluation loss on those examples
    with torch.no_grad():
        counts = sum(task.metric_counts(model(**b).logits, b["labels"]) for b in list(task.iter_eval(2))[:2])
    assert result["own_loss"] == pytest.approx(task.compute_metrics(counts)["loss"], rel=1e-5)
    # a model that gives every example the same memory cannot be told apart by the swap
    same = model.encode(task.batch("eval", [0])["input_ids"])
    monkeypatch.setattr(model, "encode", lambda ids, mask=None: same.expand(ids.shape[0], -1, -1))
    assert memory_swap_losses(model, task, batch_size=2)["swap_gap"] == 0.0
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        memory_swap_losses(model, task, batch_size=1)
    context = CompressionTask(
        CompressionTaskSpec(**{**vars(spec), "name": "compressed_context", "context_len": 8}), progress=False
    )
    with pytest.raises(ValueError, match="reconstruction control"):
        memory_swap_losses(model, context)


@pytest.mark.parametrize("mode", ["compressed", "full"])
def test_per_example_losses_add_up_to_the_evaluation_loss(tmp_path, mode):
    from gmat.modeling import GmatConfig, GmatForMaskedLM
    from gmat.tasks.compression import per_example_losses

    data = corpus(tmp_path / "c.jsonl")
    spec = CompressionTaskSpec(
        name="compressed_context",
        context_mode=mode,
        train_data=data,
        eval_data=data,
        test_data=data,
        cache_dir=str(tmp_path / "cache"),
        seq_len=16,
        context_len=16,
        eval_size=5,
    )
    task = CompressionTask(spec, progress=False)
    torch.manual_seed(0)
    if mode == "full":  # dense (B, L, V) logits, not the sparse rows
        cfg = {
            k: v
            for k, v in config(vocab_size=task.vocab_size).to_dict().items()
            if k in GmatConfig().to_dict() and k not in ("num_memory_tokens", "attention_pattern")
        }
        model = GmatForMaskedLM(GmatConfig(**{**cfg, "num_hidden_layers": 2, "sparse_prediction": False}))
    else:
        model = GmatForCompression(
            config(vocab_size=task.vocab_size, mask_token_id=task.special.mask, decoder_input="tokens")
        )
    rows = per_example_losses(model, task, batch_size=2)  # batches of 2, 2 and 1
    assert sorted(rows) == task.eval_indices().tolist()
    with torch.no_grad():
        counts = sum(task.metric_counts(model(**b).logits, b["labels"]) for b in task.iter_eval(2))
    assert sum(r[0] for r in rows.values()) == pytest.approx(float(counts[0]), rel=1e-6)
    assert sum(r[1] for r in rows.values()) == float(counts[2])
    alone = per_example_losses(model, task, batch_size=1)  # one example's loss does not depend on its batch
    for i, (loss, n) in rows.items():
        assert alone[i] == [pytest.approx(loss, rel=1e-5), n]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        per_example_losses(model, task, batch_size=0)
