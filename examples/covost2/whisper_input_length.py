#!/usr/bin/env python3
"""Whisper input length: does the length a clip is encoded at move BLEU?

Compares the modes of ``CompositeEncoder.whisper_features`` with a frozen Whisper encoder:
``own`` (each clip at its own length, batch padding masked; the default), ``own+S`` (own length
plus S s of trailing silence, ``--whisper-trailing-silence S``) and ``N`` (every clip padded or
cut to N s, ``--whisper-pad-seconds N``: 11 = the original ComSL, 30 = Whisper's window).

    python examples/covost2/whisper_input_length.py --whisper-checkpoint base.pt --data data/toy --out exp/il \
        --langs fr --train-numbers 100 --voices 2 --test-numbers 34 --test-voices 3 \
        --modes own own+1 11 30 --seeds 1 2 --updates 200 --batch-size 8

1. builds the model per mode as fairseq-train does (``--arch whisper_mbart_composite_tiny``:
   the given Whisper encoder, a random tiny adapter + mBART) and computes the frozen Whisper
   features of every selected clip once, through the model's own ``whisper_features``; they are
   cached in OUT/features/MODE.pt (fp16) and reused by later runs;
2. per mode and seed, trains adapter + mBART on the cached features (ST cross-entropy against
   the translation, teacher forcing, Adam, fixed updates and batch) and decodes the test clips
   greedily with the target tag forced; sacreBLEU (comsl_fairseq.evaluation.scoring) and exact match;
3. per mode, Whisper's own decoder transcribes English espeak-ng sentences from features
   computed under that mode (greedy), WER after Whisper's BasicTextNormalizer.

Writes OUT/results.json (every number, with timings) and OUT/results.md (the table).
"""
import argparse
import json
import logging
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from whisper.audio import SAMPLE_RATE

from comsl_fairseq.evaluation.scoring import corpus_scores, edit_distance, normalize_asr

logger = logging.getLogger("whisper_input_length")

# English test sentences for Whisper's own decoder (the first five are tests/test_convert_whisper.py's).
SENTENCES = ["please call stella and ask her to bring these things with her from the store",
             "the weather is nice today so we will go for a walk in the park",
             "i would like a cup of coffee with milk and no sugar",
             "the children are reading books in the library",
             "my brother plays the guitar in a small band",
             "the train to the city leaves at seven in the morning",
             "she opened the window because the room was too warm",
             "we need to buy bread eggs and cheese for breakfast",
             "the old man walked slowly across the bridge",
             "can you tell me where the nearest station is"]


# ----------------------------------------------------------------------------- modes

def mode_flags(mode: str) -> list:
    """``own`` -> [], ``own+1`` -> --whisper-trailing-silence 1, ``11`` -> --whisper-pad-seconds 11."""
    if mode == "own":
        return []
    if mode.startswith("own+"):
        return ["--whisper-trailing-silence", str(float(mode[4:]))]
    try:
        seconds = float(mode)
    except ValueError:
        raise SystemExit(f"--modes: {mode!r} is not own, own+S or a number of seconds") from None
    if seconds <= 0:
        raise SystemExit(f"--modes: {mode!r}: a fixed length must be > 0 s")
    return ["--whisper-pad-seconds", str(seconds)]


def parse(data: Path, whisper_checkpoint: Path, mode: str, seed: int = 1):
    """The fairseq-train configuration of this mode (``--arch whisper_mbart_composite_tiny``)."""
    from comsl_fairseq.training.fairseq_setup import train_cfg

    return train_cfg([data, "--task", "comsl_speech_to_text", "--arch", "whisper_mbart_composite_tiny",
                      "--whisper-checkpoint", whisper_checkpoint, "--criterion", "comsl_multitask",
                      "--optimizer", "adam", "--lr", "1e-3", "--cpu", "--seed", str(seed), *mode_flags(mode)])


def build_model(task, cfg, seed: int):
    """``task.build_model`` on a fresh copy of ``cfg`` (building writes the dims into it, which
    would mean "rebuilt from its own checkpoint"): the given Whisper weights, the random parts
    (adapter, mBART) initialised from ``seed``, so every mode starts from the same weights."""
    import copy

    from fairseq import utils

    utils.set_torch_seed(seed)
    return task.build_model(copy.deepcopy(cfg).model)


def build(data: Path, whisper_checkpoint: Path, mode: str, seed: int = 1):
    """(task, model, cfg) exactly as fairseq-train builds them for this mode."""
    from fairseq import tasks

    cfg = parse(data, whisper_checkpoint, mode, seed)
    task = tasks.setup_task(cfg.task)
    return task, build_model(task, cfg, seed), cfg


