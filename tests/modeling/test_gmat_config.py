from __future__ import annotations

import pytest

from gmat import AttentionPattern, GmatConfig

BAD_CONFIGS = [
    ({"attention_pattern": "sparse"}, "attention_pattern"),
    ({"attention_pattern": "dense", "chunk_size": 8}, "chunk_size"),
    ({"attention_pattern": "chunked", "attention_window": 8}, "attention_window"),
    ({"attention_pattern": "chunked", "chunk_size": 0}, "chunk_size"),
    ({"attention_pattern": "window", "attention_window": -1}, "attention_window"),
    ({"num_memory_tokens": -2}, "num_memory_tokens"),
    ({"num_memory_tokens": 1.5}, "num_memory_tokens"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
    ({"attn_backend": "cuda-magic"}, "attn_backend"),
    ({"attention_probs_dropout_prob": 1.2}, "attention_probs_dropout_prob"),
    ({"max_position_embeddings": 0}, "max_position_embeddings"),
]


def test_default_config_is_valid() -> None:
    config = GmatConfig()
    assert config.model_type == "gmat"
    assert config.build_pattern() == AttentionPattern(num_memory=0, kind="chunked", chunk_size=128)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"attention_pattern": "window"}, AttentionPattern(num_memory=0, kind="window", window=64)),
        (
            {"attention_pattern": "window", "attention_window": 5, "num_memory_tokens": 7},
            AttentionPattern(num_memory=7, kind="window", window=5),
        ),
        (
            {"attention_pattern": "dense", "num_memory_tokens": 2},
            AttentionPattern(num_memory=2, kind="dense"),
        ),
        (
            {"chunk_size": 64, "num_memory_tokens": 16},
            AttentionPattern(num_memory=16, kind="chunked", chunk_size=64),
        ),
    ],
)
def test_pattern_from_config(kwargs: dict, expected: AttentionPattern) -> None:
    assert GmatConfig(**kwargs).build_pattern() == expected


@pytest.mark.parametrize(("kwargs", "field"), BAD_CONFIGS)
def test_bad_config_raises_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        GmatConfig(**kwargs)


def test_config_json_round_trip(tmp_path) -> None:
    config = GmatConfig(
        num_memory_tokens=5,
        attention_pattern="window",
        attention_window=9,
        num_labels=4,
        hidden_size=64,
        num_attention_heads=4,
    )
    config.save_pretrained(tmp_path)
    loaded = GmatConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.build_pattern() == config.build_pattern()
    assert loaded.num_labels == 4


def test_one_pattern_rule_names_the_callers_keys_and_fills_the_default_size() -> None:
    from gmat.modeling.factory import ModelSettings
    from gmat.ops import AttentionPattern

    # the run settings, GmatConfig and AttentionPattern all go through AttentionPattern's rule
    assert ModelSettings(attention_pattern="window").attention_window == 64  # default w, no chunk size
    assert ModelSettings(attention_pattern="window").chunk_size is None
    assert ModelSettings(attention_pattern="chunked").chunk_size == 128
    with pytest.raises(ValueError, match=r"^model\.chunk_size is only valid for model\.attention_pattern='chunked'"):
        ModelSettings(attention_pattern="window", chunk_size=128, attention_window=32)
    with pytest.raises(ValueError, match=r"^GmatConfig\.attention_window must be an int >= 0"):
        GmatConfig(attention_pattern="window", attention_window=-1)
    with pytest.raises(ValueError, match=r"^window is required for kind='window'"):
        AttentionPattern(num_memory=0, kind="window")
    settings = ModelSettings(num_memory_tokens=4, attention_pattern="chunked", chunk_size=64)
    assert GmatConfig(**settings.pattern().config_fields()).build_pattern() == settings.pattern()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"attention_pattern": "chunked", "chunk_size": 4097, "max_position_embeddings": 4096}, "chunk_size"),
        ({"attention_pattern": "window", "attention_window": 64, "max_position_embeddings": 64}, "attention_window"),
    ],
)
def test_a_chunk_or_window_wider_than_any_input_warns_once(kwargs: dict, field: str) -> None:
    with pytest.warns(UserWarning, match=rf"GmatConfig\.{field}=\d+ covers max_position_embeddings") as caught:
        GmatConfig(**kwargs)
        GmatConfig(**kwargs)  # the same values again: no second warning
    assert len([w for w in caught if field in str(w.message)]) == 1


def test_a_chunk_that_fits_does_not_warn(recwarn) -> None:
    GmatConfig(attention_pattern="chunked", chunk_size=512, max_position_embeddings=512)
    GmatConfig(attention_pattern="window", attention_window=511, max_position_embeddings=512)
    assert not [w for w in recwarn if "covers max_position_embeddings" in str(w.message)]
