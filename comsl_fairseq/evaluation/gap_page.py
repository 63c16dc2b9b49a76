"""The modality-gap HTML page: one sortable row per test utterance.

The modality-gap HTML page: one table row per test utterance with an audio player, the gold
transcript and translation, the ASR, MT, cascade and ST outputs with sentence-level scores, and
the per-utterance gaps; columns sort on click (inline script, no network, no external files).

Audio: manifest paths are resolved against the data config's ``audio_root``; fairseq zip entries
(``file.zip:offset:length``) are copied out next to the page so that a browser can play them.
"""
import html
import logging
import os
import re
from pathlib import Path

from comsl_fairseq.data.config import DataConfig
from comsl_fairseq.evaluation.decoded_system import manifest_column

logger = logging.getLogger(__name__)

_ZIP_ENTRY = re.compile(r"^(?P<path>.+\.zip):(?P<offset>\d+):(?P<length>\d+)$")
_SNIFF = {b"RIFF": ".wav", b"fLaC": ".flac", b"OggS": ".ogg", b"ID3": ".mp3"}

COLUMNS = [  # (header, sortable as number)
    ("lang", False), ("id", False), ("audio", False), ("transcript", False), ("ASR", False),
    ("ASR error %", True), ("reference", False), ("MT", False), ("MT BLEU", True), ("cascade", False),
    ("cascade BLEU", True), ("ST", False), ("ST BLEU", True), ("MT − ST", True), ("cascade − ST", True),
]

_SCRIPT = r"""
const heads = document.querySelectorAll('#utterances th');
function sortBy(col, dir) {
  const body = document.querySelector('#utterances tbody');
  const numeric = heads[col].dataset.numeric === '1';
  heads.forEach(h => delete h.dataset.dir);
  heads[col].dataset.dir = dir;
  const key = r => numeric ? parseFloat(r.cells[col].dataset.value) : r.cells[col].textContent;
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    const c = numeric ? x - y : String(x).localeCompare(String(y));
    return dir === 'asc' ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
}
heads.forEach((th, col) => th.addEventListener('click', () => sortBy(col, th.dataset.dir === 'asc' ? 'desc' : 'asc')));
// page.html#sort=COLUMN or #sort=COLUMN-desc opens the page sorted (e.g. the largest gaps first)
function fromHash() {
  const m = location.hash.match(/^#sort=(\d+)(-desc)?$/);
  if (m && heads[Number(m[1])]) sortBy(Number(m[1]), m[2] ? 'desc' : 'asc');
}
window.addEventListener('hashchange', fromHash);
fromHash();
"""

_STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 1em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 3px 5px; vertical-align: top; }
th { background: #eee; cursor: pointer; position: sticky; top: 0; } th[data-dir=asc]::after { content: ' ▲'; }
th[data-dir=desc]::after { content: ' ▼'; } td.num { text-align: right; } .neg { color: #a00; } .pos { color: #070; }
audio { width: 180px; height: 28px; }
"""


def audio_files(data: Path, subsets: list, out_dir: Path, config_yaml: str = "config.yaml") -> dict:
    """{(subset, row index): playable audio file or None} for every manifest row."""
    cfg = DataConfig.load(Path(data) / config_yaml)
    files = {}
    for subset in subsets:
        manifest = Path(data) / f"{subset}.tsv"
        ids, audio = manifest_column(manifest, "id"), manifest_column(manifest, "audio")
        for i, (uid, entry) in enumerate(zip(ids, audio, strict=True)):
            m = _ZIP_ENTRY.match(entry)
            if m:
                zip_path = Path(m["path"]) if Path(m["path"]).is_absolute() else cfg.audio_root / m["path"]
                with open(zip_path, "rb") as f:
                    f.seek(int(m["offset"]))
                    blob = f.read(int(m["length"]))
                suffix = next((s for magic, s in _SNIFF.items() if blob.startswith(magic)), ".wav")
                target = out_dir / "audio" / f"{subset}_{i:06d}{suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob)
                files[(subset, i)] = target
                continue
            path = Path(entry) if Path(entry).is_absolute() else cfg.audio_root / entry
            if path.is_file():
                files[(subset, i)] = path
            else:
                logger.warning("%s: audio of %s (%s) not found; its row has no player", manifest, uid, path)
                files[(subset, i)] = None
    return files


def _cell(text, value=None, cls="") -> str:
    attrs = f' data-value="{value}"' if value is not None else ""
    if value is not None and cls == "gap":
        cls = "num " + ("neg" if value < 0 else "pos" if value > 0 else "")
    elif value is not None:
        cls = "num"
    return f'<td{attrs} class="{cls.strip()}">{html.escape(str(text))}</td>' if cls.strip() else \
        f"<td{attrs}>{html.escape(str(text))}</td>"


def _row(u, audio: Path | None, page_dir: Path) -> str:
    if audio is not None:
        src = html.escape(Path(os.path.relpath(audio, page_dir)).as_posix(), quote=True)
        player = f'<td><audio controls preload="none" src="{src}"></audio></td>'
    else:
        player = "<td>(audio missing)</td>"
    cells = [_cell(u.lang), _cell(f"{u.subset}:{u.index}"), player, _cell(u.transcript), _cell(u.asr),
             _cell(u.asr_error, u.asr_error), _cell(u.reference)]
    for name in ("mt", "cascade", "st"):
        cells += [_cell(u.outputs[name]), _cell(u.scores[name]["bleu"], u.scores[name]["bleu"])]
    cells += [_cell(f"{gap:+.1f}", gap, "gap") for gap in (u.gap_mt_st, u.gap_cascade_st)]
    key = html.escape(f"{u.subset}:{u.index}", quote=True)
    return f'<tr data-key="{key}" data-lang="{html.escape(u.lang, quote=True)}">' + "".join(cells) + "</tr>"


def render(utterances: list, audio: dict, page: Path, summary_html: str, title: str) -> None:
    """Write the page; ``audio`` maps (subset, index) to a file or None."""
    page = Path(page)
    head = "".join(f'<th data-numeric="{int(num)}">{html.escape(name)}</th>' for name, num in COLUMNS)
    body = "\n".join(_row(u, audio.get((u.subset, u.index)), page.parent) for u in utterances)
    page.write_text(
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{summary_html}\n"
        f"<p>{len(utterances)} utterances. Sentence BLEU: sacreBLEU, effective order. ASR error: Whisper "
        "BasicTextNormalizer, WER (CER for zh-CN / ja). Click a column header to sort; "
        f'<a href="#sort={len(COLUMNS) - 2}-desc">'
        "largest MT − ST gap first</a>.</p>\n"
        f'<table id="utterances"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>\n'
        f"<script>{_SCRIPT}</script></body></html>\n", encoding="utf-8")
    logger.info("wrote %s (%d rows)", page, len(utterances))


def summary_table(rows: dict) -> str:
    """The per-language figures as an HTML table for the top of the page."""
    head = ("<tr><th>language</th><th>n</th><th>ST BLEU</th><th>MT BLEU</th><th>cascade BLEU</th>"
            "<th>MT − ST [95 % CI]</th><th>cascade − ST [95 % CI]</th><th>ASR error %</th></tr>")
    lines = []
    for lang, r in rows.items():
        gaps = "".join(f"<td>{r[f'gap_{n}_st']:+.2f} [{r[f'gap_{n}_st_ci'][0]:+.2f}, "
                       f"{r[f'gap_{n}_st_ci'][1]:+.2f}]</td>" for n in ("mt", "cascade"))
        asr = r.get("asr_wer", r.get("asr_cer"))
        lines.append(f"<tr><td>{html.escape(lang)}</td><td>{r['utterances']}</td><td>{r['st_bleu']:.2f}</td>"
                     f"<td>{r['mt_bleu']:.2f}</td><td>{r['cascade_bleu']:.2f}</td>{gaps}<td>{asr:.1f}</td></tr>")
    return f'<table id="summary">{head}{"".join(lines)}</table>'