# ----------------------------------------------------------------------------- data

def select_rows(dataset, langs, n_groups: int, voices: int) -> list:
    """Dataset indices of a deterministic subset: rows are grouped by (source language,
    translation) -- one spoken number of the toy corpus -- in manifest order; ``n_groups``
    groups per language evenly spread over that order, the first ``voices`` rows of each."""
    from comsl_fairseq.vocab.languages import mbart_tag

    wanted = {mbart_tag(code) for code in langs or ()}
    groups = {}
    for i, row in enumerate(dataset.rows):
        if wanted and row.src_tag not in wanted:
            continue
        groups.setdefault(row.src_tag, {}).setdefault(row.tgt_text, []).append(i)
    if not groups:
        raise SystemExit(f"split {dataset.split}: no rows in languages {langs}")
    picked = []
    for lang, by_text in groups.items():
        keys = list(by_text)
        if n_groups > len(keys):
            raise SystemExit(f"split {dataset.split}, {lang}: {n_groups} asked, {len(keys)} distinct translations")
        step = len(keys) / n_groups
        for k in range(n_groups):
            picked += by_text[keys[int(k * step)]][:voices]
    return picked


def extract_features(model, dataset, indices: list, batch_size: int) -> dict:
    """Frozen Whisper features of the given clips under the model's configured input mode:
    {"h": [T_i x Cw fp16], "tags", "targets", "prev", "ids", "seconds" (encoder time)}."""
    model.eval()
    order = sorted(indices, key=lambda i: dataset.n_samples[i])  # similar lengths batch together
    feats = {}
    seconds = 0.0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = dataset.collater([dataset[i] for i in order[start:start + batch_size]])
            net = batch["net_input"]
            t0 = time.perf_counter()
            h, lengths = model.encoder.whisper_features(net["src_tokens"], net["src_lengths"])  # B x T x Cw
            seconds += time.perf_counter() - t0
            for b, index in enumerate(batch["id"].tolist()):
                feats[index] = (h[b, : lengths[b]].half(), int(net["src_lang_tags"][b]))
    return {"ids": [dataset.rows[i].id for i in indices], "h": [feats[i][0] for i in indices],
            "tags": torch.tensor([feats[i][1] for i in indices]),
            "targets": [dataset.tgt_text[i] for i in indices],  # [tag] y </s>
            "transcripts": [dataset.src_text[i] for i in indices],  # [tag] x </s>
            "seconds": seconds}


def cached_features(path: Path, model, dataset, indices: list, batch_size: int) -> dict:
    """Features from ``path`` if it holds exactly these clips, else extracted and saved there."""
    ids = [dataset.rows[i].id for i in indices]
    if path.is_file():
        cached = torch.load(path)
        if cached["ids"] == ids:
            logger.info("reusing %s (%d clips)", path, len(ids))
            return cached
    t0 = time.perf_counter()
    feats = extract_features(model, dataset, indices, batch_size)
    logger.info("%s: %d clips, %d frames each on average, encoder %.3f s/clip (%.0f s in all)", path.name,
                len(ids), sum(h.size(0) for h in feats["h"]) // len(ids), feats["seconds"] / len(ids),
                time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, path)
    return feats


def collate(feats: dict, rows: list, pad: int, eos: int) -> tuple:
    """(h B x T x Cw float, lengths B, tags B, target B x L, prev_output_tokens B x L, transcript B x Lx)."""
    from fairseq.data import data_utils

    hs = [feats["h"][i].float() for i in rows]
    lengths = torch.tensor([h.size(0) for h in hs])
    h = torch.nn.utils.rnn.pad_sequence(hs, batch_first=True)  # B x T x Cw, zero padding
    tgts = [feats["targets"][i] for i in rows]
    target = data_utils.collate_tokens(tgts, pad, eos)
    prev = data_utils.collate_tokens(tgts, pad, eos, move_eos_to_beginning=True)
    transcript = data_utils.collate_tokens([feats["transcripts"][i] for i in rows], pad, eos)
    return h, lengths, feats["tags"][rows], target, prev, transcript


# ----------------------------------------------------------------------------- train / decode

def encode(model, h, lengths, tags) -> dict:
    """Cached Whisper features -> mBART encoder output, through the model's own code."""
    x, mask = model.encoder.features_to_embeddings(h, lengths, tags)  # B x 1+T/4 x C
    return model.encoder.encode(x, mask)


