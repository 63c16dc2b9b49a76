"""fairseq-train's configuration, task and model for this plugin, built as fairseq-train builds them."""
from pathlib import Path

USER_DIR = Path(__file__).resolve().parents[1]  # the plugin folder fairseq imports with --user-dir


def train_cfg(argv: list):
    """fairseq-train's parsed configuration of ``argv`` (DATA and flags); ``--user-dir`` is
    added when missing."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [str(a) for a in argv]
    if "--user-dir" not in argv:
        argv += ["--user-dir", str(USER_DIR)]
    return convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))


def build_task_and_model(cfg) -> tuple:
    """(task, model) from a parsed configuration, as fairseq-train builds them."""
    from fairseq import tasks

    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model)
