"""Write tests/fixtures/old_checkpoint/: a tiny trained checkpoint, its data and its hypotheses.

A developer tool. The folder it writes is committed, so that a test can check that a
checkpoint saved by earlier code still loads and decodes to the same hypotheses:

    python scripts/write_checkpoint_fixture.py tests/fixtures/old_checkpoint
"""
import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def relative_names(obj, root: str):
    """obj with every string naming a path under root rewritten relative to root (so the
    committed checkpoint holds no path of the machine that wrote it)."""
    if isinstance(obj, dict):
        return {k: relative_names(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(relative_names(v, root) for v in obj)
    if isinstance(obj, str) and root in obj:
        return obj.replace(root + os.sep, "").replace(root, ".")
    return obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="fixture folder to (re)write")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests import builders

    out = args.out.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mbart = builders.write_mbart_archive(tmp / "mbart")
        whisper = builders.write_whisper_checkpoint(tmp / "whisper.pt")
        data = builders.write_speech_data(tmp / "data", mbart, splits=(("train", 8), ("dev", 2), ("test", 3)))
        builders.run(*builders.train_cmd(data, whisper, mbart / "model.pt", tmp / "ckpt",
                                         "--no-save-optimizer-state", "--no-epoch-checkpoints"))
        if out.exists():
            shutil.rmtree(out)
        (out / "clips").mkdir(parents=True)
        import torch

        from comsl_fairseq.checkpoints.allowlist import load_weights_only

        state = load_weights_only(tmp / "ckpt" / "checkpoint_last.pt")
        state = {k: (v if k == "model" else relative_names(v, str(tmp))) for k, v in state.items()}
        torch.save(state, out / "checkpoint.pt")
        for name in ("dict.txt", "sentence.bpe.model"):
            shutil.copy(mbart / name, out / name)
        rows = (data / "test.tsv").read_text(encoding="utf-8").splitlines()
        (out / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        for row in rows[1:]:
            shutil.copy(data / "clips" / row.split("\t")[1], out / "clips")
        (out / "config.yaml").write_text(
            "vocab_filename: dict.txt\nbpe_tokenizer: {bpe: sentencepiece, sentencepiece_model: sentence.bpe.model}\n"
            "audio_root: clips\n", encoding="utf-8")
        hyps = builders.decoded_lines(out, out / "checkpoint.pt")
    (out / "hypotheses.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(hyps)} hypothesis lines")


if __name__ == "__main__":
    main()
