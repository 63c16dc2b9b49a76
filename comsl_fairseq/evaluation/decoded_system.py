"""A decoded system: the fairseq-generate logs of one model, grouped by source language.

A system is a ``generate-{subset}.txt`` file or a folder of them (as ``examples/covost2/evaluate.sh``
writes: ``generate-test_fr_en.txt`` ...). The language of each utterance comes from the subset's
manifest (``src_lang`` column of ``DATA/{subset}.tsv``) when the data folder is given, else from a
CoVoST-style subset name (``test_fr_en`` -> ``fr``), else the subset name is the group.
"""
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from comsl_fairseq.data.manifest import read_table
from comsl_fairseq.evaluation.logs import read_generate_log

logger = logging.getLogger(__name__)

_SUBSET_LANG = re.compile(r"^(?:test|dev|valid)_(.+)_en$")


@dataclass
class Group:
    """Utterances of one language: keys are (subset, sample id), aligned with hyps and refs."""
    keys: list = field(default_factory=list)
    hyps: list = field(default_factory=list)
    refs: list = field(default_factory=list)


def generate_logs(path: Path) -> list:
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob("generate-*.txt")) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{path}: no fairseq-generate output (a generate-SUBSET.txt file or a folder of them)")
    return files


def subset_of(log: Path) -> str:
    name = log.stem
    return name[len("generate-"):] if name.startswith("generate-") else name


def manifest_column(manifest: Path, column: str) -> list:
    """One column of a manifest, in row order."""
    header, rows = read_table(manifest)
    if column not in header:
        raise ValueError(f"{manifest}: no column {column!r} (header: {header})")
    return [row[column] for row in rows]


def read_log(log: Path, data: Path | None = None) -> tuple:
    """(subset, sample ids, hyps, refs, per-utterance language) of one generate log."""
    subset = subset_of(log)
    hyps, refs = read_generate_log(log)
    if set(hyps) != set(refs):
        raise ValueError(f"{log}: hypotheses and references do not pair up "
                         f"({len(hyps)} D- lines, {len(refs)} T- lines)")
    ids = sorted(refs)
    manifest = Path(data) / f"{subset}.tsv" if data is not None else None
    if manifest is not None and manifest.is_file():
        langs = manifest_column(manifest, "src_lang")
        if ids != list(range(len(langs))):
            raise ValueError(f"{log}: {len(ids)} decoded utterances for the {len(langs)} rows of {manifest} "
                             "(rows skipped at decoding?); every row must be decoded to split by language")
        return subset, ids, [hyps[i] for i in ids], [refs[i] for i in ids], langs
    m = _SUBSET_LANG.match(subset)
    lang = m.group(1) if m else subset
    return subset, ids, [hyps[i] for i in ids], [refs[i] for i in ids], [lang] * len(ids)


def read_system(path: Path, data: Path | None = None) -> dict:
    """{language: Group} over every generate log of the system."""
    groups = {}
    for log in generate_logs(path):
        subset, ids, hyps, refs, langs = read_log(log, data)
        for i, h, r, lang in zip(ids, hyps, refs, langs, strict=True):
            g = groups.setdefault(lang, Group())
            g.keys.append((subset, i))
            g.hyps.append(h)
            g.refs.append(r)
        logger.info("%s: %d utterances", log, len(ids))
        if not ids:
            raise ValueError(f"{log}: no decoded utterances (no D- lines); is it a complete fairseq-generate log?")
    return groups


def align(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> dict:
    """{language: (hyps_a, hyps_b, refs)} for two systems decoded on the same utterances."""
    if set(a) != set(b):
        raise ValueError(f"{name_a} has languages {sorted(a)}, {name_b} has {sorted(b)}: decode the same test sets")
    out = {}
    for lang in sorted(a):
        ga, gb = a[lang], b[lang]
        by_key = dict(zip(gb.keys, zip(gb.hyps, gb.refs, strict=True), strict=True))
        missing = [k for k in ga.keys if k not in by_key]
        if missing or len(ga.keys) != len(gb.keys):
            raise ValueError(f"{lang}: {name_a} and {name_b} decoded different utterances "
                             f"({len(ga.keys)} vs {len(gb.keys)}; e.g. {missing[:3]} only in {name_a})")
        hyps_b = [by_key[k][0] for k in ga.keys]
        for k, ref, (_, ref_b) in zip(ga.keys, ga.refs, (by_key[k] for k in ga.keys), strict=True):
            if ref != ref_b:
                raise ValueError(f"{lang}: reference of {k} differs between {name_a} and {name_b}: "
                                 f"{ref!r} vs {ref_b!r}")
        out[lang] = (ga.hyps, hyps_b, ga.refs)
    return out
