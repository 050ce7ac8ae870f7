"""Document classification from the user's files: reading, labels, training past chance, saving a pipeline."""

from __future__ import annotations

import csv
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from gmat.tasks.classification import ClassificationSettings, ClassificationTask, read_documents
from gmat.training.config import parse_config
from gmat.training.loop import train

FILLER = "the a of and to in is was it for on with as at by from this that be or".split()
TOPICS = {
    "sport": "ball team goal match player coach score win".split(),
    "music": "song band guitar piano album concert singer drum".split(),
    "food": "bread soup cheese apple rice salt butter cake".split(),
}
WORDS = sorted({*FILLER, *(w for ws in TOPICS.values() for w in ws)})


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT-style WordPiece ``tokenizer.json`` over a 60-word vocabulary (a tiny embedding table)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    folder = tmp_path_factory.mktemp("tokenizer")
    tok.save(str(folder / "tokenizer.json"))
    return folder


def documents(n: int, seed: int, words: int = 30) -> list[dict]:
    """``n`` documents of filler words with a few words of their topic at random places."""
    rng = np.random.default_rng(seed)
    names = sorted(TOPICS)
    docs = []
    for i in range(n):
        label = names[i % len(names)]
        text = list(rng.choice(FILLER, size=words))
        for pos in rng.choice(words, size=4, replace=False):
            text[pos] = str(rng.choice(TOPICS[label]))
        docs.append({"text": " ".join(text), "label": label})
    return docs


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict], fields: tuple[str, ...] = ("text", "label")) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_config(run_dir: Path, tokenizer_dir: Path, train_file: Path, eval_file: Path, **task) -> dict:
    return {
        "run_dir": str(run_dir),
        "task": {
            "name": "classification",
            "train_file": str(train_file),
            "eval_file": str(eval_file),
            "tokenizer": str(tokenizer_dir),
            "seq_len": 48,
            **task,
        },
        "model": {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "initializer_range": 0.1,
            "num_memory_tokens": 2,
            "attention_pattern": "chunked",
            "chunk_size": 8,
        },
        "train": {
            "steps": 80,
            "batch_size": 8,
            "lr": 3e-3,
            "warmup_steps": 4,
            "eval_every": 40,
            "eval_batch_size": 16,
            "log_every": 10,
            "progress": False,
            "num_threads": 1,
        },
    }


def test_trains_from_jsonl_past_chance_and_saves_a_text_classification_pipeline(tmp_path, tokenizer_dir):
    train_file = write_jsonl(tmp_path / "train.jsonl", documents(96, seed=0))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", documents(30, seed=1))
    results = train(parse_config(run_config(tmp_path / "run", tokenizer_dir, train_file, eval_file)))

    chance = 1 / len(TOPICS)
    assert results["eval"]["examples"] == 30
    assert results["eval"]["accuracy"] >= 0.8 > chance + 0.3
    assert results["eval"]["macro_f1"] >= 0.7
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(saved["eval"]) >= {"accuracy", "macro_f1", "loss"}

    best = tmp_path / "run" / "best"
    config = json.loads((best / "config.json").read_text())
    assert config["id2label"] == {"0": "food", "1": "music", "2": "sport"}  # sorted training labels
    assert config["label2id"] == {"food": 0, "music": 1, "sport": 2}

    from transformers import pipeline

    classify = pipeline("text-classification", model=str(best), device="cpu")
    docs = documents(30, seed=1)
    predictions = classify([d["text"] for d in docs], truncation=True)
    hits = sum(p["label"] == d["label"] for p, d in zip(predictions, docs, strict=True))
    assert hits / len(docs) == pytest.approx(results["best"]["value"])  # same model, same tokens, same answers


def test_trains_from_csv_with_integer_labels_and_named_fields(tmp_path, tokenizer_dir):
    names = sorted(TOPICS)

    def rows(n: int, seed: int) -> list[dict]:
        return [{"body": d["text"], "topic": names.index(d["label"]) * 5} for d in documents(n, seed)]

    fields = ("body", "topic")
    train_file = write_csv(tmp_path / "train.csv", rows(96, 0), fields)
    eval_file = write_csv(tmp_path / "eval.csv", rows(30, 1), fields)
    config = run_config(tmp_path / "run", tokenizer_dir, train_file, eval_file, text_field="body", label_field="topic")
    results = train(parse_config(config))
    assert results["eval"]["accuracy"] >= 0.8
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert saved["id2label"] == {"0": "0", "1": "5", "2": "10"}  # integers sort as numbers, not as text


