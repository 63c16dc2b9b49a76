"""Reading fairseq-generate output: detokenized hypotheses (D-) and references (T-)."""
import re
from pathlib import Path

_LINE = re.compile(r"^(D|T)-(\d+)\t(.*)$")


def read_generate_log(path) -> tuple:
    """{sample id: hypothesis}, {sample id: reference} from a fairseq-generate log."""
    hyps, refs = {}, {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "D":  # D-id <tab> score <tab> text (text may be empty)
            hyps[idx] = rest.split("\t", 1)[1] if "\t" in rest else ""
        else:
            refs[idx] = rest
    return hyps, refs
