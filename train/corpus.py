"""Build the training corpus from Debian's public-domain King James Bible.

Source: the ``bible-kjv-text`` package (compressed text in
``/usr/lib/bible.data``), read through the ``bible`` program of the
``bible-kjv`` package::

    apt-get install -y bible-kjv bible-kjv-text

``bible -f gen1:1-rev22:21`` prints one verse per line, each preceded by
its reference (``Ge1:1 In the beginning ...``). The cleaned corpus drops
the references and keeps the verse text unchanged: one verse per line, a
blank line between chapters. The text has no other markup.

Split (deterministic): every 20th book by canonical order (1-based book
numbers 20, 40, 60: Proverbs, Matthew, 1 Peter) is held out; the other 63
books are the training text. The held-out text is shipped in
``models/kjv/heldout.txt`` and must stay below ``MAX_HELDOUT_BYTES``.

Run: ``python -m mmfree.train.corpus`` (writes
``train_work/corpus/train.txt`` and ``models/kjv/heldout.txt``).
"""
from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELDOUT_EVERY = 20
MAX_HELDOUT_BYTES = 300_000

# "Ge1:1 text", "1Sm3:4 text", "SSol2:1 text"
_VERSE = re.compile(r"^(?P<book>[1-3]?[A-Za-z]+)(?P<chapter>\d+):(?P<verse>\d+) (?P<text>.*)$")


def read_kjv_verses(raw_text: str | None = None) -> list[tuple[str, int, int, str]]:
    """Return ``(book, chapter, verse, text)`` for all 31,102 verses in canonical order.

    ``raw_text`` is the output of ``bible -f gen1:1-rev22:21``; when None the
    ``bible`` program is run.
    """
    if raw_text is None:
        raw_text = subprocess.run(
            ["bible", "-f", "gen1:1-rev22:21"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True,
        ).stdout
    verses = []
    for line in raw_text.splitlines():
        if not line.strip():
            continue
        m = _VERSE.match(line)
        if m is None:
            raise ValueError(f"unexpected line in bible output: {line!r}")
        text = " ".join(m["text"].split())
        verses.append((m["book"], int(m["chapter"]), int(m["verse"]), text))
    return verses


def group_books(verses):
    """Group verses into ``[(book, [[verse text, ...] per chapter])]`` in order."""
    books: list[tuple[str, list[list[str]]]] = []
    for book, chapter, _verse, text in verses:
        if not books or books[-1][0] != book:
            books.append((book, []))
        chapters = books[-1][1]
        if len(chapters) < chapter:
            chapters.append([])
        chapters[-1].append(text)
    return books


def render(books) -> str:
    """One verse per line, one blank line between chapters (and books)."""
    return "\n\n".join("\n".join(ch) for _book, chapters in books for ch in chapters) + "\n"


def split_books(books, every: int = HELDOUT_EVERY):
    """Books whose 1-based number is a multiple of ``every`` are held out."""
    train = [b for i, b in enumerate(books, 1) if i % every != 0]
    held = [b for i, b in enumerate(books, 1) if i % every == 0]
    return train, held


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, help="saved output of `bible -f gen1:1-rev22:21` (default: run bible)")
    ap.add_argument("--train-out", type=Path, default=REPO / "train_work/corpus/train.txt")
    ap.add_argument("--heldout-out", type=Path, default=REPO / "models/kjv/heldout.txt")
    args = ap.parse_args(argv)

    verses = read_kjv_verses(args.raw.read_text() if args.raw else None)
    books = group_books(verses)
    if len(verses) != 31102 or len(books) != 66:
        raise SystemExit(f"expected 31102 verses in 66 books, got {len(verses)} in {len(books)}")
    train, held = split_books(books)
    train_text, held_text = render(train), render(held)
    if len(held_text.encode()) > MAX_HELDOUT_BYTES:
        raise SystemExit(f"held-out text is {len(held_text.encode())} bytes > {MAX_HELDOUT_BYTES}")
    for path, text in ((args.train_out, train_text), (args.heldout_out, held_text)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"train: {len(train)} books, {len(train_text.encode())} bytes -> {args.train_out}")
    print(f"held-out: {[b for b, _ in held]}, {len(held_text.encode())} bytes -> {args.heldout_out}")


if __name__ == "__main__":
    main()
