#!/usr/bin/env python3
"""Check a Hugging Face export against fairseq-generate on a whole test set (developer tool).

    .venv/bin/python scripts/hf_parity.py --path exp/demo/checkpoint_last.pt --data data/toy \
        --subset test --out exp/hf_parity

1. decodes SUBSET with fairseq-generate, beam 5 and greedy (``--prefix-size 1``, the target tag forced);
2. exports the checkpoint with ``comsl-export --format hf`` and copies the folder alone elsewhere;
3. in a fresh interpreter that cannot import fairseq, comsl_fairseq or openai-whisper, decodes the
   same clips with transformers (``generate(num_beams=5)`` and greedy);
4. counts identical hypotheses per mode and writes OUT/report.json with the first differences.
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from comsl_fairseq.hf.standalone import WITHOUT_OUR_STACK

HF_DECODE = WITHOUT_OUR_STACK + r'''
import json, sys, time
import numpy as np, torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor
folder, wavs_path, langs_path, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = AutoModelForSpeechSeq2Seq.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
wavs = dict(np.load(wavs_path)); langs = json.load(open(langs_path))
ids = sorted(wavs, key=lambda u: -wavs[u].size)
out = {"beam5": {}, "greedy": {}}
start = time.time()
with torch.no_grad():
    for mode, beams in (("beam5", 5), ("greedy", 1)):
        for s in range(0, len(ids), batch):
            b = ids[s:s + batch]
            inputs = processor([wavs[u] for u in b], sampling_rate=16000, src_lang=[langs[u] for u in b],
                               return_tensors="pt")
            out[mode].update(zip(b, processor.batch_decode(model.generate(**inputs, tgt_lang="en", num_beams=beams))))
out["seconds"] = time.time() - start
out["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(out))
'''


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", type=Path, required=True, help="checkpoint written by fairseq-train")
    p.add_argument("--data", type=Path, required=True, help="data folder (config.yaml and SUBSET.tsv)")
    p.add_argument("--subset", default="test", help="manifest to decode (default: test)")
    p.add_argument("--config-yaml", default="config.yaml",
                   help="data config the model trained with, relative to --data (e.g. the trimmed config_x_en.yaml)")
    p.add_argument("--out", type=Path, required=True, help="work folder (decodes, export, report.json)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per batch in both decoders")
    args = p.parse_args(argv)

    from comsl_fairseq.cli.export import main as export_main
    from comsl_fairseq.data.audio import read_audio
    from comsl_fairseq.data.config import DataConfig
    from comsl_fairseq.data.manifest import read_table
    from comsl_fairseq.evaluation.logs import read_generate_log
    from comsl_fairseq.training.fairseq_setup import USER_DIR

    args.out = args.out.resolve()  # the transformers process runs in another folder
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    _, rows = read_table(args.data / f"{args.subset}.tsv")
    order = [r["id"] for r in rows]
    fairseq = {}
    for mode, beam in (("beam5", 5), ("greedy", 1)):
        log = args.out / f"generate-{mode}.txt"
        with open(log, "w", encoding="utf-8") as f:
            cmd = [str(Path(sys.executable).parent / "fairseq-generate"), str(args.data), "--user-dir", str(USER_DIR),
                   "--task", "comsl_speech_to_text", "--config-yaml", args.config_yaml, "--gen-subset", args.subset,
                   "--path", str(args.path), "--beam", str(beam), "--prefix-size", "1", "--batch-size",
                   str(args.batch_size), "--required-batch-size-multiple", "1", "--cpu"]
            subprocess.run(cmd, stdout=f, stderr=subprocess.DEVNULL, check=True)
        hyps, _ = read_generate_log(log)
        fairseq[mode] = {order[i]: text for i, text in hyps.items()}
    if export_main(["--path", str(args.path), "--out", str(args.out / "hf"), "--format", "hf"]) != 0:
        return 1
    folder = Path(shutil.copytree(args.out / "hf", args.out / "elsewhere" / "model"))
    shutil.rmtree(args.out / "hf")
    cfg = DataConfig.load(args.data / args.config_yaml)
    np.savez(args.out / "wavs.npz", **{r["id"]: read_audio(r["audio"], cfg.audio_root)[0] for r in rows})
    (args.out / "langs.json").write_text(json.dumps({r["id"]: r["src_lang"] for r in rows}))
    proc = subprocess.run([sys.executable, "-c", HF_DECODE, str(folder), str(args.out / "wavs.npz"),
                           str(args.out / "langs.json"), str(args.batch_size)],
                          capture_output=True, text=True, cwd=args.out / "elsewhere")
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    hf = json.loads(proc.stdout.strip().splitlines()[-1])
    report = {"subset": args.subset, "clips": len(order), "transformers_seconds": round(hf["seconds"], 1),
              "blocked_modules_imported": hf["imported"]}
    for mode in ("beam5", "greedy"):
        diffs = [(u, fairseq[mode].get(u), hf[mode][u]) for u in order if fairseq[mode].get(u) != hf[mode][u]]
        report[mode] = {"identical": len(order) - len(diffs), "total": len(order), "differences": diffs[:20]}
        print(f"{mode}: {len(order) - len(diffs)} / {len(order)} hypotheses identical")
    (args.out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
