"""fairseq's logs: fairseq-train's (text and TensorBoard) and fairseq-generate's output, read in one place.

fairseq-train's text log (``--log-format json`` or ``simple``) and TensorBoard event files
(``--tensorboard-logdir``) are read as records of (tag, update, {key: value}).

Tags are fairseq's: ``train_inner`` (every ``--log-interval`` updates), ``train`` (epoch
averages) and the validation subset's name (``dev``, ``valid``...). Keys lose fairseq's
``{tag}_`` prefix in JSON epoch lines so that every tag uses the same names (``st_loss``, ``bleu``).
"""
import json
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_LINE = re.compile(r"^\S+ \S+ \| \w+ \| (?P<tag>[\w.-]+) \| (?P<rest>.*)$")
_SIMPLE_INNER = re.compile(r"^epoch \d+:\s+\d+ / \d+ (?P<kv>.*)$")
_VALID = re.compile(r"^valid on '(?P<subset>[^']+)' subset$")
_LOG_NAMES = ("train.log", "train.json.log", "log.txt")
_GENERATE_LINE = re.compile(r"^(D|T)-(\d+)\t(.*)$")
_GENERATE_HEADER = re.compile(r"Generate (\S+) with beam=(\d+)")


@dataclass
class Record:
    tag: str
    update: int
    values: dict


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def _json_record(tag: str, rest: str) -> Record | None:
    try:
        raw = json.loads(rest)
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict):
        return None
    prefix = f"{tag}_"
    values = {}
    for key, value in raw.items():
        key = key[len(prefix):] if tag != "train_inner" and key.startswith(prefix) else key
        number = _number(str(value))
        if number is not None:
            values[key] = number
    if "num_updates" not in values:
        return None
    return Record(tag, int(values.pop("num_updates")), values)


def _simple_record(tag: str, rest: str) -> Record | None:
    m = _SIMPLE_INNER.match(rest)
    if m:  # train_inner: "epoch 001:   2 / 4 loss=6.7, st_loss=7.0, ..."
        pairs = [kv.split("=", 1) for kv in m["kv"].split(", ") if "=" in kv]
    else:  # epoch summaries: "epoch 001 | valid on 'dev' subset | loss 6.8 | ..."
        parts = rest.split(" | ")
        if not parts[0].startswith("epoch "):
            return None
        pairs = [p.split(" ", 1) for p in parts[1:] if " " in p and not _VALID.match(p)]
    values = {k: n for k, v in pairs if (n := _number(v.strip())) is not None}
    if "num_updates" not in values:
        return None
    return Record(tag, int(values.pop("num_updates")), values)


def read_log_line(line: str) -> Record | None:
    """The record of one fairseq-train log line (``json`` or ``simple`` format), or None."""
    m = _LINE.match(line.rstrip("\r\n"))
    if not m or m["tag"].startswith(("fairseq", "comsl_fairseq")):
        return None
    rest = m["rest"].strip()
    return _json_record(m["tag"], rest) if rest.startswith("{") else _simple_record(m["tag"], rest)


def read_text_log(path: Path) -> list:
    """Records of a fairseq-train log in ``json`` or ``simple`` format (other lines ignored)."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    return [record for line in lines if (record := read_log_line(line)) is not None]


def _tfrecords(path: Path):
    """The payloads of a TFRecord file (length, CRC, data, CRC), as TensorBoard writes them."""
    data = Path(path).read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        start = pos + 12
        if start + length + 4 > len(data):
            logger.warning("%s: truncated record at byte %d (still being written?)", path, pos)
            return
        yield data[start:start + length]
        pos = start + length + 4


def read_event_file(path: Path, tag: str) -> list:
    """Scalar records of one TensorBoard event file (decoded with tensorboardX's protobuf classes)."""
    from tensorboardX.proto.event_pb2 import Event

    by_step = {}
    for payload in _tfrecords(path):
        event = Event()
        event.ParseFromString(payload)
        for value in event.summary.value:
            if value.HasField("simple_value"):
                by_step.setdefault(int(event.step), {})[value.tag] = float(value.simple_value)
    return [Record(tag, step, values) for step, values in sorted(by_step.items())]


def read_tensorboard_dir(folder: Path) -> list:
    """Records of every ``events.out.tfevents.*`` under a ``--tensorboard-logdir`` folder; the
    sub-folder names the tag (fairseq writes one per tag: ``train_inner``, ``train``, ``dev``)."""
    records = []
    for path in sorted(Path(folder).rglob("events.out.tfevents.*")):
        tag = path.parent.name if path.parent != Path(folder) else "train_inner"
        records += read_event_file(path, tag)
    return records


def read_run(path: Path) -> list:
    """Records of a run given as a text log, a TensorBoard folder, or a save dir holding either."""
    path = Path(path)
    if path.is_file():
        return read_text_log(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such log file or folder")
    for name in _LOG_NAMES:
        if (path / name).is_file():
            return read_text_log(path / name)
    if any(path.rglob("events.out.tfevents.*")):
        return read_tensorboard_dir(path)
    raise FileNotFoundError(f"{path}: no fairseq-train log ({', '.join(_LOG_NAMES)}) and no TensorBoard "
                            "event files; pass the log file itself")


def generate_log_lines(path) -> list:
    """The lines of a fairseq-generate log; bytes that are not UTF-8 are an error naming the file."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a fairseq-generate log: byte {e.start} is not UTF-8 text (a binary "
                         "or damaged file?); pass the generate-SUBSET.txt that fairseq-generate wrote") from None


def read_generate_log(path) -> tuple:
    """{sample id: hypothesis}, {sample id: reference} from a fairseq-generate log: the first
    (best) ``D-`` line of each id (``--nbest`` prints several). An id with two ``T-`` lines
    means two runs in one file, and is refused."""
    hyps, refs = {}, {}
    for line in generate_log_lines(path):
        m = _GENERATE_LINE.match(line)
        if not m:
            continue
        kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "D":  # D-id <tab> score <tab> text (text may be empty)
            hyps.setdefault(idx, rest.split("\t", 1)[1] if "\t" in rest else "")
        elif idx in refs:
            raise ValueError(f"{path}: sample {idx} has two T- lines (two decodes in one file?); "
                             "pass one fairseq-generate output per file")
        else:
            refs[idx] = rest
    return hyps, refs


def read_generate_header(path) -> tuple:
    """(subset, beam) from fairseq-generate's closing ``Generate SUBSET with beam=N`` line,
    (None, None) without one."""
    for line in generate_log_lines(path):
        if m := _GENERATE_HEADER.search(line):
            return m[1], int(m[2])
    return None, None


def write_generate_log(path, refs: list, hyps: list) -> Path:
    """A fairseq-generate log of T- and D- lines (score 0.0), as :func:`read_generate_log` reads
    it, for outputs assembled outside fairseq-generate."""
    path = Path(path)
    lines = []
    for i, (ref, hyp) in enumerate(zip(refs, hyps, strict=True)):
        lines += [f"T-{i}\t{ref}", f"D-{i}\t0.0\t{hyp}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
