"""BitLinearEngine on real weight-image records against ``IntegerModel.bitlinear`` (bit exact), in Verilator.

The records' bytes are cut into E-byte beats exactly as the DDR reader
delivers them; each BITLINEAR record's input is what the integer model fed
it on a real token (``bitlinear_cases.record_inputs``). Every x vector is
queued at once: the engine must take record n+1's input only after record
n's code pass, as it does in the token core.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import signed

from bitlinear_cases import KJV, golden_outputs, interleave, load_image, record_inputs, x_beats
from mmfree.hw.bitlinear_engine import BitLinearEngine, x_layout, y_layout
from mmfree.models import numerics as nx
from mmfree.models.weight_image import GATE_WORD, RECORD_HEADER_BYTES, RECORD_MAGIC

# Units built only to read their attributes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
    from cocotb.triggers import FallingEdge, RisingEdge
except ImportError:  # pragma: no cover
    cocotb = None

TOKENS = (1, 63, 90)
#: The bundled model's layer 1 (its gates are not all zero, unlike layer 0's) and the head.
KJV_RECORDS = tuple(f"model.layers.1.{r}" for r in ("attn.lower_bound", "attn.in", "attn.out", "mlp.in", "mlp.out")) \
    + ("head",)


def column_tokens(columns: int):
    """The tokens whose last step gives column c's record inputs (column 0: ``TOKENS``)."""
    return [TOKENS] + [(1, 5 + 7 * c, 90 + c) for c in range(1, columns)]


def output_order(rows: int, R: int, E: int, columns: int):
    """(column, row) in the order the engine emits one consumer's outputs: block by block, each
    accumulator beat's E rows column by column."""
    return [(c, row) for b0 in range(0, rows, R) for s0 in range(b0, b0 + R, E)
            for c in range(columns) for row in range(s0, min(s0 + E, rows))]


def y_beats(ys) -> int:
    """``y`` beats that carry the outputs ``ys`` (consumer, column, value, last): each run of a
    column's rows goes two to a beat, a consumer's odd last row alone."""
    beats, i = 0, 0
    while i < len(ys):
        paired = i + 1 < len(ys) and ys[i][:2] == ys[i + 1][:2] and not ys[i][3]
        beats, i = beats + 1, i + 2 if paired else i + 1
    return beats


