"""TokenCore against ``IntegerModel.step`` (every logit, the argmax, the state across tokens), in Verilator.

This file is both the pytest module and the cocotb bench module (``bench_*``).
The weight stream is fed beat by beat from the image: the token's embedding
row, then the STREAM region, exactly what the accelerator's DDR reader
delivers, with random gaps; the logits stream sees random backpressure.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfree.contract import registers as regs
from mmfree.hw.token_core import LOGIT_LAYOUT
from mmfree.models.golden_int import IntegerModel
from mmfree.models.weight_image import WeightImage

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
    from cocotb.triggers import FallingEdge, RisingEdge
except ImportError:  # pragma: no cover
    cocotb = None

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "models" / "tiny-random" / "tiny-random.img"


def token_beats(image: WeightImage, token: int, engine_bytes: int) -> list[int]:
    """The weight-stream beats of one token: embedding row, then the STREAM region."""
    stride = embed_stride(image)
    raw = bytes(image.region("embedding"))[token * stride:(token + 1) * stride] + bytes(image.stream)
    assert len(raw) % engine_bytes == 0
    words = np.frombuffer(raw, np.uint8).reshape(-1, engine_bytes)
    return [int.from_bytes(w.tobytes(), "little") for w in words]


def embed_stride(image: WeightImage) -> int:
    return image.meta["regions"]["embedding"]["row_stride"]


async def _wait_done(dut, timeout_cycles: int) -> None:
    for _ in range(timeout_cycles):
        await RisingEdge(dut.clk)
        if dut.done.value:
            return
    raise TimeoutError(f"no done within {timeout_cycles} cycles")


async def _pulse(dut, name: str) -> None:
    await FallingEdge(dut.clk)
    getattr(dut, name).value = 1
    await FallingEdge(dut.clk)
    getattr(dut, name).value = 0


async def run_tokens(dut, p: dict) -> None:
    from mmfree.sim.stream import StreamDriver, StreamMonitor, start_clock_and_reset

    image = WeightImage.load(p["image"])
    cfg = image.config
    model = IntegerModel(image)
    state = model.initial_state()
    E = p["engine_bytes"]
    await start_clock_and_reset(dut)
    dut.start.value = dut.clear_state.value = 0
    dut.hidden.value, dut.layers.value, dut.intermediate.value = cfg.D, cfg.L, cfg.I
    dut.embed_stride.value = embed_stride(image)
    src = StreamDriver(dut, "weights", idle=p["idle"], seed=p["seed"])
    sink = StreamMonitor(dut, "logits", backpressure=p["backpressure"], seed=p["seed"] + 1)

    await _pulse(dut, "clear_state")
    while dut.busy.value:
        await RisingEdge(dut.clk)
    for n, token in enumerate(p["tokens"]):
        want, state = model.step(token, state)
        src.send(token_beats(image, token, E))
        before = len(sink.items)
        await _pulse(dut, "start")
        await _wait_done(dut, 40 * len(src.queue) + 20000)
        await RisingEdge(dut.clk)
        assert int(dut.error.value) == regs.ErrorCode.NONE, f"token {n}: error {int(dut.error.value)}"
        # The stream is over: the idle engine's wish for a next header is no weight wait.
        assert int(dut.weight_wait.value) == 0, f"token {n}: weight_wait high after the last record"
        assert not src.queue, f"token {n}: {len(src.queue)} weight beats left unread"
        got = np.array([LOGIT_LAYOUT.from_bits(w).value for w in sink.items[before:]], np.int64)
        assert len(got) == cfg.V, f"token {n}: {len(got)} logits, expected {cfg.V}"
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, f"token {n}: {bad.size} logits differ, first at {bad[:4]}: {got[bad[:4]]} vs {want[bad[:4]]}"
        assert int(dut.argmax.value) == int(np.argmax(want))
        assert dut.argmax_value.value.to_signed() == int(want.max())
    assert not sink.protocol_errors, sink.protocol_errors[:4]


if cocotb is not None:
    @cocotb.test()
    async def bench_tokens(dut):
        """Several tokens in sequence (the state carries), gaps and backpressure: every logit exact."""
        from mmfree.sim.runner import bench_params

        await run_tokens(dut, bench_params())


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(max_hidden=0), ValueError, "max_hidden must be in [1, 65535], not 0"),
    (dict(max_layers=2.0), TypeError, "max_layers must be an integer, not 2.0"),
    (dict(max_vocab=0), ValueError, "max_vocab must be in [1, 2**24], not 0"),
])
def test_parameter_errors(kwargs, exc, msg):
    from mmfree.hw.token_core import TokenCore

    args = dict(engine_bytes=16, rows_per_block=64, max_hidden=64, max_layers=2, max_intermediate=256,
                max_vocab=320)
    args.update(kwargs)
    with pytest.raises(exc) as info:
        TokenCore(**args)
    assert str(info.value) == msg


@pytest.mark.sim
@pytest.mark.parametrize("engine_bytes, elements_per_cycle, idle, backpressure",
                         [(16, 1, 0.0, 0.0), (8, 1, 0.3, 0.3), (64, 4, 0.2, 0.2)])
def test_token_core_verilator(engine_bytes, elements_per_cycle, idle, backpressure):
    from mmfree.hw.token_core import TokenCore
    from mmfree.sim.runner import simulate

    image = WeightImage.load(TINY)
    cfg = image.config
    core = TokenCore(engine_bytes=engine_bytes, rows_per_block=64, max_hidden=cfg.D, max_layers=cfg.L,
                     max_intermediate=cfg.I, max_vocab=cfg.V, elements_per_cycle=elements_per_cycle)
    result = simulate(core, toplevel="token_core", test_module=Path(__file__).stem,
                      module_dir=Path(__file__).parent,
                      params={"image": str(TINY), "engine_bytes": engine_bytes, "tokens": [5, 17, 300, 0],
                              "idle": idle, "backpressure": backpressure, "seed": 3 + engine_bytes})
    assert result.tests == 1 and result.failed == 0
