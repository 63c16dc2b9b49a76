"""One model, both directions: X->En and En->X rows together, each with its own target tag.

The target tag comes from each row's ``tgt_lang``: it starts the target and the decoder input in
training, it is what fairseq-generate's ``--prefix-size 1`` forces for that row, validation BLEU
is grouped by direction, and the trained model's language check allows exactly the learned pairs.
"""
import random
import subprocess
from pathlib import Path

import pytest

from comsl_fairseq.data.manifest import SkipLog, read_manifest, read_table, write_manifest
from comsl_fairseq.vocab.languages import tag_symbol
from tests import builders

# rows of the session data folder (fr/de -> en) turned around: the same clips, English source
EN_X_TARGETS = ("de", "fr")


def add_en_x(data: Path, split: str, seed: int) -> Path:
    """``{split}_en_x.tsv``: the rows of ``{split}.tsv`` as English speech into de / fr."""
    rng = random.Random(seed)
    _, rows = read_table(data / f"{split}.tsv")
    out = []
    for i, r in enumerate(rows):
        tgt = EN_X_TARGETS[i % 2]
        out.append([f"{r['id']}_en_{tgt}", r["audio"], r["n_frames"], builders.sentences("en", 1, rng)[0],
                    builders.sentences(tgt, 1, rng)[0], "en", tgt, r["speaker"]])
    write_manifest(data / f"{split}_en_x.tsv", out)
    return data / f"{split}_en_x.tsv"


@pytest.fixture(scope="module")
def both_data(tmp_path_factory, data_dir):
    data = builders.copy_data(data_dir, tmp_path_factory.mktemp("both") / "data")
    for seed, split in enumerate(("train", "dev", "test")):
        add_en_x(data, split, seed)
    # one test set holding both directions, rows interleaved, so that batches mix target tags
    header, x_en = read_table(data / "test.tsv")
    _, en_x = read_table(data / "test_en_x.tsv")
    mixed = [r for pair in zip(x_en, en_x, strict=True) for r in pair]
    write_manifest(data / "test_mixed.tsv", [[r[c] for c in header] for r in mixed], columns=header)
    return data


def tag_ids(task, manifest: Path) -> tuple:
    """(source tag ids, target tag ids) of a manifest's rows, from its language columns."""
    rows = read_manifest(manifest, SkipLog("t"))
    d = task.target_dictionary
    return ([d.index(tag_symbol(r.src_tag)) for r in rows], [d.index(tag_symbol(r.tgt_tag)) for r in rows])


def test_training_batches_carry_each_rows_own_tags(both_data):
    _, task, _ = builders.build_task_and_model(both_data, "--train-subset", "train,train_en_x")
    task.load_dataset("train,train_en_x")
    ds = task.datasets["train,train_en_x"]
    src_ids = tag_ids(task, both_data / "train.tsv")[0] + tag_ids(task, both_data / "train_en_x.tsv")[0]
    tgt_ids = tag_ids(task, both_data / "train.tsv")[1] + tag_ids(task, both_data / "train_en_x.tsv")[1]
    assert len(set(tgt_ids)) == 3  # en, de, fr targets in one training set
    batch = ds.collater([ds[i] for i in range(len(ds))])
    order = batch["id"].tolist()
    eos = task.target_dictionary.eos()
    assert batch["target"][:, 0].tolist() == [tgt_ids[i] for i in order]  # [tgt_tag] y </s>
    assert batch["net_input"]["prev_output_tokens"][:, 0].eq(eos).all()  # </s> [tgt_tag] y
    assert batch["net_input"]["prev_output_tokens"][:, 1].tolist() == [tgt_ids[i] for i in order]
    assert batch["transcript"][:, 0].tolist() == [src_ids[i] for i in order]  # ASR: English transcripts too
    assert batch["net_input"]["src_lang_tags"].tolist() == [src_ids[i] for i in order]


def test_validation_bleu_is_grouped_by_direction(both_data):
    _, task, _ = builders.build_task_and_model(both_data, "--eval-bleu-per-language")
    task.load_dataset("dev+dev_en_x")
    assert task.valid_langs == ["de_DE", "en_XX-de_DE", "en_XX-fr_XX", "fr_XX"]
    # each group's BLEU tokenized for its target language
    assert [task.group_tokenizer(g) for g in ("fr_XX", "en_XX-de_DE", "en_XX-zh_CN")] == ["13a", "13a", "zh"]