def stream_records(key, names, E: int, seed: int, zero_x=(), columns: int = 1, build_columns: int | None = None):
    """Weight beats, x payloads, expected y tuples (consumer, column, value, last) and expected
    ``gates`` beats (:func:`gates_layout` bits) of records in order, and per record (name, first
    beat, first matrix beat, end beat, x beats). Column c's inputs are
    the integer model's on ``column_tokens(columns)[c]``; ``zero_x`` records get a zero vector in
    column 0. The x payloads are those of an engine of ``build_columns`` (default ``columns``)."""
    rng = np.random.default_rng(seed)
    image = load_image(key)
    inputs = [record_inputs(key, tokens) for tokens in column_tokens(columns)]
    layout = x_layout(build_columns or columns)
    stream = bytes(image.stream)
    beats, xs, ys, gs, spans = [], [], [], [], []
    for name in names:
        rec = image.record(name)
        start = len(beats)
        chunk = stream[rec["offset"]: rec["offset"] + rec["size"]]
        beats += [int.from_bytes(chunk[i:i + E], "little") for i in range(0, len(chunk), E)]
        if rec["kind"] == "LOWER_BOUND":
            # The gate beats as they are in the stream (lanes beyond K hold its zero padding).
            gates = image.lower_bound_gates(rec["layer"])
            n = -(-len(gates) * np.dtype(GATE_WORD).itemsize // E)
            gate_beats = beats[start + RECORD_HEADER_BYTES // E: start + RECORD_HEADER_BYTES // E + n]
            assert gate_beats[0] & 0xFFFFFFFF == int(gates[0])
            gs += [b | (int(i == n - 1) << (8 * E)) for i, b in enumerate(gate_beats)]
            spans.append((name, start, start + RECORD_HEADER_BYTES // E, len(beats), 0))
            continue
        per_column = []
        for col in range(columns):
            x, n = inputs[col][name]
            if name in zero_x and col == 0:
                x = np.zeros_like(x)
            noise = rng.integers(nx.ACT_MIN, nx.ACT_MAX, size=len(x))
            per_column.append((x, n if n is not None else noise, golden_outputs(key, name, x, n)))  # norm: GATE only
        record_xs = x_beats(layout, rng, interleave(rng, [rec["k"]] * columns, longest_run=60),
                            [(x, n) for x, n, _ in per_column])
        xs += record_xs
        for c in range(len(rec["consumers"])):
            rows = rec["consumers"][c]["rows"]
            ys += [(c, col, int(per_column[col][2][c][row]), int(row == rows - 1))
                   for col, row in output_order(rows, image.rows_per_block, E, columns)]
        spans.append((name, start, (rec["consumers"][0]["matrix_offset"] - rec["offset"]) // E + start, len(beats),
                      len(record_xs)))
    return beats, xs, ys, gs, spans


class TB:
    """Clock, reset and the three streams of the engine."""

    def __init__(self, dut, *, idle=0.0, backpressure=0.0, seed=0, columns=None):
        from mmfree.sim.runner import bench_params
        from mmfree.sim.stream import StreamDriver, StreamMonitor

        self.dut = dut
        dut.last_column.value = (columns or bench_params().get("columns", 1)) - 1
        self.weights = StreamDriver(dut, "weights", idle=idle, seed=seed)
        self.x = StreamDriver(dut, "x", idle=idle, seed=seed + 1)
        self.y = StreamMonitor(dut, "y", backpressure=backpressure, seed=seed + 2)
        self.gates = StreamMonitor(dut, "gates", backpressure=backpressure, seed=seed + 3)
        dut.clear_error.value = 0

    @classmethod
    async def start(cls, dut, **kw):
        from mmfree.sim.stream import start_clock_and_reset

        await start_clock_and_reset(dut)
        return cls(dut, **kw)

    def check_y(self, want, label=""):
        from mmfree.sim.runner import bench_params

        assert not self.y.protocol_errors, self.y.protocol_errors[:4]
        layout = y_layout(bench_params().get("columns", 1))
        got, unpaired = [], []
        for w in self.y.items:
            v = layout.from_bits(w)
            # a beat holds rows 2i and 2i + 1 of its column; last marks the beat with the final row
            got.append((int(v.consumer), int(v.column), int(v.value[0]), int(v.last) if not v.pair else 0))
            if v.pair:
                got.append((int(v.consumer), int(v.column), int(v.value[1]), int(v.last)))
            else:
                unpaired.append(len(got) - 1)
        # a beat of one row is only ever a column's last row of a consumer with an odd row count
        assert all(got[i][3] for i in unpaired), f"{label}: a beat without its second row before the last"
        assert len(got) == len(want), f"{label}: {len(got)} outputs, want {len(want)}"
        bad = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w]
        assert not bad, f"{label}: {len(bad)} mismatches (index, got, want): {bad[:4]}"

    def check_gates(self, want, label=""):
        assert not self.gates.protocol_errors, self.gates.protocol_errors[:4]
        assert self.gates.items == want, f"{label}: {len(self.gates.items)} gate beats, want {len(want)}"


async def run_records(dut, key, names, *, idle, backpressure, seed, zero_x=(), x_first=False, columns=None):
    """Run records through the engine with ``columns`` columns in use (default: all it has)."""
    from mmfree.sim.runner import bench_params

    E, columns = bench_params()["E"], columns or bench_params().get("columns", 1)
    beats, xs, ys, gs, spans = stream_records(key, names, E, seed, zero_x, columns, bench_params().get("columns", 1))
    tb = await TB.start(dut, idle=idle, backpressure=backpressure, seed=seed, columns=columns)
    tb.x.send(xs)
    if x_first:  # the first record's input complete before its header, as after the token core's EMBED
        first_x = next(span[4] for span in spans if span[4])
        while len(tb.x.transfer_cycles) < first_x:
            await RisingEdge(dut.clk)
    tb.weights.send(beats)
    await tb.y.wait_for(y_beats(ys), timeout_cycles=int((4 * len(beats) + 8 * len(ys) + 5000) * (1 + 3 * (idle + backpressure))))
    for _ in range(50):
        await RisingEdge(dut.clk)
    tb.check_y(ys, key)
    tb.check_gates(gs, key)
    assert len(tb.weights.transfer_cycles) == len(beats) and tb.weights.idle_now
    assert int(dut.error.value) == 0 and int(dut.busy.value) == 0
    return tb, spans


if cocotb is not None:
    @cocotb.test()
    async def bench_cycles(dut):
        """The bundled model's layer 1 and head, beats and x always there, y always ready:
        exact outputs; prep cycles as ``prep_cycles``; matrix beats one per cycle when the
        output side keeps up (K / 5 >= E / 2, two rows a cycle); the figures go to the report file."""
        from mmfree.sim.runner import bench_params

        p = bench_params()
        if not p["kjv"]:  # no cycle figures for this build: the whole awkward model, no gaps
            names = [r["name"] for r in load_image(p["odd"]).records()]
            await run_records(dut, p["odd"], names, idle=0.0, backpressure=0.0, seed=p["seed"], x_first=True)
            return
        tb, spans = await run_records(dut, KJV, KJV_RECORDS, idle=0.0, backpressure=0.0, seed=p["seed"],
                                      x_first=True)
        image = load_image(KJV)
        tc = tb.weights.transfer_cycles
        report = []
        for name, start, mat, end, _ in spans:
            rec = image.record(name)
            report.append({"record": name, "kind": rec["kind"], "k": rec["k"],
                           "consumers": len(rec.get("consumers", [])),
                           "rows": [c["rows"] for c in rec.get("consumers", [])],
                           "beats": end - start, "prep": tc[mat] - tc[start], "matvec": tc[end - 1] - tc[mat] + 1,
                           "total": tc[end - 1] - tc[start] + 1})
        Path(p["report"]).write_text(json.dumps(report, indent=1))

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Every record of a model with awkward sizes, random gaps on weights and x, random
        backpressure on y: exact outputs, protocol kept, nothing left over."""
        from mmfree.sim.runner import bench_params

        p = bench_params()
        names = [r["name"] for r in load_image(p["odd"]).records()]
        await run_records(dut, p["odd"], names, idle=0.3, backpressure=0.5, seed=p["seed"])

    @cocotb.test()
    async def bench_heavy_backpressure(dut):
        """y mostly stalled while the stream keeps coming: the engine stalls and loses nothing."""
        from mmfree.sim.runner import bench_params

        p = bench_params()
        key = KJV if p["kjv"] else p["odd"]
        names = KJV_RECORDS[:3] if p["kjv"] else [r["name"] for r in load_image(key).records()][:4]
        await run_records(dut, key, names, idle=0.0, backpressure=0.9, seed=p["seed"] + 1)

    @cocotb.test()
    async def bench_zero_vector(dut):
        """A zero input vector gives all-zero outputs (the golden model's M' = 0 case); the records
        around it are unaffected. A build of several columns runs this with one column fewer in
        use (``last_column``): the idle column takes no input and gives no output."""
        from mmfree.sim.runner import bench_params

        p = bench_params()
        names = [r["name"] for r in load_image(p["odd"]).records()][:3]
        await run_records(dut, p["odd"], names, idle=0.2, backpressure=0.2, seed=p["seed"] + 2,
                          zero_x=(names[0],), columns=max(1, p.get("columns", 1) - 1))

    @cocotb.test()
    async def bench_bad_headers(dut):
        """A wrong magic, a wrong kind, K above max_k, N above max_rows: error rises, no further
        beat is taken (no hang, no garbage out), clear_error returns the engine to idle and the
        next record is exact."""
        from mmfree.sim.runner import bench_params

        p = bench_params()
        E = p["E"]
        image = load_image(p["odd"])
        good = next(r for r in image.records() if r["kind"] == "BITLINEAR")
        header = bytearray(bytes(image.stream)[good["offset"]: good["offset"] + RECORD_HEADER_BYTES])

        def patched(word, value):
            h = bytearray(header)
            h[4 * word: 4 * word + 4] = int(value).to_bytes(4, "little", signed=True)
            return [int.from_bytes(h[i:i + E], "little") for i in range(0, len(h), E)]

        bad = [patched(0, 0x12340001), patched(0, RECORD_MAGIC | 7), patched(1, p["max_k"] + 1),
               patched(8, p["max_rows"] + 1), patched(1, 0)]
        beats, xs, ys, _, _ = stream_records(p["odd"], [good["name"]], E, p["seed"], columns=p.get("columns", 1))
        tb = await TB.start(dut)
        for n, header_beats in enumerate(bad):
            tb.weights.send(header_beats + beats)
            sent = len(tb.weights.transfer_cycles)
            for _ in range(len(header_beats) + 20):
                await RisingEdge(dut.clk)
            assert int(dut.error.value) == 1, f"bad header {n}: no error"
            assert len(tb.weights.transfer_cycles) == sent + len(header_beats), f"bad header {n}: beats taken"
            assert int(dut.weights__ready.value) == 0
            assert not tb.y.items
            await FallingEdge(dut.clk)
            dut.clear_error.value = 1
            await FallingEdge(dut.clk)
            dut.clear_error.value = 0
            assert int(dut.error.value) == 0
            tb.x.send(xs)
            await tb.y.wait_for(y_beats(ys), timeout_cycles=20 * len(beats) + 2000)
            tb.check_y(ys, f"after bad header {n}")
            tb.y.items.clear()


# --------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(engine_bytes=12, rows_per_block=64, max_k=64, max_rows=64), ValueError,
     "engine_bytes must be a power of two in 8..64, not 12"),
    (dict(engine_bytes=128, rows_per_block=128, max_k=64, max_rows=64), ValueError,
     "engine_bytes must be a power of two in 8..64, not 128"),
    (dict(engine_bytes=16, rows_per_block=40, max_k=64, max_rows=64), ValueError,
     "rows_per_block must be a positive multiple of engine_bytes (16), at most 4096, not 40"),
    (dict(engine_bytes=16, rows_per_block=64, max_k=0, max_rows=64), ValueError,
     "max_k must be in 1..65535, not 0"),
    (dict(engine_bytes=16, rows_per_block=64, max_k=64, max_rows=1 << 24), ValueError,
     "max_rows must be in 1..16777215, not 16777216"),
    (dict(engine_bytes=16.0, rows_per_block=64, max_k=64, max_rows=64), TypeError,
     "engine_bytes must be an integer, not 16.0"),
    (dict(engine_bytes=8, rows_per_block=64, max_k=64, max_rows=64, elements_per_cycle=4), ValueError,
     "elements_per_cycle must be 1, 2 or 4 and at most engine_bytes / 4 (2), not 4"),
    (dict(engine_bytes=16, rows_per_block=64, max_k=64, max_rows=64, elements_per_cycle=3), ValueError,
     "elements_per_cycle must be 1, 2 or 4 and at most engine_bytes / 4 (4), not 3"),
    (dict(engine_bytes=16, rows_per_block=64, max_k=64, max_rows=64, columns=0), ValueError,
     "columns must be in 1..16, not 0"),
])
def test_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc) as info:
        BitLinearEngine(**kwargs)
    assert str(info.value) == msg


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        BitLinearEngine(16, 64, 64, 64)


def test_ports_follow_the_interface():
    unit = BitLinearEngine(engine_bytes=16, rows_per_block=64, max_k=768, max_rows=4096)
    assert unit.weights.payload.shape().width == 128
    assert set(unit.x.payload.shape().members) == {"value", "norm", "column", "pair", "last"}
    assert unit.x.payload.shape().members["column"].width == 1          # always 0 with one column
    for name in ("value", "norm"):                                      # two elements a beat
        assert unit.x.payload.shape().members[name].elem_shape == signed(nx.ACT_BITS)
        assert unit.x.payload.shape().members[name].length == 2
    assert set(unit.y.payload.shape().members) == {"consumer", "column", "value", "pair", "last"}
    wide = BitLinearEngine(engine_bytes=16, rows_per_block=64, max_k=768, max_rows=4096, columns=3)
    assert wide.x.payload.shape().members["column"].width == wide.y.payload.shape().members["column"].width == 2
    assert unit.y.payload.shape().members["value"].elem_shape == signed(nx.ACT_BITS)
    assert unit.y.payload.shape().members["value"].length == 2
    assert unit.matvec_beats(256, [256, 256, 256]) == 3 * 4 * 52 * 4
    # K = 256 int32 gain words: 1024 bytes, 64 beats of 16 bytes per part; K = 100: 400 bytes -> 448
    assert unit.gain_beats(256, 3) == 4 * 64 and unit.gain_beats(100, 1) == 2 * 448 // 16


def test_stimulus_covers_the_edges():
    """The awkward model really has partial groups, partial blocks and padded parts."""
    image = load_image("odd24")
    recs = {r["name"]: r for r in image.records()}
    assert any(r["k"] % 5 for r in recs.values())
    assert any(c["rows"] % 24 for r in recs.values() for c in r.get("consumers", []))
    assert any((-(-c["rows"] // 24) * -(-r["k"] // 5) * 24) % 64          # matrix parts with padding beats
               for r in recs.values() for c in r.get("consumers", []))


CONFIGS = [  # (E, R, P, image of the other benches, kjv records?, max_k, max_rows, columns)
    (8, 64, 1, "odd64", True, 768, 4096, 1),
    (16, 64, 1, "odd64", True, 768, 4096, 1),
    (64, 64, 4, "odd64", True, 768, 4096, 1),
    (8, 24, 2, "odd24", False, 72, 144, 1),
    (8, 24, 2, "odd24", False, 72, 144, 3),        # three columns: partial groups, blocks and beats
]


@pytest.mark.sim
@pytest.mark.parametrize("E, R, P, odd, kjv, max_k, max_rows, columns", CONFIGS)
def test_bitlinear_engine_verilator(E, R, P, odd, kjv, max_k, max_rows, columns, tmp_path):
    from mmfree.sim.runner import simulate

    engine = BitLinearEngine(engine_bytes=E, rows_per_block=R, max_k=max_k, max_rows=max_rows,
                             elements_per_cycle=P, columns=columns)
    report = tmp_path / "cycles.json"
    result = simulate(engine, toplevel="bitlinear_engine", test_module=Path(__file__).stem,
                      module_dir=Path(__file__).parent,
                      params={"E": E, "R": R, "P": P, "odd": odd, "kjv": kjv, "max_k": max_k,
                              "max_rows": max_rows, "columns": columns, "seed": 40 + E + R + columns,
                              "report": str(report)})
    assert result.tests == 5 and result.failed == 0
    if not kjv:
        return
    # The cycle figures: exactly as published where the output side keeps up (K / 5 >= E / 2;
    # with R = E, K / 5 >= the scales' cycles too), never faster.
    image = load_image(KJV)
    rows = json.loads(report.read_text())
    print(f"\nE = {E}, R = {R}, P = {P}: cycles per record (bundled model, layer 1 and head)")
    for r in rows:
        print(f"  {r['record']:34s} beats {r['beats']:6d}  prep {r['prep']:5d}  matvec {r['matvec']:6d}  "
              f"total {r['total']:6d}")
        if r["kind"] != "BITLINEAR":
            continue
        cycles = engine.matvec_cycles(r["k"], r["rows"])
        assert r["matvec"] >= cycles and r["prep"] >= engine.prep_cycles(r["k"], r["consumers"]), r
        if r["k"] // 5 >= E // 2 and (R > E or r["k"] // 5 >= engine.input_stage.scalars_cycles_max):
            # The output side (two rows a cycle) keeps up; with one result beat a block (no FIFO after
            # the accumulator) the first block's results wait for the record's scales, so the next
            # block must last as long as those take.
            assert r["matvec"] == cycles, r
        if r["k"] // 5 >= E:
            # And the previous record lasts long enough for this one's input (one element per
            # cycle) to be complete before its gains are.
            assert r["prep"] == engine.prep_cycles(r["k"], r["consumers"]), r
