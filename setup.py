"""comsl_fairseq: ComSL (Le et al., NeurIPS 2023) as a fairseq plugin.

torch and the fairseq fork are installed by the Makefile (see README): torch must
come first and fairseq's declared torchaudio requirement must be skipped, which pip
cannot express through install_requires.
"""
from setuptools import find_packages, setup

setup(
    name="comsl_fairseq",
    version="0.1.0",
    description="ComSL: Whisper + adapter + mBART-50 speech translation as a fairseq plugin",
    packages=find_packages(include=["comsl_fairseq", "comsl_fairseq.*"]),
    python_requires=">=3.11",
    install_requires=[
        "torch>=2.6",
        "numpy",
        "soundfile>=0.12",
        "soxr",
        "sentencepiece",
        "protobuf",
        "sacrebleu>=2",
        "pyyaml",
        "tqdm",
        "silero-vad==6.2.3",
    ],
    # comsl_fairseq.hf.export (--format hf) builds transformers' classes; tested with 5.25
    extras_require={"hf": ["transformers>=5.25,<6", "safetensors"]},
    entry_points={
        "console_scripts": [
            "comsl-translate=comsl_fairseq.cli.translate:main",
            "comsl-export=comsl_fairseq.cli.export:main",
            "comsl-convert-whisper=comsl_fairseq.cli.convert_whisper:main",
            "comsl-convert-hf-mbart50=comsl_fairseq.cli.convert_hf_mbart50:main",
            "comsl-preflight=comsl_fairseq.cli.preflight:main",
            "comsl-benchmark=comsl_fairseq.cli.benchmark:main",
            "comsl-average-checkpoints=comsl_fairseq.cli.average_checkpoints:main",
            "comsl-score-covost=comsl_fairseq.cli.score_covost:main",
            "comsl-compare-systems=comsl_fairseq.cli.compare_systems:main",
            "comsl-modality-gap=comsl_fairseq.cli.modality_gap:main",
            "comsl-plot-training=comsl_fairseq.cli.plot_training:main",
            "comsl-cache-features=comsl_fairseq.cli.cache_features:main",
            "comsl-trim-vocab=comsl_fairseq.cli.trim_vocab:main",
        ]
    },
)
