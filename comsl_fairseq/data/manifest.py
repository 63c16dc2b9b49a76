"""fairseq speech-to-text TSV manifests: their columns, reading and writing.

Columns: ``id audio n_frames src_text tgt_text src_lang tgt_lang`` (``speaker``
optional). ``n_frames`` counts audio samples at 16 kHz (fairseq's raw-audio
convention); it is used for batching and length filtering before any audio is read.
Rows that cannot be used are skipped, each named with its reason, and counted.
"""
import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from comsl_fairseq.vocab.languages import mbart_tag

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "audio", "n_frames", "src_text", "tgt_text", "src_lang", "tgt_lang")
COLUMNS = (*REQUIRED_COLUMNS, "speaker")  # what every manifest writer writes, in this order


class ManifestError(ValueError):
    """A manifest that cannot be read at all (missing file, missing columns)."""


@dataclass
class ManifestRow:
    id: str
    audio: str
    n_samples: int
    src_text: str
    tgt_text: str
    src_tag: str  # mBART-50 tag, e.g. fr_XX
    tgt_tag: str


class BadInputError(ValueError):
    """A row that cannot be used, under --fail-on-bad-input; the message names it."""


class SkipLog:
    """Counts skipped rows by reason and names each one in the log (or, when ``fatal``,
    raises :class:`BadInputError` for the first)."""

    def __init__(self, where: str, fatal: bool = False):
        self.where = where
        self.fatal = fatal
        self.counts = Counter()

    def skip(self, row_id: str, reason: str, detail: str = "") -> None:
        if self.fatal:
            raise BadInputError(f"{self.where}: {row_id}: {reason}{f' ({detail})' if detail else ''} "
                                "(without --fail-on-bad-input such rows are skipped and counted)")
        self.counts[reason] += 1
        logger.warning("%s: skipping %s: %s%s", self.where, row_id, reason, f" ({detail})" if detail else "")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, kept: int) -> str:
        parts = ", ".join(f"{n} {r}" for r, n in sorted(self.counts.items()))
        return f"{self.where}: kept {kept} rows, skipped {self.total}" + (f" ({parts})" if parts else "")


def decoded_lines(path: Path, skips: SkipLog):
    """(line number, text) of each line, decoded one at a time: a leading UTF-8 BOM (Excel
    and Windows tools write one) is dropped, and a line that is not UTF-8 is skipped and
    named by file and line instead of aborting the whole split."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                if line_no == 1:
                    raise ManifestError(f"manifest {path}: the header line is not UTF-8 ({e})") from None
                skips.skip(f"line {line_no} of {path}", "row is not UTF-8",
                           f"byte {raw[e.start:e.start + 1].hex()} at position {e.start}")
                continue
            yield line_no, text.rstrip("\r\n")


def read_manifest(path: Path, skips: SkipLog) -> list:
    """Parse a manifest into :class:`ManifestRow`s; malformed rows are skipped and counted."""
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found")
    rows = []
    lines = decoded_lines(path, skips)
    header = next(lines, (1, None))[1]
    if header is None:
        raise ManifestError(f"manifest {path} is empty (no header line)")
    header = header.split("\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ManifestError(f"manifest {path} lacks column(s) {missing}; header is {header}")
    col = {name: i for i, name in enumerate(header)}
    for line_no, line in lines:
        if not line:
            continue  # blank line
        fields = line.split("\t")
        row_id = fields[col["id"]] if len(fields) > col["id"] else f"line {line_no}"
        if len(fields) != len(header):
            skips.skip(f"{row_id} (line {line_no})", "malformed row",
                       f"{len(fields)} fields, header has {len(header)}")
            continue
        row = _parse_row(row_id, {name: fields[i] for name, i in col.items()}, skips)
        if row is not None:
            rows.append(row)
    return rows


def _parse_row(row_id: str, get: dict, skips: SkipLog):
    """One row's fields -> :class:`ManifestRow`, or None (skipped and counted)."""
    try:
        n_samples = int(get["n_frames"])
    except ValueError:
        skips.skip(row_id, "malformed row", f"n_frames={get['n_frames']!r}")
        return None
    try:
        src_tag, tgt_tag = mbart_tag(get["src_lang"]), mbart_tag(get["tgt_lang"])
    except KeyError as e:
        skips.skip(row_id, "unknown language code", str(e.args[0]).split(";")[0])
        return None
    src_text, tgt_text = get["src_text"].strip(), get["tgt_text"].strip()
    if not src_text:
        skips.skip(row_id, "empty source text")
        return None
    if not tgt_text:
        skips.skip(row_id, "empty target text")
        return None
    return ManifestRow(row_id, get["audio"], n_samples, src_text, tgt_text, src_tag, tgt_tag)


def write_manifest(path: Path, rows, columns=COLUMNS) -> int:
    """Write a manifest: the header, then one line per row (a sequence in ``columns`` order).
    A tab or line break inside a field becomes a space, so that no row can split. Returns the
    number of rows."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"{path}: a row of {len(row)} fields for the {len(columns)} columns {columns}")
            f.write("\t".join(" ".join(str(field).replace("\t", " ").splitlines()) for field in row) + "\n")
            n += 1
    return n


def read_table(path: Path) -> tuple:
    """(header, rows as {column: text} dicts) of a manifest, fields as written: no row is
    checked or skipped (for tools that look up columns; training reads with :func:`read_manifest`)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = list(reader)
        return list(reader.fieldnames or []), rows