def train(model, feats: dict, updates: int, batch_size: int, lr: float, seed: int, ctc_weight: float = 0.0,
          special_ids=None, log_every: int = 100) -> list:
    """ST cross-entropy (teacher forcing) on cached features, per target token; with ``ctc_weight``
    plus that times CTC(transcript | speech-path encoder output) per transcript token (the
    criterion's --ctc-weight term; ``special_ids``: tags, </s>, pad). Adam, linear warm-up then
    constant, gradient norm clipped to 1; batches drawn from a seeded permutation. Returns the
    ST loss per update."""
    from comsl_fairseq.criterions.terms import ctc_on_speech

    params = [p for n, p in model.named_parameters() if not n.startswith("encoder.whisper.")]
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, min(100, updates // 10))
    gen = torch.Generator().manual_seed(seed)
    d = model.decoder.dictionary
    n, order, losses = len(feats["h"]), [], []
    model.train()
    for step in range(updates):
        if len(order) < batch_size:
            order += torch.randperm(n, generator=gen).tolist()
        rows, order = order[:batch_size], order[batch_size:]
        h, lengths, tags, target, prev, transcript = collate(feats, rows, d.pad(), d.eos())
        enc = encode(model, h, lengths, tags)
        logits, _ = model.decoder(prev, encoder_out=enc)  # B x L x V
        st = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=d.pad())  # mean per token
        loss = st
        if ctc_weight > 0:
            frames = model.decoder.output_layer(enc["encoder_out"][0])  # T x B x V, tied projection
            ctc = ctc_on_speech(frames, enc["encoder_padding_mask"][0], transcript, special_ids, d.bos())
            loss = st + ctc_weight * ctc.loss / ctc.n_tokens.clamp(min=1)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        optimizer.step()
        losses.append(st.item())
        if (step + 1) % log_every == 0 or step + 1 == updates:
            logger.info("  update %d/%d: loss %.3f (mean of the last %d)", step + 1, updates,
                        statistics.fmean(losses[-log_every:]), min(log_every, len(losses)))
    return losses


@torch.no_grad()
def greedy_decode(model, feats: dict, batch_size: int, max_len: int = 40) -> list:
    """Greedy translations (token tensors) with each reference's first token -- the target tag --
    forced, as ``fairseq-generate --prefix-size 1`` does."""
    model.eval()
    d = model.decoder.dictionary
    out = []
    for start in range(0, len(feats["h"]), batch_size):
        rows = list(range(start, min(start + batch_size, len(feats["h"]))))
        h, lengths, tags, target, _, _ = collate(feats, rows, d.pad(), d.eos())
        enc = encode(model, h, lengths, tags)
        tokens = torch.stack([torch.full_like(target[:, 0], d.eos()), target[:, 0]], dim=1)  # B x 2
        done = torch.zeros(len(rows), dtype=torch.bool)
        for _ in range(max_len):
            logits, _ = model.decoder(tokens, encoder_out=enc)  # B x t x V
            nxt = logits[:, -1].argmax(-1).masked_fill(done, d.pad())
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            done |= nxt.eq(d.eos())
            if bool(done.all()):
                break
        for t in tokens[:, 1:]:  # [tag] y1 .. </s> pad ..
            ends = t[1:].eq(d.eos()).nonzero()
            out.append(t[: 1 + int(ends[0])] if len(ends) else t)
    return out


