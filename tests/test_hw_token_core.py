"""TokenCore against ``IntegerModel.step`` (every logit, the argmax, the state across tokens), in Verilator.

This file is both the pytest module and the cocotb bench module (``bench_*``).
The weight stream is fed beat by beat from the image and a model of the state
in memory (:class:`StateMemory`): the tokens' embedding rows, then per layer
the sequences' state and the layer's records, then the head, exactly what the
accelerator's DDR reader delivers, with random gaps. ``state_out`` goes back
into that memory, which after every pass equals the integer model's state;
the logits and state streams see random backpressure.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfree.contract import registers as regs
from mmfree.host.driver import STATE_WORD
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


class StateMemory:
    """The recurrent state where the accelerator keeps it: ``slots`` x L x D words (ACT), read
    into each pass's stream and rewritten from its ``state_out``."""

    def __init__(self, image: WeightImage, slots: int):
        self.image, self.cfg = image, image.config
        self.words = np.zeros((slots, self.cfg.L, self.cfg.D), np.int64)

    def pass_beats(self, tokens, slots, engine_bytes: int) -> list[int]:
        """The weight-stream beats of one pass: each column's embedding row, then per layer the
        state of ``slots`` (one per sequence: each column's, or a prefill's one) as int64 words and
        the layer's records, then the head's."""
        stride, layer = embed_stride(self.image), self.image.layer_bytes
        table, stream = bytes(self.image.region("embedding")), bytes(self.image.stream)
        parts = [table[t * stride:(t + 1) * stride] for t in tokens]
        for l in range(self.cfg.L):
            parts += [self.words[s, l].astype(STATE_WORD).tobytes() for s in slots]
            parts.append(stream[l * layer:(l + 1) * layer])
        parts.append(stream[self.cfg.L * layer:])
        words = np.frombuffer(b"".join(parts), np.uint8).reshape(-1, engine_bytes)
        return [int.from_bytes(w.tobytes(), "little") for w in words]

    def write_back(self, items, slots) -> None:
        """``state_out``'s values of one pass (per layer, D per slot in ``slots`` order) into memory."""
        L, D = self.cfg.L, self.cfg.D
        assert len(items) == L * len(slots) * D, f"{len(items)} state words, expected {L * len(slots) * D}"
        values = np.array([_signed(w, 48) for w in items], np.int64).reshape(L, len(slots), D)
        for k, s in enumerate(slots):
            self.words[s] = values[:, k]

    def check(self, slot: int, state, label: str) -> None:
        want = np.stack(state)
        bad = np.argwhere(self.words[slot] != want)
        assert bad.size == 0, f"{label}: slot {slot}'s state differs at {len(bad)} (layer, row), first {bad[:3].tolist()}"


def _signed(word: int, bits: int) -> int:
    return word - (1 << bits) if word >> (bits - 1) else word


async def _reset(dut, image: WeightImage) -> None:
    """Reset the core and give it the model's shape; one column (inputs keep what an earlier
    bench left there)."""
    from mmfree.sim.stream import start_clock_and_reset

    cfg = image.config
    await start_clock_and_reset(dut)
    dut.start.value = 0
    dut.last_column.value = dut.prefill.value = 0
    dut.hidden.value, dut.layers.value, dut.intermediate.value = cfg.D, cfg.L, cfg.I
    dut.embed_stride.value = embed_stride(image)
    dut.layer_bytes.value = image.layer_bytes


