"""Export a training checkpoint as a self-contained model folder.

    comsl-export --path exp/demo/checkpoint_best.pt --out models/demo/ [--dtype fp16] \
        [--score-log exp/demo/generate-test.txt]

Writes model.pt (weights and the training cfg, no optimizer state), dict.txt,
sentence.bpe.model, config.yaml, model_info.json and a README.md model card. The folder
alone is enough for `comsl-translate` and `SpeechTranslator.from_pretrained`.
"""
import logging

from comsl_fairseq.cli.command import argument_parser, command
from comsl_fairseq.inference.translator import DTYPES


@command
def main(argv=None) -> int:
    p = argument_parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", required=True, help="checkpoint written by fairseq-train (checkpoint_best.pt, ...)")
    p.add_argument("--out", required=True, help="output folder (created; must be empty unless --overwrite)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                   help="storage precision of the weights (they are loaded as fp32)")
    p.add_argument("--data", help="the training data folder, if it moved since training")
    p.add_argument("--score-log", action="append", default=[],
                   help="fairseq-generate output to score with sacreBLEU for the card (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing folder")
    p.add_argument("--format", choices=("fairseq", "hf"), default="fairseq",
                   help="fairseq: the folder above; hf: a Hugging Face transformers folder (config.json, "
                        "model.safetensors, processor and code files) that loads without fairseq")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from comsl_fairseq.inference.export import export_model

    if args.format == "hf":
        if args.dtype != "fp32":
            raise ValueError("--format hf writes fp32 weights; cast them in transformers if needed")
        from comsl_fairseq.hf.export import export_hf

        out = export_hf(args.path, args.out, data=args.data, score_logs=args.score_log, overwrite=args.overwrite)
    else:
        out = export_model(args.path, args.out, dtype=args.dtype, data=args.data,
                           score_logs=args.score_log, overwrite=args.overwrite)
    print(out)
    return 0