def test_starts_from_a_pretrained_gmat_classifier(tmp_path, tokenizer_dir):
    train_file = write_jsonl(tmp_path / "train.jsonl", documents(48, seed=0))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", documents(30, seed=1))
    first = run_config(tmp_path / "first", tokenizer_dir, train_file, eval_file)
    first_results = train(parse_config(first))
    # the checkpoint folder carries its tokenizer: task.tokenizer may be left empty
    second = run_config(tmp_path / "second", tokenizer_dir, train_file, eval_file)
    second["task"].update(tokenizer="", pretrained=str(tmp_path / "first" / "best"))
    second["train"].update(steps=1, eval_every=1, lr=1e-9, warmup_steps=0)
    second_results = train(parse_config(second))
    assert second_results["eval"]["accuracy"] == pytest.approx(first_results["best"]["value"])
    # another label set from that classifier: one line naming the key, not transformers' size-mismatch report
    two = [dict(d, label="even" if i % 2 else "odd") for i, d in enumerate(documents(48, seed=0))]
    third = run_config(
        tmp_path / "third", tokenizer_dir, write_jsonl(tmp_path / "two.jsonl", two), tmp_path / "two.jsonl"
    )
    third["task"].update(tokenizer="", pretrained=str(tmp_path / "first" / "best"))
    with pytest.raises(
        ValueError, match=r"task.pretrained=.* classifier of 3 labels, the task has 2: start from the encoder"
    ):
        train(parse_config(third))


def test_starts_from_a_bert_checkpoint(tmp_path, tokenizer_dir):
    from transformers import BertConfig, BertModel

    bert = tmp_path / "bert"
    BertModel(
        BertConfig(
            vocab_size=len(WORDS) + 5,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            initializer_range=0.1,
        )
    ).save_pretrained(bert)
    (bert / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    train_file = write_jsonl(tmp_path / "train.jsonl", documents(96, seed=0))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", documents(30, seed=1))
    config = run_config(tmp_path / "run", "", train_file, eval_file, pretrained=str(bert))
    config["train"].update(eval_every=80)
    results = train(parse_config(config))
    assert results["eval"]["accuracy"] >= 0.8
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert saved["model_type"] == "gmat" and saved["num_memory_tokens"] == 2
    assert saved["id2label"] == {"0": "food", "1": "music", "2": "sport"}


def test_unseen_eval_label_names_the_file_and_line(tmp_path, tokenizer_dir):
    train_file = write_jsonl(tmp_path / "train.jsonl", documents(6, seed=0))
    rows = documents(4, seed=1)
    rows[2]["label"] = "weather"
    eval_file = write_jsonl(tmp_path / "eval.jsonl", rows)
    spec = ClassificationSettings(train_file=str(train_file), eval_file=str(eval_file), tokenizer=str(tokenizer_dir))
    with pytest.raises(ValueError, match=r"task\.eval_file=.*eval\.jsonl' line 3: label 'weather' does not occur"):
        ClassificationTask(spec)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a"}\n', r"line 1: no field 'label' \(task.label_field\)"),
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": 1.5}\n', r"line 2: label 1.5 must be"),
        ('{"text": 3, "label": "x"}\n', r"line 1: 'text' must be a string"),
        ('{"text": "a", "label": "x"}\nnot json\n', r"line 2: not JSON"),
        ("\n", r"no documents"),
    ],
)
def test_malformed_jsonl_is_refused_naming_key_file_and_line(tmp_path, content, message):
    path = tmp_path / "docs.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"task\.train_file=.*docs\.jsonl'.*" + message):
        read_documents(path, key="task.train_file", text_field="text", label_field="label")


def test_csv_without_the_label_column_names_it(tmp_path):
    path = write_csv(tmp_path / "docs.csv", [{"text": "a b", "y": "x"}], ("text", "y"))
    with pytest.raises(ValueError, match=r"docs\.csv' line 2: no field 'label' \(task\.label_field\)"):
        read_documents(path, key="task.eval_file", text_field="text", label_field="label")


def test_csv_reads_documents_longer_than_the_csv_module_default_limit(tmp_path):
    text = "ball " * 40_000  # 200 kB, over csv's 128 KiB field limit
    path = write_csv(tmp_path / "long.csv", [{"text": text, "label": "sport"}])
    assert read_documents(path, key="task.train_file", text_field="text", label_field="label").texts == [text]
    path.write_text('text,label\n"a"b,sport\n')
    with pytest.raises(ValueError, match=r"long\.csv': not valid CSV after line 1 \(',' expected after '\"'\)"):
        read_documents(path, key="task.train_file", text_field="text", label_field="label")


def test_settings_name_their_keys():
    with pytest.raises(ValueError, match="task.eval_file is not set"):
        ClassificationSettings(train_file="a.jsonl")
    with pytest.raises(ValueError, match=r"task.test_file must be a .jsonl or .csv file, got 'x.txt'"):
        ClassificationSettings(train_file="a.jsonl", eval_file="b.csv", test_file="x.txt")
    with pytest.raises(ValueError, match="task.seq_len must be >= 3"):
        ClassificationSettings(train_file="a.jsonl", eval_file="b.csv", seq_len=2)


