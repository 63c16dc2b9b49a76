"""The CoVoST 2 README's En->X and both-directions commands, run as pasted on a fake layout:
English clips into de and cy (the added [cy_GB] tag) beside fr/de -> en, tiny models."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_covost_recipe import README, ROOT, make_layout
from tests.test_en_x_prep import make_en_layout

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def en_x_script() -> str:
    """The README's first block (paths, subsets), its X->En preparation and its En->X blocks."""
    text = README.read_text(encoding="utf-8")
    plain = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    en_x = re.findall(r"```bash en-x\n(.*?)```", text, flags=re.S)
    assert len(en_x) == 3 and "prep_covost2.py" in plain[1], "the README lost its En->X commands"
    return "\n".join([plain[0], plain[1], *en_x])


def test_en_x_and_both_directions_recipes_run_as_pasted(tmp_path, mbart_dir, whisper_pt):
    cv, tsv, _ = make_layout(tmp_path)
    make_en_layout(tmp_path)
    exp = tmp_path / "exp"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", CV=str(cv), TSV=str(tsv),
               OUT=str(tmp_path / "out"), EXP=str(exp), MBART50=str(mbart_dir), WHISPER=str(whisper_pt),
               LANGS="fr,de", EN_X_LANGS="de,cy", ARCH="whisper_mbart_composite_tiny", BATCH_SIZE="4",
               GLOBAL_BATCH="4", TRAIN_FLAGS="--cpu --max-update 2 --erm-layer 2", GEN_FLAGS="--cpu --max-len-b 8")
    script = "set -euo pipefail\ncd " + str(ROOT) + "\n" + en_x_script()
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    en_x = json.loads((exp / "en_x" / "eval" / "results.json").read_text())
    assert set(en_x["per_language"]) == {"de", "cy"} and en_x["summary"]["direction"] == "en-x"
    assert "asr_wer" in en_x["per_language"]["de"]  # the English transcripts
    both_x_en = json.loads((exp / "both" / "eval_x_en" / "results.json").read_text())
    both_en_x = json.loads((exp / "both" / "eval_en_x" / "results.json").read_text())
    assert set(both_x_en["per_language"]) == {"fr", "de"} and set(both_en_x["per_language"]) == {"de", "cy"}
    # one validation set of both directions, BLEU per direction
    log = proc.stdout + proc.stderr
    assert "bleu_en_XX-cy_GB" in log and "bleu_fr_XX" in log
