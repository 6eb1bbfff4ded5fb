"""Train an HGRN-bit model on the KJV corpus and export it in the released format.

Recipe (after the paper / BitNet): AdamW (β 0.9/0.95), linear warm-up then
cosine decay to ``min_lr_ratio·lr``, weight decay on matrices only
(embeddings included, gains and lower bounds excluded) and switched off
after ``wd_off_frac`` of the steps (BitNet b1.58's two-stage schedule;
1.0 keeps it on), gradient clipping 1.0, bf16 autocast on CUDA, optional
training-time dropout (the corpus is ~1 M tokens, so a 7 M-parameter
model overfits within ~10 epochs without it).

Samples: random 256-token windows of the training stream, each fed as
``[<s>] + window[:-1]`` with targets ``window`` so that every sequence
starts from the zero state and bos, as in inference. Held-out loss is the
mean over all non-overlapping windows of the held-out text, same format.

Writes into ``--out``: ``config.json``, ``model.safetensors`` (bf16, HF
names), ``tokenizer.json`` and ``training_log.json``.

Example (the bundled model)::

    python -m mmfree.train.train --train-text train_work/corpus/train.txt \\
        --heldout-text models/kjv/heldout.txt --tokenizer models/kjv/tokenizer.json \\
        --out train_work/kjv-ckpt --steps 3000
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .model import HGRNBitConfig, HGRNBitForCausalLM, save_checkpoint

BOS_ID = 1


def tokenize(path: Path, tokenizer_path: Path) -> np.ndarray:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    ids = tok.encode(path.read_text(), add_special_tokens=False).ids
    return np.asarray(ids, dtype=np.int64)


def make_batch(stream: torch.Tensor, starts: torch.Tensor, seq_len: int):
    """Inputs ``[bos] + w[:-1]`` and targets ``w`` for windows ``w = stream[s:s+seq_len]``."""
    idx = starts[:, None] + torch.arange(seq_len, device=stream.device)[None]
    y = stream[idx]
    x = torch.cat([torch.full_like(y[:, :1], BOS_ID), y[:, :-1]], dim=1)
    return x, y


def lr_at(step: int, total: int, warmup: int, lr: float, min_ratio: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


@torch.no_grad()
def evaluate(model, stream: torch.Tensor, seq_len: int, batch: int, amp: bool) -> float:
    """Mean token loss over all non-overlapping windows of ``stream``."""
    was_training = model.training
    model.eval()
    n = (len(stream) // seq_len)
    starts = torch.arange(n, device=stream.device) * seq_len
    total, count = 0.0, 0
    for i in range(0, n, batch):
        x, y = make_batch(stream, starts[i:i + batch], seq_len)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits, _ = model(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / count


def param_groups(model, weight_decay: float):
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim != 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-text", type=Path, required=True)
    ap.add_argument("--heldout-text", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--wd-off-frac", type=float, default=1.0,
                    help="fraction of steps after which weight decay is set to 0")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="training-time dropout on the embedding and residual branches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--time-limit", type=float, default=0.0,
                    help="stop (and still export) after this many seconds of training; 0 = none")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    amp = dev.type == "cuda"
    if amp:
        torch.backends.cuda.matmul.allow_tf32 = True

    t0 = time.time()
    train_ids = torch.from_numpy(tokenize(args.train_text, args.tokenizer)).to(dev)
    held_ids = torch.from_numpy(tokenize(args.heldout_text, args.tokenizer)).to(dev)
    print(f"tokens: train {len(train_ids)}, held-out {len(held_ids)} ({time.time() - t0:.1f} s)", flush=True)

    config = HGRNBitConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                           num_hidden_layers=args.layers)
    model = HGRNBitForCausalLM(config, dropout=args.dropout).to(dev)
    counts = model.num_parameters()
    print(f"config: D={config.hidden_size} L={config.num_hidden_layers} I={config.intermediate} "
          f"V={config.vocab_size}; parameters {counts}", flush=True)
    fwd = torch.compile(model) if args.compile else model

    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95),
                            eps=1e-8, fused=amp)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    n_starts = len(train_ids) - args.seq_len
    log = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "config": config.to_dict(), "parameters": counts,
           "device": torch.cuda.get_device_name(dev) if amp else platform.processor() or "cpu",
           "torch": torch.__version__, "train_tokens": len(train_ids), "heldout_tokens": len(held_ids),
           "history": []}

    model.train()
    run_loss, run_n = 0.0, 0
    t_start = time.time()
    step = 0
    for step in range(args.steps):
        lr = lr_at(step, args.steps, args.warmup, args.lr, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
            if step == int(args.wd_off_frac * args.steps) and g["weight_decay"] > 0:
                g["weight_decay"] = 0.0
        starts = torch.randint(0, n_starts, (args.batch_size,), device=dev, generator=gen)
        x, y = make_batch(train_ids, starts, args.seq_len)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits, _ = fwd(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run_loss += loss.detach()
        run_n += 1
        last = step == args.steps - 1
        out_of_time = args.time_limit > 0 and time.time() - t_start > args.time_limit
        if (step + 1) % args.eval_every == 0 or last or out_of_time:
            train_loss = (run_loss / run_n).item()
            held = evaluate(model, held_ids, args.seq_len, 4 * args.batch_size, amp)
            elapsed = time.time() - t_start
            rec = {"step": step + 1, "tokens": (step + 1) * args.batch_size * args.seq_len, "lr": lr,
                   "train_loss": train_loss, "heldout_loss": held, "grad_norm": float(gnorm),
                   "elapsed_s": round(elapsed, 2)}
            log["history"].append(rec)
            print(json.dumps(rec), flush=True)
            run_loss, run_n = 0.0, 0
        if out_of_time:
            print(f"time limit reached at step {step + 1}", flush=True)
            break
    log["steps_done"] = step + 1
    log["train_wall_s"] = round(time.time() - t_start, 2)
    log["final"] = log["history"][-1]
    best = min(log["history"], key=lambda r: r["heldout_loss"])
    log["best_heldout"] = {"step": best["step"], "heldout_loss": best["heldout_loss"]}
    model.eval()
    save_checkpoint(model.cpu(), args.out, args.tokenizer)
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"exported {args.out} after {log['train_wall_s']} s of training", flush=True)


if __name__ == "__main__":
    main()