def test_long_documents_are_truncated_and_counted(tmp_path, tokenizer_dir, caplog):
    rows = [{"text": "ball " * n, "label": "sport"} for n in (3, 10, 11, 40)]
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    spec = ClassificationSettings(
        train_file=str(train_file), eval_file=str(train_file), tokenizer=str(tokenizer_dir), seq_len=12
    )
    task = ClassificationTask(spec)
    with caplog.at_level(logging.INFO, logger="gmat.tasks.classification"):
        ids, labels = task.encoded("train")
    assert [len(x) for x in ids] == [5, 12, 12, 12]  # 10 tokens + [CLS] + [SEP] fit exactly
    assert all(x[0] == task.special.cls and x[-1] == task.special.sep for x in ids)
    assert "task.train_file: 2 of 4 documents are longer than L=12 tokens" in caplog.text
    batch = task.batch("eval", [0, 3])
    assert batch["input_ids"].shape == (2, 12)
    assert batch["attention_mask"].sum(1).tolist() == [5, 12]


def test_confusion_matrix_metrics():
    task = ClassificationTask.__new__(ClassificationTask)
    task.labels = ["a", "b", "c"]
    logits = torch.eye(3)[[0, 0, 1, 2, 2]] * 5  # predictions 0 0 1 2 2
    labels = torch.tensor([0, 1, 1, 2, 2])
    metrics = task.compute_metrics(task.metric_counts(logits, labels))
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    # F1: a = 2/3 (tp 1, fp 1), b = 2/3 (tp 1, fn 1), c = 1
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # a class absent from both gold and predictions does not count
    task.labels = ["a", "b", "c", "d"]
    padded = torch.cat([logits, torch.zeros(5, 1)], dim=1)
    assert task.compute_metrics(task.metric_counts(padded, labels))["macro_f1"] == pytest.approx(metrics["macro_f1"])


class _ThreadSum:
    """An all-reduce between threads: each "rank" calls ``reduce(rank, tensor)`` and gets the sum."""

    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size)
        self.slots: list[torch.Tensor | None] = [None] * world_size

    def __call__(self, rank: int, tensor: torch.Tensor) -> torch.Tensor:
        self.slots[rank] = tensor.clone()
        self.barrier.wait()
        total = sum(self.slots[1:], self.slots[0])
        self.barrier.wait()
        return total


def test_a_rank_without_documents_still_reduces_the_confusion_matrix(tmp_path, tokenizer_dir):
    """Two ranks, one evaluation document: rank 1 has no batch and must still sum a (K*K) vector."""
    train_file = write_jsonl(tmp_path / "train.jsonl", documents(6, seed=0))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", documents(1, seed=1))
    task = ClassificationTask(
        ClassificationSettings(train_file=str(train_file), eval_file=str(eval_file), tokenizer=str(tokenizer_dir))
    )
    from gmat.modeling.factory import ModelSettings

    model = task.build_model(
        ModelSettings(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_memory_tokens=2,
            chunk_size=8,
        )
    )
    alone = task.evaluate(model, batch_size=4, device=torch.device("cpu"))
    reduce = _ThreadSum(2)
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            results[r] = task.evaluate(
                model,
                batch_size=4,
                device=torch.device("cpu"),
                rank=r,
                world_size=2,
                reduce=lambda t, r=r: reduce(r, t),
            )
        except BaseException as err:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(err)
            reduce.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    for r in range(2):
        assert results[r]["examples"] == 1
        assert results[r]["accuracy"] == alone["accuracy"]


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "classification").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_parse_and_name_their_command_and_run_dir(path):
    from gmat.training.config import load_config

    assert path.read_text().splitlines()[0] == f"# gmat train configs/classification/{path.name}"
    config = load_config(path)
    assert config.task.name == "classification"
    assert config.run_dir == f"runs/classification/{path.stem}"


def test_brown_script_keeps_brown_documents_with_their_two_way_label(tmp_path):
    from repo_scripts import load_script

    script = load_script("scripts/brown_genre_data.py")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = [
        {"id": "brown/ca01", "source": "brown", "title": "t", "genre": "news", "text": "a"},
        {"id": "kjv/gen", "source": "kjv", "title": "Genesis", "text": "b"},
        {"id": "brown/cl01", "source": "brown", "title": "u", "genre": "mystery", "text": "c"},
    ]
    for split in ("train", "valid", "test"):
        write_jsonl(corpus / f"{split}.jsonl", docs)
    assert script.main(["--corpus", str(corpus), "--out", str(tmp_path / "out")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "test.jsonl").read_text().splitlines()]
    assert [(r["id"], r["genre"], r["label"]) for r in rows] == [
        ("brown/ca01", "news", "informative"),
        ("brown/cl01", "mystery", "imaginative"),
    ]
    write_jsonl(corpus / "train.jsonl", [{**docs[0], "genre": "poetry"}])
    with pytest.raises(ValueError, match=r"train\.jsonl line 1: Brown document 'brown/ca01' has genre 'poetry'"):
        script.main(["--corpus", str(corpus), "--out", str(tmp_path / "out")])
    assert script.main(["--corpus", str(tmp_path / "nowhere")]) == 2
