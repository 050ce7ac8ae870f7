"""Atomic checkpoints: a process killed in the middle of a save leaves the last good checkpoint loadable."""

import subprocess
import sys
import textwrap

import torch

from gmat.training.checkpoint import latest_checkpoint, load_model_weights, load_training_state


def test_process_killed_while_saving_leaves_the_last_good_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import os, torch
        from gmat.training import checkpoint as ckpt
        torch.manual_seed(0)
        model = torch.nn.Linear(64, 64)
        ckpt.save_checkpoint({str(tmp_path)!r}, 1, model, {{"step": 1}})
        real_save = torch.save
        def save_then_die(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            f.flush()
            os._exit(9)  # SIGKILL-like: no cleanup, no exception handlers
        ckpt.torch.save = save_then_die
        ckpt.save_checkpoint({str(tmp_path)!r}, 2, model, {{"step": 2}})
    """)
    # generous timeout: the child imports torch and transformers
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_00000001"
    assert load_training_state(latest)["step"] == 1
    load_model_weights(latest, torch.nn.Linear(64, 64))
