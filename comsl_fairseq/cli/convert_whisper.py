"""Convert a Whisper model to the openai-whisper checkpoint format.

    comsl-convert-whisper SRC --out OUT.pt

SRC is detected from its files:

- a Hugging Face transformers Whisper folder (``config.json`` with ``model_type: whisper``
  and ``model.safetensors`` or ``pytorch_model.bin``), the format most fine-tuned Whisper
  models are published in;
- a CTranslate2 Whisper folder (``model.bin`` + ``config.json``), as used by faster-whisper.
  ``model.bin`` is read here directly (binary version 6: a header, then each variable's
  name, shape, dtype and bytes, then aliases); no ctranslate2 install is needed.

OUT.pt holds ``{"dims": ModelDimensions fields, "model_state_dict": ...}``, what
``whisper.load_model(OUT.pt)`` reads; the converter checks that every key matches a
``whisper.model.Whisper`` of those dims before writing. Dims come from the weights (and the
head counts from the config or the CTranslate2 header), never typed in. Tensors keep their
stored dtype (float16 from CTranslate2, as OpenAI ships its checkpoints).
"""
import argparse
import logging
from pathlib import Path

from comsl_fairseq.cli.command import argument_parser, command


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="Hugging Face or CTranslate2 Whisper folder (detected)")
    p.add_argument("--out", type=Path, required=True, help="openai-whisper checkpoint to write (.pt)")
    return p


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(message)s")
    from comsl_fairseq.checkpoints.convert_whisper import convert

    convert(args.src, args.out)
    return 0
