"""Our mBART path equals fairseq's own BARTModel (mbart_large layout) on the same weights."""
import torch
from fairseq.data import data_utils

from comsl_fairseq.checkpoints.pretrained import load_mbart_checkpoint
from tests.builders import build_bart, build_task_and_model, mbart_args


def test_text_path_matches_fairseq_bart(data_dir, mbart_dir, whisper_pt):
    _, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt),
                                          "--mbart-checkpoint", str(mbart_dir / "model.pt"))
    bart = build_bart(mbart_dir, mbart_args())
    _, state = load_mbart_checkpoint(mbart_dir / "model.pt")
    bart.load_state_dict(state, strict=True)
    model.eval()
    bart.eval()

    tok = task.tokenizer
    src = [tok.encode("le chat noir mange une pomme", "fr_XX"), tok.encode("der hund", "de_DE")]
    tgt = [tok.encode("the black cat eats an apple", "en_XX"), tok.encode("the dog", "en_XX")]
    d = task.target_dictionary
    src_tokens = data_utils.collate_tokens(src, d.pad())
    prev = data_utils.collate_tokens(tgt, d.pad(), d.eos(), move_eos_to_beginning=True)
    with torch.no_grad():
        ours = model(None, None, None, prev, src_text_tokens=src_tokens, branches=("mt",))["mt"][0]
        ref, _ = bart(src_tokens, torch.tensor([len(s) for s in src]), prev)
    # Our vocabulary has the two added tags as extra rows; the checkpoint's rows must agree.
    assert ours.size(-1) == ref.size(-1) + 2
    mask = prev.ne(d.pad())
    diff = (ours[..., : ref.size(-1)] - ref)[mask].abs().max().item()
    print(f"mBART parity: max abs diff of logits {diff:.2e}")
    assert diff <= 1e-5
