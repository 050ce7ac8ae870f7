"""GMAT model behaviour: shapes, heads, padding, errors, oracle equality with HF BERT, save/load, Auto*."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertForMaskedLM,
    BertModel,
)

from gmat import (
    GmatConfig,
    GmatForMaskedLM,
    GmatForQuestionAnswering,
    GmatForSequenceClassification,
    GmatForTokenClassification,
    GmatModel,
    convert_bert_to_gmat,
)

HEADS = [
    GmatModel,
    GmatForMaskedLM,
    GmatForSequenceClassification,
    GmatForTokenClassification,
    GmatForQuestionAnswering,
]
AUTO_CLASSES = {
    GmatModel: AutoModel,
    GmatForMaskedLM: AutoModelForMaskedLM,
    GmatForSequenceClassification: AutoModelForSequenceClassification,
    GmatForTokenClassification: AutoModelForTokenClassification,
    GmatForQuestionAnswering: AutoModelForQuestionAnswering,
}
PATTERNS = [
    {"attention_pattern": "chunked", "chunk_size": 4},
    {"attention_pattern": "window", "attention_window": 2},
    {"attention_pattern": "dense"},
]
MEMORY_SIZES = [0, 1, 3]


def _labels_for(cls: type, batch: dict, num_labels: int) -> dict:
    ids = batch["input_ids"]
    if cls is GmatForMaskedLM:
        return {"labels": ids.masked_fill(batch["attention_mask"] == 0, -100)}
    if cls is GmatForSequenceClassification:
        return {"labels": torch.arange(ids.shape[0]) % num_labels}
    if cls is GmatForTokenClassification:
        return {"labels": (ids % num_labels).masked_fill(batch["attention_mask"] == 0, -100)}
    if cls is GmatForQuestionAnswering:
        return {
            "start_positions": torch.zeros(ids.shape[0], dtype=torch.long),
            "end_positions": torch.ones(ids.shape[0], dtype=torch.long),
        }
    return {}


@pytest.mark.parametrize("cls", HEADS)
@pytest.mark.parametrize("num_memory", MEMORY_SIZES)
def test_heads_shapes_and_loss(cls: type, num_memory: int, gmat_config, batch) -> None:
    config = gmat_config(num_memory_tokens=num_memory, num_labels=5)
    model = cls(config).eval()
    inputs = batch(batch=3, length=11)
    out = model(**inputs, **_labels_for(cls, inputs, 5), output_hidden_states=True)
    b, length, d = 3, 11, config.hidden_size
    assert out.last_hidden_state.shape == (b, length, d)
    assert out.memory_state.shape == (b, num_memory, d)
    assert len(out.hidden_states) == len(out.memory_hidden_states) == config.num_hidden_layers + 1
    assert out.hidden_states[-1] is out.last_hidden_state or torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert all(h.shape == (b, num_memory, d) for h in out.memory_hidden_states)
    expected_logits = {
        GmatForMaskedLM: (b, length, config.vocab_size),
        GmatForSequenceClassification: (b, 5),
        GmatForTokenClassification: (b, length, 5),
    }
    if cls in expected_logits:
        assert out.logits.shape == expected_logits[cls]
    if cls is GmatForQuestionAnswering:
        assert out.start_logits.shape == out.end_logits.shape == (b, length)
    if cls is not GmatModel:
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        out.loss.backward()


def test_regression_and_tuple_outputs(gmat_config, batch) -> None:
    model = GmatForSequenceClassification(gmat_config(num_labels=1)).eval()
    inputs = batch()
    out = model(**inputs, labels=torch.randn(3))
    assert out.logits.shape == (3, 1) and torch.isfinite(out.loss)
    assert model.config.problem_type is None  # the forward pass does not write into the config
    as_tuple = model(**inputs, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.logits)


def test_sequence_classification_pools_memory_slot_zero(gmat_config, batch) -> None:
    model = GmatForSequenceClassification(gmat_config(num_memory_tokens=2)).eval()
    out = model.gmat(**batch())
    torch.testing.assert_close(out.pooler_output, model.gmat.pooler(out.memory_state[:, 0]))


def test_mlm_decoder_tied_to_word_embeddings(gmat_config) -> None:
    model = GmatForMaskedLM(gmat_config())
    assert model.cls.predictions.decoder.weight is model.gmat.embeddings.word_embeddings.weight


def test_mlm_sparse_prediction_scores_only_labelled_positions(gmat_config, batch) -> None:
    """Same loss and the same logits at the labelled rows as the full head; (N, V) logits; no labels: full."""
    torch.manual_seed(0)
    dense = GmatForMaskedLM(gmat_config(num_memory_tokens=2)).eval()
    sparse = GmatForMaskedLM(gmat_config(num_memory_tokens=2, sparse_prediction=True)).eval()
    sparse.load_state_dict(dense.state_dict())
    inputs = batch(batch=2, length=9)
    labels = inputs["input_ids"].clone()
    labels[:, ::3] = -100
    labels[1, 4:] = -100
    with torch.no_grad():
        full, part = dense(**inputs, labels=labels), sparse(**inputs, labels=labels)
        unlabelled = sparse(**inputs)
    scored = labels != -100
    assert part.logits.shape == (int(scored.sum()), dense.config.vocab_size)
    torch.testing.assert_close(part.logits, full.logits[scored])
    torch.testing.assert_close(part.loss, full.loss)
    torch.testing.assert_close(unlabelled.logits, full.logits)
    with pytest.raises(ValueError, match="sparse_prediction"):
        gmat_config(sparse_prediction="yes")


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p["attention_pattern"])
@pytest.mark.parametrize("num_memory", MEMORY_SIZES)
def test_padding_invariance(pattern: dict, num_memory: int, gmat_config, batch) -> None:
    """Appending padding leaves every real position (and the memory) unchanged; int and bool masks agree."""
    model = GmatModel(gmat_config(num_memory_tokens=num_memory, **pattern)).eval()
    inputs = batch(batch=2, length=9)
    padded = {k: torch.nn.functional.pad(v, (0, 6)) for k, v in inputs.items()}
    with torch.no_grad():
        short = model(**inputs)
        long = model(**padded)
        as_bool = model(**{**padded, "attention_mask": padded["attention_mask"].bool()})
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(long.last_hidden_state[:, :9][real], short.last_hidden_state[real])
    torch.testing.assert_close(long.memory_state, short.memory_state)
    assert torch.equal(as_bool.last_hidden_state, long.last_hidden_state)


def test_batch_invariance(gmat_config, batch) -> None:
    model = GmatModel(gmat_config()).eval()
    inputs = batch(batch=3, length=10)
    with torch.no_grad():
        together = model(**inputs).last_hidden_state
        for i in range(3):
            alone = model(**{k: v[i : i + 1] for k, v in inputs.items()}).last_hidden_state
            real = inputs["attention_mask"][i].bool()
            torch.testing.assert_close(together[i][real], alone[0][real])


def test_any_length_up_to_max_positions(gmat_config) -> None:
    config = gmat_config(max_position_embeddings=37)
    model = GmatModel(config).eval()
    for length in (1, 5, 36, 37):
        out = model(torch.randint(1, 100, (2, length)))
        assert out.last_hidden_state.shape == (2, length, config.hidden_size)


BAD_INPUTS = [
    (lambda ids: {"input_ids": torch.randint(1, 100, (2, 65))}, "max_position_embeddings"),
    (lambda ids: {"input_ids": ids, "attention_mask": torch.ones(2, 7)}, "attention_mask"),
    (lambda ids: {"input_ids": ids, "attention_mask": torch.ones(3, 10)}, "attention_mask"),
    (lambda ids: {"input_ids": ids, "token_type_ids": torch.zeros(2, 9, dtype=torch.long)}, "token_type_ids"),
    (lambda ids: {"input_ids": ids[0]}, "input_ids"),
    (lambda ids: {"input_ids": ids, "position_ids": torch.arange(4)[None]}, "position_ids"),
]


@pytest.mark.parametrize(("make", "name"), BAD_INPUTS)
def test_bad_inputs_raise_naming_the_input(make, name: str, gmat_config) -> None:
    model = GmatModel(gmat_config(max_position_embeddings=64)).eval()
    ids = torch.randint(1, 100, (2, 10))
    with pytest.raises(ValueError, match=name):
        model(**make(ids))


def test_attention_dropout_only_in_training(gmat_config, batch) -> None:
    config = gmat_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    model = GmatModel(config)
    inputs = batch()
    model.train()
    a, b = model(**inputs).last_hidden_state, model(**inputs).last_hidden_state
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).last_hidden_state, model(**inputs).last_hidden_state)


def test_gradient_checkpointing_matches(gmat_config, batch, tol) -> None:
    config = gmat_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = GmatForMaskedLM(config).train()
    inputs = batch()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    plain_loss, plain_grads = loss_and_grads()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert all(layer.gradient_checkpointing for layer in model.gmat.encoder.layer)
    ckpt_loss, ckpt_grads = loss_and_grads()
    torch.testing.assert_close(ckpt_loss, plain_loss, **tol("graph_rewrite"))
    for got, want in zip(ckpt_grads, plain_grads):
        torch.testing.assert_close(got, want, **tol("graph_rewrite"))


@pytest.mark.parametrize("cls", HEADS)
def test_save_load_bit_exact_through_auto(cls: type, gmat_config, batch, tmp_path) -> None:
    model = cls(gmat_config(num_memory_tokens=2, num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), GmatConfig)
    loaded = AUTO_CLASSES[cls].from_pretrained(tmp_path).eval()
    assert type(loaded) is cls
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    inputs = batch()
    with torch.no_grad():
        a, b = model(**inputs), loaded(**inputs)
    assert all(torch.equal(x, y) for x, y in zip(a.to_tuple(), b.to_tuple()))


def test_mlm_checkpoint_stores_decoder_once(gmat_config, tmp_path) -> None:
    GmatForMaskedLM(gmat_config()).save_pretrained(tmp_path)
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert "gmat.embeddings.memory_embeddings" in stored
    assert "cls.predictions.decoder.weight" not in stored


# ---- oracle: HF BERT with the same weights, through the production converter ------------------------------
ORACLE_PATTERNS = [
    {"attention_pattern": "dense"},
    {"attention_pattern": "chunked", "chunk_size": 64},  # one chunk covers L
    {"attention_pattern": "window", "attention_window": 63},  # the band covers L
]


@pytest.mark.parametrize("pattern", ORACLE_PATTERNS, ids=lambda p: p["attention_pattern"])
def test_tiny_bert_oracle(pattern: dict, bert_config, batch, tol, tmp_path) -> None:
    bert = BertModel(bert_config()).eval()
    bert.save_pretrained(tmp_path / "bert")
    convert_bert_to_gmat(tmp_path / "bert", tmp_path / "gmat", num_memory_tokens=0, max_length=64, **pattern)
    gmat = AutoModel.from_pretrained(tmp_path / "gmat").eval()
    inputs = batch(batch=3, length=13)
    with torch.no_grad():
        want, got = bert(**inputs), gmat(**inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real], **tol("bert_oracle"))
    torch.testing.assert_close(got.pooler_output, want.pooler_output, **tol("bert_oracle"))


def test_tiny_bert_mlm_oracle(bert_config, batch, tol, tmp_path) -> None:
    bert = BertForMaskedLM(bert_config()).eval()
    torch.nn.init.normal_(bert.cls.predictions.bias)  # a non-zero bias must survive conversion
    bert.save_pretrained(tmp_path / "bert")
    convert_bert_to_gmat(
        tmp_path / "bert", tmp_path / "gmat", num_memory_tokens=0, attention_pattern="dense", max_length=64
    )
    gmat = AutoModelForMaskedLM.from_pretrained(tmp_path / "gmat").eval()
    assert isinstance(gmat, GmatForMaskedLM)
    inputs = batch()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        want, got = bert(**inputs, labels=labels), gmat(**inputs, labels=labels)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got.logits[real], want.logits[real], **tol("bert_oracle"))
    torch.testing.assert_close(got.loss, want.loss, **tol("bert_oracle"))


def test_backends_agree(gmat_config, batch, tol) -> None:
    config = gmat_config(num_memory_tokens=3, chunk_size=4, attn_backend="reference")
    reference = GmatForMaskedLM(config).eval()
    blocked = GmatForMaskedLM(gmat_config(num_memory_tokens=3, chunk_size=4, attn_backend="blocked")).eval()
    blocked.load_state_dict(reference.state_dict())
    inputs = batch(batch=3, length=15)
    with torch.no_grad():
        want, got = reference(**inputs), blocked(**inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got.logits[real], want.logits[real], **tol("backend_logits"))
    torch.testing.assert_close(got.memory_state, want.memory_state, **tol("backend_logits"))


def test_fill_mask_pipeline_reads_the_model_logits(gmat_config, tol, tmp_path) -> None:
    # users reach a saved masked LM through transformers' fill-mask pipeline; its scores must be our logits'
    from transformers import BertTokenizer, pipeline

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(115))]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    model = GmatForMaskedLM(gmat_config(vocab_size=len(vocab))).eval()
    model.save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    fill = pipeline("fill-mask", model=str(tmp_path / "mlm"), device="cpu", top_k=5)
    top = fill("w1 w2 w3 [MASK] w5 w6 w7 w8 w9")
    ids = tokenizer("w1 w2 w3 [MASK] w5 w6 w7 w8 w9", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = model(input_ids=ids).logits[0, 4].softmax(-1)  # [CLS] w1 w2 w3 [MASK]
    expected = probs.topk(5)
    assert [t["token"] for t in top] == expected.indices.tolist()
    scores = torch.tensor([t["score"] for t in top])
    torch.testing.assert_close(scores, expected.values, **tol("graph_rewrite"))


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_recomputed_ffn_activation_gives_the_plain_gradients(act: str, monkeypatch) -> None:
    # training recomputes the FFN activation in the backward instead of saving it: same loss, same gradients
    import gmat.modeling.modeling_gmat as mg

    torch.manual_seed(0)
    config = GmatConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_memory_tokens=3,
        chunk_size=8,
        hidden_act=act,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = GmatForMaskedLM(config).train()
    ids = torch.randint(5, 50, (2, 40))

    def run(recompute: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        monkeypatch.setattr(mg, "_RECOMPUTE_FFN_ACTIVATION", recompute)
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    monkeypatch.setattr(mg._ActivationThenLinear, "backward", _counting(mg._ActivationThenLinear.backward, calls))
    loss, grads = run(True)
    assert len(calls) == config.num_hidden_layers  # the recomputing path really ran
    plain_loss, plain = run(False)
    assert torch.equal(loss, plain_loss) and grads.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(grads[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)


def _counting(fn, calls: list):  # noqa: ANN001, ANN202
    def wrapped(*args):  # noqa: ANN002, ANN202
        calls.append(1)
        return fn(*args)

    return staticmethod(wrapped)