def score(task, hyp_tokens: list, feats: dict) -> dict:
    hyps = [task.decode_tokens(t) for t in hyp_tokens]
    refs = [task.decode_tokens(t) for t in feats["targets"]]
    scores = corpus_scores(hyps, refs)
    scores["exact_match"] = round(100 * sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs), 2)
    rows = zip(feats["ids"], hyps, refs, strict=True)
    scores["examples"] = [{"id": i, "hyp": h, "ref": r} for i, h, r in list(rows)[:: max(1, len(hyps) // 5)]]
    return scores


# ----------------------------------------------------------------------------- Whisper's own decoder

def speak_english(sentences: list, folder: Path) -> list:
    """16 kHz float32 waveforms of the sentences, spoken by espeak-ng (en-us)."""
    import soundfile as sf
    import soxr

    if shutil.which("espeak-ng") is None:
        raise SystemExit("the WER check speaks English sentences with espeak-ng, which is missing "
                         "(apt-get install espeak-ng), or pass --no-wer")
    waves = []
    for i, text in enumerate(sentences):
        path = folder / f"en_{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True)
        wav, sr = sf.read(path, dtype="float32")
        waves.append(torch.from_numpy(soxr.resample(wav, sr, SAMPLE_RATE).astype(np.float32)))
    return waves


def whisper_tokenizer(whisper_model):
    from whisper.tokenizer import get_tokenizer

    return get_tokenizer(whisper_model.is_multilingual, num_languages=whisper_model.num_languages,
                         language="en", task="transcribe")


@torch.no_grad()
def whisper_greedy(whisper_model, features: torch.Tensor, max_tokens: int = 128) -> list:
    """Greedy English transcription (text token ids) of one clip's encoder output (1 x T x C,
    any T) by Whisper's own decoder: <|startoftranscript|><|en|><|transcribe|><|notimestamps|>,
    then the most likely text token until <|endoftext|> (special and timestamp tokens
    suppressed); kv-cached. ``whisper.decode`` would accept 1500-frame features only."""
    tok = whisper_tokenizer(whisper_model)
    step = torch.tensor([list(tok.sot_sequence_including_notimestamps)])
    cache, hooks = whisper_model.install_kv_cache_hooks()
    text = []
    try:
        for _ in range(max_tokens):
            logits = whisper_model.decoder(step, features, kv_cache=cache)[0, -1]  # V
            logits[tok.eot + 1:] = -math.inf  # no special or timestamp tokens
            nxt = int(logits.argmax())
            if nxt == tok.eot:
                break
            text.append(nxt)
            step = torch.tensor([[nxt]])
    finally:
        for hook in hooks:
            hook.remove()
    return text


def whisper_wer(whisper_model, model, waves: list, sentences: list) -> dict:
    """WER of Whisper's own decoder on features computed by ``model`` under its input mode."""
    errors = words = 0
    hyps = []
    for wav, ref in zip(waves, sentences, strict=True):
        h, _ = model.encoder.whisper_features(wav[None], torch.tensor([wav.numel()]))  # 1 x T x C
        hyp = whisper_tokenizer(whisper_model).decode(whisper_greedy(whisper_model, h))
        hyps.append(hyp)
        r, y = normalize_asr(ref).split(), normalize_asr(hyp).split()
        errors += edit_distance(y, r)
        words += len(r)
    return {"wer": round(100 * errors / words, 1), "errors": errors, "words": words, "hyps": hyps}


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--whisper-checkpoint", type=Path, required=True, help="openai-whisper .pt (e.g. base)")
    ap.add_argument("--data", type=Path, required=True, help="toy corpus folder (train.tsv, test.tsv, config.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (features cache, results)")
    ap.add_argument("--langs", nargs="*", default=["fr"], help="source languages (CoVoST codes)")
    ap.add_argument("--train-numbers", type=int, default=100, help="distinct training sentences per language")
    ap.add_argument("--test-numbers", type=int, default=34, help="distinct test sentences per language")
    ap.add_argument("--voices", type=int, default=2, help="training recordings per sentence (the first K)")
    ap.add_argument("--test-voices", type=int, default=3, help="test recordings per sentence (the first K)")
    ap.add_argument("--modes", nargs="+", default=["own", "own+1", "11", "30"],
                    help="own, own+S (S s trailing silence), or N (padded/cut to N s)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2], help="training seeds per mode")
    ap.add_argument("--updates", type=int, default=200, help="training updates per run")
    ap.add_argument("--batch-size", type=int, default=8, help="clips per update")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (after linear warm-up)")
    ap.add_argument("--ctc-weight", type=float, default=1.0,
                    help="weight of CTC(transcript | speech encoder output) beside the ST loss (0 = ST only); "
                         "without it the tiny random mBART ignores the audio for hundreds of updates")
    ap.add_argument("--extract-batch-size", type=int, default=8, help="clips per Whisper encoder call")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--no-wer", action="store_true", help="skip Whisper's own-decoder WER")
    ap.add_argument("--wer-sentences", type=int, default=len(SENTENCES), help="English sentences for the WER")
    return ap.parse_args(argv)


def run_mode(args, mode: str) -> dict:
    """Features, training runs and WER of one mode; returns its result entry."""
    t0 = time.perf_counter()
    task, model, cfg = build(args.data, args.whisper_checkpoint, mode)
    feats = {}
    for split, n, voices in (("train", args.train_numbers, args.voices), ("test", args.test_numbers, args.test_voices)):
        task.load_dataset(split)
        ds = task.datasets[split]
        rows = select_rows(ds, args.langs, n, voices)
        feats[split] = cached_features(args.out / "features" / f"{mode}_{split}.pt", model, ds, rows,
                                       args.extract_batch_size)
    n_clips = sum(len(f["h"]) for f in feats.values())
    entry = {"mode": mode, "flags": " ".join(mode_flags(mode)) or "(default)",
             "encoder_s_per_clip": round(sum(f["seconds"] for f in feats.values()) / n_clips, 4),
             "frames_per_clip": round(sum(h.size(0) for f in feats.values() for h in f["h"]) / n_clips, 1),
             "n_train": len(feats["train"]["h"]), "n_test": len(feats["test"]["h"]),
             "features_s": round(time.perf_counter() - t0, 1), "runs": []}
    for seed in args.seeds:
        t1 = time.perf_counter()
        logger.info("mode %s, seed %d: training %d updates on %d clips", mode, seed, args.updates, entry["n_train"])
        run_model = build_model(task, cfg, seed)
        losses = train(run_model, feats["train"], args.updates, args.batch_size, args.lr, seed, args.ctc_weight,
                       special_ids(task))
        train_s = time.perf_counter() - t1
        scores = score(task, greedy_decode(run_model, feats["test"], 64), feats["test"])
        run = {"seed": seed, "bleu": scores["bleu"], "exact_match": scores["exact_match"], "chrf": scores["chrf"],
               "first_loss": round(statistics.fmean(losses[:20]), 3),
               "last_loss": round(statistics.fmean(losses[-20:]), 3),
               "train_s": round(train_s, 1), "decode_s": round(time.perf_counter() - t1 - train_s, 1),
               "bleu_signature": scores["bleu_signature"], "examples": scores["examples"]}
        logger.info("mode %s, seed %d: BLEU %.2f, exact match %.1f %% (train %.0f s, decode %.0f s)", mode, seed,
                    run["bleu"], run["exact_match"], run["train_s"], run["decode_s"])
        entry["runs"].append(run)
    if not args.no_wer:
        t2 = time.perf_counter()
        entry["whisper_wer"] = whisper_wer(args.whisper_model, model, args.en_waves, args.en_sentences)
        entry["wer_s"] = round(time.perf_counter() - t2, 1)
        logger.info("mode %s: Whisper's own decoder, English WER %.1f %% (%.0f s)", mode,
                    entry["whisper_wer"]["wer"], entry["wer_s"])
    return entry


def special_ids(task) -> torch.Tensor:
    """Token ids that are no CTC targets: every language tag, </s> and padding."""
    d = task.target_dictionary
    return torch.tensor(sorted(set(task.tag_ids) | {d.eos(), d.pad()}))


def summarize(entry: dict) -> dict:
    bleus = [r["bleu"] for r in entry["runs"]]
    ems = [r["exact_match"] for r in entry["runs"]]
    return {"bleu_mean": round(statistics.fmean(bleus), 2), "bleu_spread": round((max(bleus) - min(bleus)) / 2, 2),
            "exact_match_mean": round(statistics.fmean(ems), 1),
            "train_s_mean": round(statistics.fmean(r["train_s"] for r in entry["runs"]), 1)}


def markdown(entries: list) -> str:
    lines = ["| mode | flags | frames/clip | encoder s/clip | train s/run | BLEU (mean ± half-range) | per seed "
             "| exact match % | Whisper WER % |", "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        s = e["summary"]
        wer = e.get("whisper_wer", {}).get("wer", "—")
        seeds = " / ".join(f"{r['bleu']:.1f}" for r in e["runs"])
        lines.append(f"| {e['mode']} | `{e['flags']}` | {e['frames_per_clip']:.0f} | {e['encoder_s_per_clip']:.3f} "
                     f"| {s['train_s_mean']:.0f} | {s['bleu_mean']:.2f} ± {s['bleu_spread']:.2f} | {seeds} "
                     f"| {s['exact_match_mean']:.1f} | {wer} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(name)s | %(message)s")
    logging.getLogger("comsl_fairseq").setLevel(logging.WARNING)  # one model build per run: keep the log short
    torch.set_num_threads(args.threads)
    random.seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not args.no_wer:
        import whisper

        args.whisper_model = whisper.load_model(str(args.whisper_checkpoint), device="cpu").eval()
        args.en_sentences = SENTENCES[: args.wer_sentences]
        with tempfile.TemporaryDirectory() as tmp:
            args.en_waves = speak_english(args.en_sentences, Path(tmp))
    entries = []
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    for mode in args.modes:
        entry = run_mode(args, mode)
        entry["summary"] = summarize(entry)
        entries.append(entry)
        result = {"command": command, "threads": args.threads, "total_s": round(time.perf_counter() - t0, 1),
                  "modes": entries}  # written after every mode, so that an interrupted run keeps its results
        (args.out / "results.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
        table = markdown(entries)
        (args.out / "results.md").write_text(table, encoding="utf-8")
    logger.info("results in %s (%.0f s in all)\n%s", args.out, result["total_s"], table)
    return result


if __name__ == "__main__":
    main()