@pytest.fixture(scope="module")
def both_ways_checkpoint(tmp_path_factory, both_data, whisper_pt, mbart_dir):
    save = tmp_path_factory.mktemp("both_ckpt")
    builders.run(*builders.train_cmd(both_data, whisper_pt, mbart_dir / "model.pt", save, "--train-subset",
                                     "train,train_en_x", "--valid-subset", "dev+dev_en_x", "--erm-layer", "2",
                                     "--no-epoch-checkpoints"))
    return save / "checkpoint_last.pt"


@pytest.mark.subprocess
def test_fairseq_generate_forces_each_rows_own_tag(both_data, both_ways_checkpoint, tmp_path, monkeypatch):
    """fairseq-generate's own main() on a test set mixing both directions: the prefix it forces
    and the first token of every hypothesis are the row's target tag; the printed text has no tag."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import generate

    from comsl_fairseq.tasks.comsl_speech_to_text import ComslSpeechToTextTask

    seen = {}
    real_step = ComslSpeechToTextTask.inference_step

    def recording_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        hypos = real_step(self, generator, models, sample, prefix_tokens=prefix_tokens, constraints=constraints)
        for i, row in enumerate(sample["id"].tolist()):
            seen[row] = (prefix_tokens[i].tolist(), int(hypos[i][0]["tokens"][0]))
        return hypos

    monkeypatch.setattr(ComslSpeechToTextTask, "inference_step", recording_step)
    argv = builders.generate_cmd(both_data, both_ways_checkpoint, "--gen-subset", "test_mixed", "--max-len-a", "0",
                                 "--max-len-b", "8", "--required-batch-size-multiple", "1", "--results-path", tmp_path)
    generate.main(convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_generation_parser(), [str(a) for a in argv[1:]])))
    out = (tmp_path / "generate-test_mixed.txt").read_text()
    _, task, _ = builders.build_task_and_model(both_data)
    _, tgt_ids = tag_ids(task, both_data / "test_mixed.tsv")
    assert len(set(tgt_ids)) == 3 and sorted(seen) == list(range(len(tgt_ids)))
    for row, (prefix, first) in seen.items():
        assert prefix == [tgt_ids[row]] and first == tgt_ids[row], row
    hyps = [line for line in out.splitlines() if line.startswith("H-")]
    assert len(hyps) == len(tgt_ids) and not any("[" in line for line in hyps)


@pytest.mark.subprocess
def test_translator_allows_the_learned_pairs_only(both_ways_checkpoint):
    from comsl_fairseq.inference.languages import UnseenLanguageError
    from comsl_fairseq.inference.translator import SpeechTranslator

    translator = SpeechTranslator.from_pretrained(both_ways_checkpoint, device="cpu", beam=1, max_len_b=4)
    assert translator.languages.describe() == "de-en, en-de, en-fr, fr-en"
    for src, tgt in (("en", "de"), ("en", "fr"), ("fr", "en"), ("de", "en")):
        translator.check_languages(src, tgt)
    translator.check_languages("en", None)  # English transcription: learned by the En->X rows' ASR term
    with pytest.raises(UnseenLanguageError, match="not trained to translate fr into de"):
        translator.check_languages("fr", "de")


@pytest.mark.subprocess
def test_translate_command_into_german_and_a_refused_pair(both_data, both_ways_checkpoint):
    clip = sorted((both_data / "clips").glob("test_*"))[0]
    common = [str(builders.BIN / "comsl-translate"), "--path", str(both_ways_checkpoint), "--beam", "2",
              "--max-len-b", "4", "--cpu", "--keep-no-speech", str(clip)]
    proc = subprocess.run([*common, "--src-lang", "en", "--tgt-lang", "de"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"{clip}\t") and "[" not in proc.stdout
    refused = subprocess.run([*common, "--src-lang", "fr", "--tgt-lang", "de"], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0 and "not trained to translate fr into de" in refused.stderr
    assert "de-en, en-de, en-fr, fr-en" in refused.stderr and "Traceback" not in refused.stderr
