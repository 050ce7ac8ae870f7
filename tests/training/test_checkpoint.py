import json

import pytest
import torch

from gmat.modeling.loading import write_manifest
from gmat.training import checkpoint as ckpt
from gmat.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_model_weights,
    load_training_state,
    save_checkpoint,
)


class NotAllowlisted:
    """A class that torch.load(weights_only=True) must refuse to construct."""


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))


def _state(step):
    return {"step": step, "rng": torch.get_rng_state(), "best": None, "nested": {"a": [1, 2.5, (3, None)]}}


def test_save_and_load_roundtrip(tmp_path):
    model = _model(0)
    path = save_checkpoint(tmp_path, 5, model, _state(5))
    assert latest_checkpoint(tmp_path) == path
    other = _model(1)
    load_model_weights(path, other)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    state = load_training_state(path)
    assert state["step"] == 5 and state["nested"] == {"a": [1, 2.5, (3, None)]}


def test_old_checkpoints_are_pruned(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, _model(step), _state(step), keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000002", "step_00000003"]


def test_crash_in_the_middle_of_saving_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path, 1, _model(0), _state(1))
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half the file is on disk ...
        raise KeyboardInterrupt("killed while saving")  # ... when the process dies

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, _model(1), _state(2))
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == good
    assert not (tmp_path / "step_00000002").exists()
    load_model_weights(good, _model(3))
    assert load_training_state(good)["step"] == 1
    # the next save cleans up the half-written temporary directory
    assert any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    save_checkpoint(tmp_path, 2, _model(1), _state(2))
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


@pytest.mark.parametrize("name", ["model.safetensors", "state.pt"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_checkpoint_error_names_the_file(tmp_path, name, damage):
    path = save_checkpoint(tmp_path, 1, _model(0), _state(1))
    target = path / name
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(target)):
        load_model_weights(path, _model(1)) if name == "model.safetensors" else load_training_state(path)


def test_weights_that_do_not_fit_name_the_file(tmp_path):
    path = save_checkpoint(tmp_path, 1, _model(0), _state(1))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model_weights(path, torch.nn.Linear(4, 8))


def test_state_loading_never_unpickles_arbitrary_objects(tmp_path):
    path = save_checkpoint(tmp_path, 1, _model(0), _state(1))
    with open(path / "state.pt", "wb") as f:
        torch.save({"evil": NotAllowlisted()}, f)  # a global that is not on the allowlist
    write_manifest(path)
    with pytest.raises(CheckpointError, match="state.pt"):
        load_training_state(path)


def test_extra_files_are_saved_atomically_and_listed_in_the_manifest(tmp_path):
    files = {"tokenizer.json": b'{"a": 1}', "tokenizer_config.json": b"{}"}
    path = save_checkpoint(tmp_path / "ckpt", 1, _model(0), _state(1), files=files)
    weights = ckpt.save_weights(tmp_path / "best", _model(0), files)
    for folder in (path, weights):
        manifest = json.loads((folder / "manifest.json").read_text())
        for name, data in files.items():
            assert (folder / name).read_bytes() == data and manifest[name]["bytes"] == len(data)
    for bad in ("model.safetensors", "state.pt", "manifest.json", "../escape.json", "sub/x.json", ".hidden"):
        with pytest.raises(ValueError, match="files"):
            ckpt.save_weights(tmp_path / "bad", _model(0), {bad: b"x"})
    assert not (tmp_path / "bad").exists() and not (tmp_path / "escape.json").exists()


def test_saved_config_names_the_class_that_holds_the_weights(tmp_path):
    """A QA model built from a converted encoder inherits architectures=['GmatModel']; its saved folders must
    name GmatForQuestionAnswering, or loaders that go by the name (gmat export) load it without its head."""
    from gmat import GmatConfig, GmatForQuestionAnswering
    from gmat.modeling.export import load_for_export

    config = GmatConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_memory_tokens=0,
        attention_pattern="dense",
        architectures=["GmatModel"],
    )
    model = GmatForQuestionAnswering(config)
    for folder in (
        ckpt.save_weights(tmp_path / "best", model),
        save_checkpoint(tmp_path / "ckpt", 1, model, _state(1)),
    ):
        assert json.loads((folder / "config.json").read_text())["architectures"] == ["GmatForQuestionAnswering"]
        loaded = load_for_export(folder)
        assert type(loaded) is GmatForQuestionAnswering
        torch.testing.assert_close(loaded.qa_outputs.weight, model.qa_outputs.weight, rtol=0, atol=0)
