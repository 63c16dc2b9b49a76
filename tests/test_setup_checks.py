"""Flag combinations that cannot train fail when the model / criterion is built, naming the flags."""
import pytest

from tests.builders import build_task_and_model, fairseq_cfg


def test_fp16_with_freezing_fails_at_setup(data_dir):
    with pytest.raises(ValueError, match=r"--freeze-whisper-updates 2 with --fp16: .*use --amp or "
                                         r"--memory-efficient-fp16"):
        build_task_and_model(data_dir, "--fp16", "--freeze-whisper-updates", "2")
    for ok in (("--fp16",), ("--amp", "--freeze-whisper-updates", "2"),
               ("--fp16", "--memory-efficient-fp16", "--freeze-whisper-updates", "2")):
        assert build_task_and_model(data_dir, *ok)[2] is not None, ok


def test_fully_sharded_with_freezing_fails_at_setup(data_dir):
    with pytest.raises(ValueError, match="--ddp-backend fully_sharded"):
        build_task_and_model(data_dir, "--ddp-backend", "fully_sharded", "--freeze-whisper-updates", "2")
    build_task_and_model(data_dir, "--ddp-backend", "legacy_ddp", "--freeze-whisper-updates", "2")


def test_text_only_with_speech_terms_fails_at_setup(data_dir):
    from fairseq import tasks

    cfg = fairseq_cfg(data_dir, "--text-only", "--asr-weight", "0", "--ctc-weight", "0.5")
    task = tasks.setup_task(cfg.task)
    with pytest.raises(ValueError, match=r"--text-only reads no audio, but --st-weight 0.35, --cml-weight 0.1, "
                                         r"--ctc-weight 0.5 ask\(s\) for speech terms"):
        task.build_criterion(cfg.criterion)
    cfg = fairseq_cfg(data_dir, "--text-only", "--st-weight", "0", "--asr-weight", "0", "--cml-weight", "0")
    criterion = tasks.setup_task(cfg.task).build_criterion(cfg.criterion)
    assert tuple(criterion.branches()) == ("mt",)
