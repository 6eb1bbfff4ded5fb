"""Would a board's build hold a larger released model? Synthesize it with that capacity and see.

The board's own configuration (ports, engine, clock, RAM styles) with the on-chip capacity of a
released shape (``models/synthetic.py`` RELEASED_SHAPES: D, L, I, V), through the same yosys flow
as ``make synth`` (``hw/flow/board_flow.py``). Prints the utilization against the part and the
budget and writes ``build/synth/<board>-<shape>/utilization.{json,md}`` and ``timing.{json,md}``;
nothing under ``bitstreams/`` changes. Exit status 1 when the build is over the part or budget.

    python -m mmfree.bench.capacity --board pynq-z2 --shape 1.3B
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mmfree.contract.boards import BOARDS, Board, get_board
from mmfree.contract.configs import AcceleratorConfig
from mmfree.models.synthetic import RELEASED_SHAPES, released_config

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class ResizedBoard(Board):
    """``board`` whose build has another configuration (the synthesis flow reads ``config``)."""

    resized: AcceleratorConfig | None = None

    @property
    def config(self) -> AcceleratorConfig:
        return self.resized


def resized(board_name: str, shape: str) -> ResizedBoard:
    """``board_name``'s build with the on-chip capacity of the released ``shape``."""
    board = get_board(board_name)
    c = released_config(shape)
    config = dataclasses.replace(board.config, max_hidden=c.D, max_layers=c.L, max_intermediate=c.I,
                                 max_vocab=c.V, description=f"{board.config.description}; capacity of {shape}")
    fields = {f.name: getattr(board, f.name) for f in dataclasses.fields(Board)}
    return ResizedBoard(**fields, resized=config)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", choices=sorted(BOARDS), required=True)
    parser.add_argument("--shape", choices=list(RELEASED_SHAPES), required=True)
    args = parser.parse_args(argv)
    from mmfree.hw.flow.board_flow import synth_board

    board = resized(args.board, args.shape)
    out = REPO / "build" / "synth" / f"{args.board}-{args.shape}"
    report = synth_board(board, out_dir=out)
    print((out / "utilization.md").read_text())
    print(f"logic depth: estimated Fmax {report['timing']['fmax_mhz']:.0f} MHz")
    for problem in report["problems"]:
        print(f"problem: {problem}")
    print(f"wrote {out.relative_to(REPO)}/")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
