"""GMAT inside the stock Hugging Face training stack: Trainer + DataCollatorForLanguageModeling, unchanged."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

from gmat import GmatForMaskedLM

pytest.importorskip("accelerate")  # transformers.Trainer needs it

# transformers 5.x renamed the flag; older versions only know the first name.
CHECKPOINTING_FLAG = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)

SENTENCES = [
    "Global memory lets a sparse transformer move information across the whole sequence.",
    "Each chunk attends to itself and to a handful of memory slots.",
    "Memory slots attend to every token, so two hops connect any pair of positions.",
    "The quick brown fox jumps over the lazy dog.",
    "Padding must never change the outputs at real positions.",
    "Conversion from BERT keeps every encoder weight unchanged.",
]


def test_trainer_mlm_smoke(minilm_path, gmat_config, tmp_path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = gmat_config(
        vocab_size=tokenizer.vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        num_memory_tokens=2,
        chunk_size=8,
    )
    model = GmatForMaskedLM(config)
    dataset = [{"input_ids": ids} for ids in tokenizer(SENTENCES * 2)["input_ids"]]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        **{CHECKPOINTING_FLAG: True},
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset[:4], data_collator=collator)
    result = trainer.train()
    assert result.global_step == 4
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    after = model.state_dict()
    assert not torch.equal(before["gmat.embeddings.memory_embeddings"], after["gmat.embeddings.memory_embeddings"])
    metrics = trainer.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    prediction = trainer.predict(dataset[:4])
    assert prediction.predictions.shape[-1] == tokenizer.vocab_size  # logits only, states ignored
