"""Scores into languages other than English: BLEU tokenized per target language, chrF beside it."""
import json
import logging
from pathlib import Path

import pytest

from comsl_fairseq.cli import score_covost
from comsl_fairseq.evaluation import scoring
from comsl_fairseq.evaluation.logs import write_generate_log

ZH_REF, ZH_HYP = "我喜欢吃新鲜的苹果", "我喜欢吃新鲜的香蕉"
JA_REF, JA_HYP = "私は新しいりんごを食べるのが好きです", "私は新しいバナナを食べるのが好きです"


def test_bleu_tokenizer_follows_the_target_language():
    assert scoring.bleu_tokenizer(None) == scoring.bleu_tokenizer("en") == "13a"
    assert scoring.bleu_tokenizer("de") == scoring.bleu_tokenizer("cy") == "13a"
    assert scoring.bleu_tokenizer("zh-CN") == scoring.bleu_tokenizer("zh_CN") == "zh"


def test_chinese_is_scored_on_characters_not_on_whole_lines():
    zh = scoring.corpus_scores([ZH_HYP], [ZH_REF], lang="zh-CN")
    plain = scoring.corpus_scores([ZH_HYP], [ZH_REF])  # 13a: the unspaced line is one token
    assert "tok:zh" in zh["bleu_signature"] and "tok:13a" in plain["bleu_signature"]
    assert zh["bleu"] > 40 and plain["bleu"] == 0.0
    assert zh["chrf"] == plain["chrf"] > 0  # chrF reads characters whatever the tokenizer


def test_japanese_is_scored_with_mecab():
    assert scoring.mecab_problem() == "", "mecab-python3 and ipadic are in requirements.txt"
    ja = scoring.corpus_scores([JA_HYP], [JA_REF], lang="ja")
    assert "tok:ja-mecab" in ja["bleu_signature"] and ja["bleu"] > 40


def test_japanese_without_mecab_falls_back_to_characters_loudly(monkeypatch, caplog):
    monkeypatch.setattr(scoring, "mecab_problem", lambda: "MeCab is not installed")
    monkeypatch.setattr(scoring, "_FALLBACK_WARNED", set())
    with caplog.at_level(logging.WARNING, logger=scoring.__name__):
        ja = scoring.corpus_scores([JA_HYP], [JA_REF], lang="ja")
    assert "tok:char" in ja["bleu_signature"] and ja["bleu"] > 40
    assert "ja-mecab tokenizer cannot run (MeCab is not installed)" in caplog.text


def _generate_log(path: Path, pairs: list) -> None:  # pairs of (hypothesis, reference)
    write_generate_log(path, [ref for _, ref in pairs], [hyp for hyp, _ in pairs])


def test_score_covost_en_x_per_target_language(tmp_path, capsys):
    data, gen = tmp_path / "data", tmp_path / "eval"
    data.mkdir()
    english = ["I like fresh apples", "the black cat"]
    for lang, st in (("de", [("ich mag frische äpfel", "ich mag frische äpfel"), ("die katze", "die schwarze katze")]),
                     ("zh-CN", [(ZH_HYP, ZH_REF), ("黑猫", "黑色的猫")])):
        rows = "".join(f"{uid}\t{uid}.wav\t{src}\t{ref}\ten\t{lang}\n"
                       for uid, src, (_, ref) in zip("ab", english, st, strict=True))
        (data / f"test_en_{lang}.tsv").write_text("id\taudio\tsrc_text\ttgt_text\tsrc_lang\ttgt_lang\n" + rows,
                                                  encoding="utf-8")
        _generate_log(gen / f"generate-test_en_{lang}.txt", st)
        _generate_log(gen / "asr" / f"generate-test_en_{lang}.txt", [("I like fresh apples.", english[0]),
                                                                     ("the cat", english[1])])
    assert score_covost.main(["--gen-dir", str(gen), "--data", str(data), "--direction", "en-x",
                              "--langs", "de,zh-CN"]) == 0
    result = json.loads((gen / "results.json").read_text())
    de, zh = result["per_language"]["de"], result["per_language"]["zh-CN"]
    assert (de["bleu_tokenize"], zh["bleu_tokenize"]) == ("13a", "zh")
    assert zh["bleu"] == pytest.approx(scoring.corpus_scores([ZH_HYP, "黑猫"], [ZH_REF, "黑色的猫"], "zh-CN")["bleu"])
    assert de["asr_wer"] == pytest.approx(100 / 7, abs=0.01)  # English transcripts: 1 deletion in 7 words
    assert result["summary"]["direction"] == "en-x" and result["summary"]["languages"] == 2
    assert "paper_large" not in de and len(result["sacrebleu_signatures"]) == 2
    md = (gen / "results.md").read_text()
    assert "| en-zh-CN | 2 |" in md and "| zh |" in md and "average of 2 pairs" in md
    # X->En names are not looked for, and a missing pair is named with the En->X file names
    assert score_covost.main(["--gen-dir", str(gen), "--data", str(data), "--direction", "en-x"]) == 2
    err = capsys.readouterr().err
    assert "test_en_LANG.tsv" in err and "both files are there for: de,zh-CN" in err
