"""Bad input gets one line naming the user's key / flag / file and exit 2, never a traceback (unless --debug)."""

from __future__ import annotations

import pytest
import torch

from gmat.cli import main
from gmat.data.corpus import CorpusError, read_documents
from gmat.tasks.synthetic import SyntheticTask

from .conftest import write_config


def _one_error(caplog):
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0] and "Traceback" not in caplog.text
    return errors[0]


@pytest.fixture
def corrupt_checkpoint(tmp_path):
    config, run_dir = write_config(tmp_path, save_every=2)
    assert main(["train", str(config), "--stop-after", "2"]) == 0
    weights = run_dir / "checkpoints" / "step_00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return config, weights


def test_resume_on_a_corrupt_checkpoint(corrupt_checkpoint, caplog):
    config, weights = corrupt_checkpoint
    caplog.clear()
    assert main(["train", str(config), "--resume"]) == 2
    message = _one_error(caplog)
    assert message.startswith("gmat train: ") and "model.safetensors" in message


def test_debug_and_gmat_debug_show_the_traceback(corrupt_checkpoint, monkeypatch):
    from gmat.training.checkpoint import CheckpointError

    config, _ = corrupt_checkpoint
    with pytest.raises(CheckpointError):
        main(["--debug", "train", str(config), "--resume"])
    with pytest.raises(CheckpointError):
        main(["train", str(config), "--resume", "--debug"])
    monkeypatch.setenv("GMAT_DEBUG", "1")
    with pytest.raises(CheckpointError):
        main(["train", str(config), "--resume"])


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.hidden_size=33", "model.hidden_size"),  # not divisible by 2 heads
        ("model.num_attention_heads=0", "model.num_attention_heads"),
        ("model.hidden_dropout_prob=1.5", "model.hidden_dropout_prob"),
        ("model.attn_backend=nope", "model.attn_backend"),
        ("model.intermediate_size=0", "model.intermediate_size"),
        ("train.grad_clip=-1", "train.grad_clip"),
        ("train.weight_decay=-5", "train.weight_decay"),
    ],
)
def test_config_values_are_checked_by_their_key(tmp_path, caplog, override, key):
    config, run_dir = write_config(tmp_path)
    assert main(["train", str(config), "--set", override]) == 2
    message = _one_error(caplog)
    assert key in message and "GmatConfig" not in message
    assert not run_dir.exists()  # refused before anything ran


def test_a_run_dir_that_is_a_file(tmp_path, caplog):
    config, run_dir = write_config(tmp_path)
    run_dir.write_text("not a folder")
    assert main(["train", str(config)]) == 2
    assert "run_dir" in _one_error(caplog)


def test_ids_outside_the_model_tables(tmp_path, caplog, monkeypatch):
    real = SyntheticTask.batch

    def out_of_vocabulary(self, split, indices):
        batch = real(self, split, indices)
        batch["input_ids"][0, 3] = self.vocab_size + 7
        return batch

    monkeypatch.setattr(SyntheticTask, "batch", out_of_vocabulary)
    config, _ = write_config(tmp_path)
    assert main(["train", str(config)]) == 2
    message = _one_error(caplog)
    assert "input_ids holds 12" in message and "vocab_size=5" in message and "step 1" in message


def test_a_loss_over_zero_labelled_tokens(tmp_path, caplog, monkeypatch):
    real = SyntheticTask.batch

    def unlabelled(self, split, indices):
        batch = real(self, split, indices)
        batch["labels"] = torch.full_like(batch["labels"], -100)
        return batch

    monkeypatch.setattr(SyntheticTask, "batch", unlabelled)
    config, _ = write_config(tmp_path)
    assert main(["train", str(config)]) == 2
    assert "no labelled position" in _one_error(caplog)


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_a_corpus_that_is_not_utf8_names_file_and_line(tmp_path, suffix):
    path = tmp_path / f"corpus{suffix}"
    good = b'{"text": "fine"}\n' if suffix == ".jsonl" else b"fine\n"
    path.write_bytes(good * 2 + b'{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=rf"corpus\{suffix}:3: not valid UTF-8"):
        list(read_documents(path))


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["eval", "mlm", "--model", "M", "--data", "D", "--batch-size", "0"], "--batch-size"),
        (["eval", "mlm", "--model", "M", "--data", "D", "--length", "0"], "--length"),
        (["eval", "rc", "--model", "M", "--data", "D", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_eval_flags_out_of_range(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert f"argument {flag}: must be >= " in capsys.readouterr().err


def test_evaluate_mlm_refuses_length_0_instead_of_a_default(tmp_path):
    from gmat.tasks.mlm import evaluate_mlm

    with pytest.raises(ValueError, match="--length"):
        evaluate_mlm(torch.nn.Linear(1, 1), tmp_path / "none.jsonl", length=0)