async def run_tokens(dut, p: dict) -> None:
    from mmfree.sim.stream import StreamDriver, StreamMonitor

    image = WeightImage.load(p["image"])
    cfg = image.config
    model = IntegerModel(image)
    state = model.initial_state()
    E = p["engine_bytes"]
    memory = StateMemory(image, 1)
    await _reset(dut, image)
    src = StreamDriver(dut, "weights", idle=p["idle"], seed=p["seed"])
    sink = StreamMonitor(dut, "logits", backpressure=p["backpressure"], seed=p["seed"] + 1)
    state_sink = StreamMonitor(dut, "state_out", backpressure=p["backpressure"], seed=p["seed"] + 2)

    for n, token in enumerate(p["tokens"]):
        want, state = model.step(token, state)
        src.send(memory.pass_beats([token], [0], E))
        before, state_before = len(sink.items), len(state_sink.items)
        await _pulse(dut, "start")
        await _wait_done(dut, 40 * len(src.queue) + 20000)
        await RisingEdge(dut.clk)
        assert int(dut.error.value) == regs.ErrorCode.NONE, f"token {n}: error {int(dut.error.value)}"
        # The stream is over: the idle engine's wish for a next header is no weight wait.
        assert int(dut.weight_wait.value) == 0, f"token {n}: weight_wait high after the last record"
        assert not src.queue, f"token {n}: {len(src.queue)} weight beats left unread"
        got = logit_values(sink.items[before:])
        assert len(got) == cfg.V, f"token {n}: {len(got)} logits, expected {cfg.V}"
        # the head moves two rows a beat: a lone row only as an odd V's last
        assert len(sink.items) - before == -(-cfg.V // 2), f"token {n}: {len(sink.items) - before} logits beats"
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, f"token {n}: {bad.size} logits differ, first at {bad[:4]}: {got[bad[:4]]} vs {want[bad[:4]]}"
        assert int(dut.argmax.value) == int(np.argmax(want))
        assert dut.argmax_value.value.to_signed() == int(want.max())
        memory.write_back(state_sink.items[state_before:], [0])
        memory.check(0, state, f"token {n}")
    assert not sink.protocol_errors, sink.protocol_errors[:4]
    assert not state_sink.protocol_errors, state_sink.protocol_errors[:4]


def logit_values(words) -> np.ndarray:
    """The logits of ``logits`` beats, one or two each (:data:`LOGIT_LAYOUT`), in order."""
    out = []
    for word in words:
        beat = LOGIT_LAYOUT.from_bits(word)
        out += [beat.value, beat.value1] if beat.pair else [beat.value]
    return np.array(out, np.int64)


async def run_passes(dut, p: dict) -> None:
    """Decode passes of several sequences (slots in any order, fewer columns than the build has),
    a prefill of consecutive tokens, and the clear of one slot, against the integer model stepping
    each sequence alone: every logit (de-interleaved by ``registers.logit_positions``), the argmax
    and every slot's state in memory."""
    from mmfree.sim.stream import StreamDriver, StreamMonitor

    image = WeightImage.load(p["image"])
    cfg, N, E = image.config, p["columns"], p["engine_bytes"]
    model = IntegerModel(image)
    states = [model.initial_state() for _ in range(N)]
    memory = StateMemory(image, N)
    await _reset(dut, image)
    src = StreamDriver(dut, "weights", idle=p["idle"], seed=p["seed"] + 5)
    sink = StreamMonitor(dut, "logits", backpressure=p["backpressure"], seed=p["seed"] + 6)
    state_sink = StreamMonitor(dut, "state_out", backpressure=p["backpressure"], seed=p["seed"] + 7)

    def clear(slot):                           # what CONTROL.clear_state does to the memory
        memory.words[slot] = 0
        states[slot] = model.initial_state()

    async def run(tokens, slots, prefill, label):
        n = len(tokens)
        dut.last_column.value, dut.prefill.value = n - 1, int(prefill)
        src.send(memory.pass_beats(tokens, slots[:1] if prefill else slots, E))
        before, state_before = len(sink.items), len(state_sink.items)
        await _pulse(dut, "start")
        await _wait_done(dut, 40 * len(src.queue) + 40000)
        await RisingEdge(dut.clk)
        assert int(dut.error.value) == regs.ErrorCode.NONE, f"{label}: error {int(dut.error.value)}"
        assert not src.queue, f"{label}: {len(src.queue)} weight beats left unread"
        got = logit_values(sink.items[before:])
        if prefill:
            want, states[slots[0]] = model.prefill(tokens, states[slots[0]])
            want = want[None]
        else:
            want, new = model.step_batch(tokens, [states[s] for s in slots])
            for s, state in zip(slots, new):
                states[s] = state
        memory.write_back(state_sink.items[state_before:], slots[:1] if prefill else slots)
        for s in range(N):
            memory.check(s, states[s], label)
        out = len(want)
        assert len(got) == out * cfg.V, f"{label}: {len(got)} logits, expected {out * cfg.V}"
        got = got[regs.logit_positions(cfg.V, out, E, image.rows_per_block)]
        bad = np.argwhere(got != want)
        assert bad.size == 0, f"{label}: {len(bad)} logits differ, first (column, row) {bad[:3].tolist()}"
        # ARGMAX: column 0's of a decode pass, the last token's of a prefill (want has that one row)
        assert int(dut.argmax.value) == int(np.argmax(want[0])), f"{label}: argmax"
        if not prefill:
            word = int(dut.column_argmax.value)
            assert [(word >> (32 * c)) & 0xFFFF_FFFF for c in range(n)] == [int(np.argmax(w)) for w in want], \
                f"{label}: column argmax"

    seqs = [[5 + 40 * s, 17 + s] for s in range(N)]
    await run([seq[0] for seq in seqs], list(range(N)), False, "decode, every column")
    await run([seq[1] for seq in seqs][::-1], list(range(N))[::-1], False, "decode, slots reversed")
    await run([300, 2, 9][:N], [N - 1], True, "prefill")
    await run([1], [N - 1], False, "decode, one column")
    if N > 1:
        clear(0)                               # slot 0 again from zero; the others keep theirs
        await run([3, 4][:N], [1, 0], False, "decode after clearing slot 0")
    assert not sink.protocol_errors, sink.protocol_errors[:4]
    assert not state_sink.protocol_errors, state_sink.protocol_errors[:4]


if cocotb is not None:
    @cocotb.test()
    async def bench_passes(dut):
        """Decode passes of several sequences, a prefill, a cleared slot: every logit and state exact."""
        from mmfree.sim.runner import bench_params

        await run_passes(dut, bench_params())

    @cocotb.test()
    async def bench_tokens(dut):
        """Several tokens in sequence (the state carries), gaps and backpressure: every logit exact."""
        from mmfree.sim.runner import bench_params

        await run_tokens(dut, bench_params())


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(max_hidden=0), ValueError, "max_hidden must be in [1, 65535], not 0"),
    (dict(max_layers=2.0), TypeError, "max_layers must be an integer, not 2.0"),
    (dict(max_vocab=0), ValueError, "max_vocab must be in [1, 2**24], not 0"),
    (dict(columns=9), ValueError, "columns must be in 1..8, not 9"),
    (dict(elementwise_lanes=3), ValueError, "elementwise_lanes must be 1 or 2, not 3"),
    (dict(elementwise_lanes=2, engine_bytes=8), ValueError,
     "elementwise_lanes 2 needs engine_bytes of at least 16 (both states of a pair in one word), not 8"),
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
@pytest.mark.parametrize("engine_bytes, elements_per_cycle, idle, backpressure, columns, lanes",
                         [(16, 1, 0.0, 0.0, 1, 2), (8, 1, 0.3, 0.3, 1, 1), (64, 4, 0.2, 0.2, 1, 2),
                          (8, 2, 0.2, 0.4, 3, 1), (16, 2, 0.2, 0.4, 3, 2)])
# (2 columns, two element-wise lanes: the sim-default accelerator, test_driver)
def test_token_core_verilator(engine_bytes, elements_per_cycle, idle, backpressure, columns, lanes):
    from mmfree.hw.token_core import TokenCore
    from mmfree.sim.runner import simulate

    image = WeightImage.load(TINY)
    cfg = image.config
    core = TokenCore(engine_bytes=engine_bytes, rows_per_block=64, max_hidden=cfg.D, max_layers=cfg.L,
                     max_intermediate=cfg.I, max_vocab=cfg.V, elements_per_cycle=elements_per_cycle,
                     columns=columns, elementwise_lanes=lanes)
    result = simulate(core, toplevel="token_core", test_module=Path(__file__).stem,
                      module_dir=Path(__file__).parent,
                      params={"image": str(TINY), "engine_bytes": engine_bytes, "tokens": [5, 17, 300, 0],
                              "idle": idle, "backpressure": backpressure, "seed": 3 + engine_bytes + columns,
                              "columns": columns})
    assert result.tests == 2 and result.failed == 0
