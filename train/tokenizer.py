"""Train the byte-level BPE tokenizer (vocab 4096) on the KJV training split.

Special tokens: ``<unk>`` = 0, ``<s>`` = 1 (bos), ``</s>`` = 2 (eos). Like
the released Llama-style tokenizer, ``encode(text)`` prepends ``<s>`` (a
``TemplateProcessing`` post-processor); ``encode(text,
add_special_tokens=False)`` does not. Byte-level pre-tokenization (GPT-2
regex, no prefix space) with the full 256-byte initial alphabet, so any
text encodes without ``<unk>``; the ByteLevel decoder makes
``decode(ids)`` return the original text.

Run: ``python -m mmfree.train.tokenizer`` (reads
``train_work/corpus/train.txt``, writes ``models/kjv/tokenizer.json``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

REPO = Path(__file__).resolve().parents[1]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


def train_tokenizer(files: list[str], vocab_size: int = 4096) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(files, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)],
    )
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"special token {t} got id {tok.token_to_id(t)}, expected {i}")
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"vocab size {tok.get_vocab_size()} != {vocab_size}")
    return tok


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-text", type=Path, default=REPO / "train_work/corpus/train.txt")
    ap.add_argument("--out", type=Path, default=REPO / "models/kjv/tokenizer.json")
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args(argv)
    tok = train_tokenizer([str(args.train_text)], args.vocab_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out))
    sample = "And God said, Let there be light: and there was light.\n"
    enc = tok.encode(sample)
    assert tok.decode(enc.ids) == sample, (tok.decode(enc.ids), sample)
    print(f"saved {args.out} (vocab {tok.get_vocab_size()})")
    print(f"{sample!r} -> {enc.ids} {enc.tokens}")


if __name__ == "__main__":
    main()
