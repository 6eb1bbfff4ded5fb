"""The host driver and its transports.

Pure-Python tests check what the driver computes without a device:
register packing and decoding, identity and capacity checks, buffer layout,
time bounds, configuration lookup (the board path without amaranth and
cocotb: tests/test_architecture.py). The tests marked ``sim`` run the driver against the
real accelerator RTL in Verilator through :class:`~mmfree.sim.transport.SimTransport`.
"""
from __future__ import annotations

import os
import sys
from fractions import Fraction

import numpy as np
import pytest

from mmfree.host import driver as drv
from mmfree.contract.transport import CountingTransport, TransportError, check_register_access
from mmfree.contract import configs, registers as regs
from mmfree.models import numerics as nx
from mmfree.models.weight_image import WeightImage

from helpers import TINY_IMAGE, golden_steps


def identity_words(cfg: configs.AcceleratorConfig, **override) -> dict[str, int]:
    """Register words of a build of ``cfg``, encoded field by field from the register map."""
    def pack(reg, **fields):
        word = 0
        for name, value in fields.items():
            word |= regs.BY_NAME[reg].field(name).put(value)
        return word

    words = {
        "ID": regs.ID_MAGIC,
        "VERSION": pack("VERSION", interface=regs.INTERFACE_VERSION, numerics=nx.NUMERICS_VERSION),
        "DESIGN_HASH": 0x1234ABCD,
        "BUILD_CONFIG": pack("BUILD_CONFIG", bus_bytes_log2=cfg.bus_bytes.bit_length() - 1, ports=cfg.ports,
                             engine_bytes_log2=cfg.engine_bytes.bit_length() - 1,
                             rows_per_block_log2=cfg.rows_per_block.bit_length() - 1, addr_bits=cfg.addr_width,
                             columns=cfg.columns),
        "CAPACITY_DIMS": pack("CAPACITY_DIMS", max_hidden=cfg.max_hidden, max_layers=cfg.max_layers),
        "CAPACITY_INNER": pack("CAPACITY_INNER", max_intermediate=cfg.max_intermediate,
                               max_vocab_log2=cfg.max_vocab_log2),
    }
    words.update(override)
    return words


# --------------------------------------------------------------------------
# Pure Python: packing and validation
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(configs.CONFIGS))
def test_identity_decodes_every_configuration(name):
    cfg = configs.get_config(name)
    ident = drv.BuildIdentity.from_words(identity_words(cfg))
    ident.check_device()
    assert (ident.bus_bytes, ident.ports, ident.engine_bytes, ident.rows_per_block) == \
        (cfg.bus_bytes, cfg.ports, cfg.engine_bytes, cfg.rows_per_block)
    assert (ident.max_hidden, ident.max_layers, ident.max_intermediate) == \
        (cfg.max_hidden, cfg.max_layers, cfg.max_intermediate)
    assert ident.max_vocab >= cfg.max_vocab and ident.design_hash == 0x1234ABCD
    assert ident.addr_width == cfg.addr_width and ident.columns == cfg.columns


@pytest.mark.parametrize("reg, value, message", [
    ("ID", 0xDEADBEEF, "no mmfree accelerator at this address: ID reads 0xDEADBEEF, expected 0x4D4D4631"),
    ("VERSION", regs.BY_NAME["VERSION"].field("interface").put(regs.INTERFACE_VERSION + 1)
     | regs.BY_NAME["VERSION"].field("numerics").put(nx.NUMERICS_VERSION),
     f"register interface {regs.INTERFACE_VERSION + 1}, this driver speaks {regs.INTERFACE_VERSION}"),
    ("VERSION", regs.BY_NAME["VERSION"].field("interface").put(regs.INTERFACE_VERSION)
     | regs.BY_NAME["VERSION"].field("numerics").put(nx.NUMERICS_VERSION + 7),
     f"numerics version {nx.NUMERICS_VERSION + 7}, this host's golden model is version {nx.NUMERICS_VERSION}"),
])
def test_identity_refuses_another_device(reg, value, message):
    ident = drv.BuildIdentity.from_words(identity_words(configs.get_config("pynq-z2"), **{reg: value}))
    with pytest.raises(drv.IdentityMismatch) as e:
        ident.check_device()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_manifest_hash_checked(kjv):
    ident = drv.BuildIdentity.from_words(identity_words(configs.get_config("pynq-z2")))
    ident.check_manifest({"design_hash": "9f00aa551234abcd"})      # low 32 bits of a longer content hash
    ident.check_manifest({"design_hash": 0x1234ABCD, "config": {"bus_bytes": 8, "ports": 4}})
    with pytest.raises(drv.IdentityMismatch, match="DESIGN_HASH reads 0x1234ABCD but the manifest says "
                                                   "0x1234ABCE"):
        ident.check_manifest({"design_hash": "1234abce"})
    with pytest.raises(drv.IdentityMismatch, match="the device's ports is 4 but the manifest says 2"):
        ident.check_manifest({"design_hash": 0x1234ABCD, "config": {"ports": 2}})


def test_image_must_fit_the_build(kjv, tiny):
    sim = drv.BuildIdentity.from_words(identity_words(configs.get_config("sim-default")))
    sim.check_image(kjv)
    sim.check_image(tiny)
    small = drv.BuildIdentity.from_words(identity_words(
        configs.get_config("sim-default"),
        CAPACITY_DIMS=regs.BY_NAME["CAPACITY_DIMS"].field("max_hidden").put(128)
        | regs.BY_NAME["CAPACITY_DIMS"].field("max_layers").put(4),
        BUILD_CONFIG=regs.BY_NAME["BUILD_CONFIG"].field("rows_per_block_log2").put(5)
        | regs.BY_NAME["BUILD_CONFIG"].field("bus_bytes_log2").put(3)
        | regs.BY_NAME["BUILD_CONFIG"].field("ports").put(2)
        | regs.BY_NAME["BUILD_CONFIG"].field("engine_bytes_log2").put(4)))
    with pytest.raises(drv.IdentityMismatch) as e:
        small.check_image(kjv)
    msg = str(e.value)
    assert msg.startswith("the model does not fit this accelerator build: rows_per_block 64 (this build streams "
                          "32; convert with --rows-per-block 32)")
    assert "hidden size 256 (this build holds at most 128)" in msg and "layers 6 (this build holds at most 4)" in msg
    assert "vocabulary" not in msg and "\n" not in msg


def test_buffer_layout(kjv):
    layout = drv.BufferLayout.of(kjv)
    regions = kjv.meta["regions"]
    # (numerics version 2: 32-bit gain and gate words)
    assert layout.stream_offset == 0 and layout.stream_bytes == regions["stream"]["size"] == 1_346_432
    assert layout.embed_offset % drv.BUFFER_ALIGN == 0 and layout.embed_offset >= layout.stream_bytes
    assert layout.embed_offset - layout.stream_bytes < drv.BUFFER_ALIGN
    assert layout.embed_stride == 512 and layout.embed_stride % 64 == 0          # D = 256 bf16 values
    assert layout.weight_buffer_bytes == layout.embed_offset + 4096 * 512
    # the row, STREAM, the state read and written (L x D int64), int64 logits
    assert layout.bytes_per_token == 512 + 1_346_432 + 2 * 8 * 6 * 256 + 8 * 4096
    assert layout.state_slot_bytes == 8 * 6 * 256 == layout.state_bytes
    assert layout.layer_bytes * 6 < layout.stream_bytes and layout.layer_bytes % 64 == 0
    assert layout.logits_bytes == regs.LOGIT_WORD_BYTES * 4096 == 8 * 4096
    assert layout.stream_bytes % 64 == 0


def test_timeout_bound():
    # 16x the cycles the bus needs for the bytes, plus a fixed allowance; never below the allowance.
    assert drv.timeout_cycles(1_600_000, 16) == drv.TIMEOUT_SLACK_CYCLES + 16 * 100_000
    assert drv.timeout_cycles(1, 16) == drv.TIMEOUT_SLACK_CYCLES + 16


def test_counters_come_from_the_register_map():
    names = [r.name for r in drv.COUNTERS]
    assert names[0] == "CYCLES_TOTAL" and "CYCLES_WEIGHT_WAIT" in names and names[-2:] == ["BYTES_READ", "TOKENS"]
    assert {f"CYCLES_{p.name}" for p in regs.Phase if p != regs.Phase.IDLE} <= set(names)


@pytest.mark.parametrize("offset, value, message", [
    (2, None, "register offset must be a non-negative multiple of 4, not 2"),
    (-4, None, "register offset must be a non-negative multiple of 4, not -4"),
    (0x100, None, "register offset 256 is outside the 256-byte register window"),
    (0, 1 << 32, "register value must be an unsigned 32-bit integer, not 4294967296"),
    (0, -1, "register value must be an unsigned 32-bit integer, not -1"),
])
def test_register_access_validated(offset, value, message):
    with pytest.raises(ValueError, match=message):
        check_register_access(offset, value, window=regs.REGISTER_SPACE_BYTES)


def test_configurations():
    z2, kv = configs.get_config("pynq-z2"), configs.get_config("kv260")
    # the ideal memory: a constant rate (PYNQ-Z2: its four ports' beat rate at 60 MHz, below the DDR's 2.1 GB/s)
    assert z2.ddr_bytes_per_second == pytest.approx(1.92e9) and kv.ddr_bytes_per_second == pytest.approx(2.88e9)
    assert (z2.bus_bytes, z2.ports, kv.bus_bytes, kv.ports) == (8, 4, 16, 4)
    assert z2.roofline_cycles(3200) == 100 and kv.max_vocab_log2 == 15
    assert z2.with_memory("ideal").ddr_params() == {"bandwidth_num": 32, "bandwidth_den": 1, "latency_cycles": 24,
                                                    "size_bytes": 96 << 20, "base_page": 0}
    # the KV260 holds every released size; 40-bit addresses reach its DDR above 4 GB too; its
    # simulated DDR is where Ubuntu's CMA lies
    assert (kv.max_hidden, kv.max_layers, kv.max_intermediate, kv.addr_width) == (2560, 32, 6912, 40)
    assert kv.ddr_params()["base_page"] << 12 == kv.ddr_base == 0x3600_0000
    assert z2.memory == "board" and z2.ddr_params()["refresh_cycles"] > 0     # the board model by default
    # two columns on the simulated build (CI runs batched decode and prefill); on the boards as many
    # as the LUT budget, the part's RAM and the clock allow (docs/columns.md)
    assert (configs.get_config("sim-default").columns, z2.columns, kv.columns) == (2, 2, 5)
    with pytest.raises(configs.ConfigError, match="unknown accelerator configuration 'zcu104' "
                                                  r"\(choose from pynq-z2, kv260, sim-default\)"):
        configs.get_config("zcu104")
    with pytest.raises(configs.ConfigError, match="x: rows_per_block 48 is not a multiple of engine_bytes 32"):
        configs.AcceleratorConfig("x", bus_bytes=8, ports=2, engine_bytes=32, rows_per_block=48,
                                  fifo_bytes=4096, outstanding=2, max_hidden=64, max_layers=1, max_intermediate=64,
                                  max_vocab=64, clock_hz=1e8, ddr_bytes_per_cycle=Fraction(8),
                                  ddr_latency_cycles=1, ddr_bytes=1 << 20)


def test_pynq_backend_without_pynq_is_one_line():
    from click.testing import CliRunner

    from mmfree.host.cli import main

    r = CliRunner().invoke(main, ["generate", "--model", str(TINY_IMAGE), "--prompt", "x", "--max-new-tokens", "2",
                                  "--backend", "pynq", "--bitstream", "missing.bit"])
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert r.exit_code == 1 and "Traceback" not in r.output
    if "pynq" in sys.modules or _has_pynq():
        assert lines[-1] == "Error: missing.bit: no such bitstream"
    else:
        assert lines[-1].startswith("Error: the pynq backend needs the pynq package")


def _has_pynq() -> bool:
    import importlib.util

    return importlib.util.find_spec("pynq") is not None


def test_accelerator_options_refused_for_golden_backends():
    from click.testing import CliRunner

    from mmfree.host.cli import main

    r = CliRunner().invoke(main, ["generate", "--model", str(TINY_IMAGE), "--prompt", "x", "--hw-config", "kv260"])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == \
        "Error: --hw-config applies to the sim and pynq backends only"


# --------------------------------------------------------------------------
# Through the simulated accelerator (Verilator, sim/accel_tb.v)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def device(tiny):
    """The sim-default accelerator with the tiny test model loaded."""
    from mmfree.sim.transport import SimTransport

    transport = SimTransport("sim-default")
    driver = drv.AcceleratorDriver(transport)
    driver.check_identity()
    driver.load_image(tiny)
    yield driver, transport
    driver.close()


def assert_recovered(driver, image, token):
    """After an error: a new sequence's first token gives the golden logits."""
    driver.reset_state()
    (want,) = golden_steps(image, [token])
    assert np.array_equal(driver.step(token).logits_act.astype(np.int64), want)


@pytest.mark.sim
def test_identity_of_the_simulated_build(device):
    driver, _ = device
    cfg = configs.get_config("sim-default")
    ident = driver.check_identity()
    assert (ident.bus_bytes, ident.ports, ident.engine_bytes, ident.rows_per_block) == \
        (cfg.bus_bytes, cfg.ports, cfg.engine_bytes, cfg.rows_per_block)
    assert (ident.max_hidden, ident.max_layers, ident.max_intermediate, ident.max_vocab_log2) == \
        (cfg.max_hidden, cfg.max_layers, cfg.max_intermediate, cfg.max_vocab_log2)
    assert ident.columns == cfg.columns == driver.columns


@pytest.mark.sim
def test_steps_are_bit_exact_with_counters(device, tiny):
    driver, transport = device
    ids = [1, 17, 300, 5, 5, 319, 0, 42]
    driver.reset_state()
    want = golden_steps(tiny, ids)
    layout = drv.BufferLayout.of(tiny)
    cfg = transport.config
    for n, (t, ref) in enumerate(zip(ids, want)):
        r = driver.step(t)
        assert np.array_equal(r.logits_act.astype(np.int64), ref), f"token {n}: logits differ"
        assert np.array_equal(r.logits, nx.act_to_float(ref))
        assert r.argmax == int(np.argmax(ref)) and r.argmax_value == int(ref[r.argmax])
        c = r.counters
        assert c["bytes_read"] == layout.pass_read_bytes(1) == layout.embed_stride + layout.stream_bytes + 8 * 2 * 64
        assert c["tokens"] == n + 1
        phases = sum(c[f"cycles_{p.name.lower()}"] for p in regs.Phase if p != regs.Phase.IDLE)
        assert 0 < phases <= c["cycles_total"]
        assert c["cycles_total"] >= cfg.roofline_cycles(c["bytes_read"])
    assert driver.counters() == r.counters


@pytest.mark.sim
def test_columns_decode_and_prefill_are_bit_exact(device, tiny):
    """A prefill of two prompt tokens in one pass, then a decode pass of two sequences (slots in
    reverse), then the clear of one slot: every column's logits and argmax equal the integer model
    stepping each sequence alone; the second column costs one more embedding row of traffic."""
    from mmfree.models.golden_int import IntegerModel

    driver, _ = device
    assert driver.columns == configs.get_config("sim-default").columns == 2
    model, layout = IntegerModel(tiny), drv.BufferLayout.of(tiny)
    states = [model.initial_state(), model.initial_state()]
    for slot in (0, 1):
        driver.reset_state(slot=slot)
    r = driver.run_pass([1, 17], slots=[0], prefill=True)
    want, states[0] = model.prefill([1, 17], states[0])
    assert np.array_equal(r.logits_act, want) and r.column_logits.shape == (1, tiny.config.V)
    assert r.argmax == int(np.argmax(want)) and r.argmaxes is None
    assert r.counters["bytes_read"] == layout.pass_read_bytes(2, prefill=True)
    for tokens, slots in (([5, 300], [1, 0]), ([319, 0], [0, 1])):
        r = driver.run_pass(tokens, slots=slots)
        want, new = model.step_batch(tokens, [states[s] for s in slots])
        for s, state in zip(slots, new):
            states[s] = state
        assert np.array_equal(r.column_logits, nx.act_to_float(want))
        assert r.argmaxes == tuple(int(np.argmax(w)) for w in want) and r.argmax == r.argmaxes[0]
    driver.reset_state(slot=1)                   # slot 0 keeps its sequence
    states[1] = model.initial_state()
    r = driver.run_pass([9, 9], slots=[0, 1])
    want, _ = model.step_batch([9, 9], states)
    assert np.array_equal(r.column_logits, nx.act_to_float(want)) and not np.array_equal(want[0], want[1])


@pytest.mark.sim
@pytest.mark.parametrize("call, message", [
    (lambda d: d.run_pass([1, 2, 3]), "a pass takes 1..2 tokens on this build, not 3"),
    (lambda d: d.run_pass([1, 2], slots=[0, 0]), "distinct slots"),
    (lambda d: d.run_pass([1], slots=[2]), "sequence slot 2 out of range"),
    (lambda d: d.run_pass([1, 2], slots=[0]), "2 tokens for 1 slots"),
    (lambda d: d.reset_state(slot=-1), "sequence slot -1 out of range"),
])
def test_bad_passes_never_reach_the_device(device, call, message):
    driver, transport = device
    before = driver.host_counts
    with pytest.raises(ValueError, match=message):
        call(driver)
    assert driver.host_counts.register_writes == before.register_writes


@pytest.mark.sim
def test_columns_beyond_the_build_are_a_device_error(device, tiny):
    """PASS.last_column beyond BUILD_CONFIG.columns, written around the driver: STATUS.error COLUMNS,
    no memory read; the device then runs on."""
    driver, transport = device
    status = regs.BY_NAME["STATUS"]
    transport.write(status.offset, status.field("done").put(1))
    transport.write(regs.BY_NAME["PASS"].offset, regs.BY_NAME["PASS"].field("last_column").put(2))
    transport.write(regs.BY_NAME["CONTROL"].offset, regs.BY_NAME["CONTROL"].field("start").put(1))
    assert transport.wait(1e-3, lambda: status.field("done").get(transport.read(status.offset)))
    assert status.field("error").get(transport.read(status.offset)) == regs.ErrorCode.COLUMNS
    assert transport.read(regs.BY_NAME["BYTES_READ"].offset) == 0
    transport.write(regs.BY_NAME["PASS"].offset, 0)   # back to what the driver last wrote there
    assert_recovered(driver, tiny, 7)


@pytest.mark.sim
def test_reset_state_starts_a_new_sequence(device, tiny):
    driver, _ = device
    ids = [1, 200, 7]
    want = golden_steps(tiny, ids)
    for _ in range(2):
        driver.reset_state()
        got = [driver.step(t).logits_act.astype(np.int64) for t in ids]
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert driver.counters()["tokens"] == len(ids)


@pytest.mark.sim
def test_token_out_of_range_never_reaches_the_device(device):
    driver, transport = device
    before = transport.requests
    for bad in (320, -1, 10**9, 1.5, True):
        with pytest.raises(ValueError, match=r"out of range \(vocabulary has 320 ids: 0..319\)"):
            driver.step(bad)
    assert transport.requests == before


@pytest.mark.sim
def test_device_error_names_the_error_code(device, tiny):
    """The hardware's own checks: TOKEN >= VOCAB (VOCAB lowered behind the driver's back), and a
    damaged STREAM record; each ends in one DeviceError line, and the next token runs normally."""
    driver, transport = device
    vocab = regs.BY_NAME["VOCAB"].offset
    transport.write(vocab, 100)
    with pytest.raises(drv.DeviceError, match=r"^token 150: the accelerator stopped with error TOKEN_RANGE$") as e:
        driver.step(150)
    assert e.value.code == regs.ErrorCode.TOKEN_RANGE
    transport.write(vocab, tiny.config.V)

    weights = driver._weights
    header = weights.read(4)
    weights.write(b"\0\0\0\0", 0)                      # the first record's magic | kind
    weights.sync_to_device()
    with pytest.raises(drv.DeviceError, match=r"^token 3: the accelerator stopped with error BAD_RECORD$"):
        driver.step(3)
    weights.write(header, 0)
    weights.sync_to_device()
    assert_recovered(driver, tiny, 3)


@pytest.mark.sim
@pytest.mark.parametrize("hidden, layers, intermediate", [
    ("max", "max", "max+1"), ("max+1", "model", "model"), ("model", "max+1", "model"),
    (0, "model", "model"), ("model", 0, "model"), ("model", "model", 0),
])
def test_shape_beyond_the_build_is_refused_by_the_device(device, tiny, hidden, layers, intermediate):
    """MODEL_DIMS / MODEL_INNER beyond CAPACITY_* (or zero), written behind the driver's back: the
    token core refuses to start (STATUS.error SHAPE, no token counted); the right shape runs after."""
    driver, transport = device
    cfg, c = transport.config, tiny.config
    sizes = {}
    for what, value, model, cap in (("hidden", hidden, c.D, cfg.max_hidden), ("layers", layers, c.L, cfg.max_layers),
                                    ("intermediate", intermediate, c.I, cfg.max_intermediate)):
        sizes[what] = {"model": model, "max": cap, "max+1": cap + 1}.get(value, value)
    dims, inner = regs.BY_NAME["MODEL_DIMS"], regs.BY_NAME["MODEL_INNER"]
    good = {reg.offset: transport.read(reg.offset) for reg in (dims, inner)}
    driver.reset_state()
    tokens = driver.counters()["tokens"]
    transport.write(dims.offset, dims.field("hidden").put(sizes["hidden"]) | dims.field("layers").put(sizes["layers"]))
    transport.write(inner.offset, inner.field("intermediate").put(sizes["intermediate"]))
    try:
        with pytest.raises(drv.DeviceError, match=r"^token 3: the accelerator stopped with error SHAPE$") as e:
            driver.step(3)
        assert e.value.code == regs.ErrorCode.SHAPE
        assert driver.counters()["tokens"] == tokens
    finally:
        for offset, word in good.items():
            transport.write(offset, word)
    assert_recovered(driver, tiny, 3)


@pytest.mark.sim
def test_timeout_is_one_line_and_recoverable(device, tiny):
    driver, transport = device
    driver.reset_state()
    with pytest.raises(drv.DeviceTimeout, match=r"^token 9: no STATUS.done within .* ms of device time \(200 cycles\)$"):
        driver.step(9, timeout_s=200 / transport.clock_hz)
    busy = regs.BY_NAME["STATUS"].field("busy")
    assert transport.wait(driver.step_timeout_s(), lambda: not busy.get(transport.read(regs.BY_NAME["STATUS"].offset)))
    assert_recovered(driver, tiny, 9)


@pytest.mark.sim
def test_image_that_does_not_fit_is_refused_before_allocation(device, tmp_path):
    from mmfree.models.synthetic import TINY_RANDOM, random_tensors
    from mmfree.models.weight_image import build_image

    driver, transport = device
    other = WeightImage.from_bytes(build_image(TINY_RANDOM, random_tensors(TINY_RANDOM, 1), rows_per_block=32))
    before = transport.requests
    with pytest.raises(drv.IdentityMismatch, match="rows_per_block 32 .this build streams 64"):
        driver.load_image(other)
    assert transport.requests == before          # the identity was read once, at the fixture's check
    assert driver.image is not None              # the loaded model stays usable


@pytest.mark.sim
def test_buffers_round_trip_through_the_simulated_ddr(device):
    _, transport = device
    buf = transport.allocate(10_000)
    assert buf.physical_address % 4096 == 0 and buf.physical_address > 0
    data = np.random.default_rng(3).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    buf.write(data[:6000])
    buf.write(data[6000:], 6000)
    buf.sync_to_device()
    assert transport.memory_read(buf.physical_address + 123, 4567) == data[123:4690]
    buf.sync_from_device()
    assert buf.read(10_000) == data
    with pytest.raises(ValueError, match=r"bytes \[9999, 10001\) are outside the 10000-byte buffer"):
        buf.read(2, 9999)


@pytest.mark.sim
def test_a_simulator_that_dies_is_one_line(tiny):
    from mmfree.contract.transport import TransportError
    from mmfree.sim.transport import SimTransport

    transport = SimTransport("sim-default")
    try:
        os.kill(transport.server_info["pid"], 9)
        with pytest.raises(TransportError, match=r"^(the simulator stopped|lost the simulator)"):
            for _ in range(3):
                transport.read(regs.BY_NAME["ID"].offset)
    finally:
        transport.close()


class _BuffersAbove(CountingTransport):
    """``inner`` with every buffer's bus address raised by ``shift`` (as a board whose CMA lies in
    its upper DDR): the driver must refuse what its build cannot address, before any START."""

    def __init__(self, inner, shift):
        super().__init__(inner)
        self.shift = shift

    def allocate(self, nbytes, *, cacheable=False):
        buf = self.inner.allocate(nbytes, cacheable=cacheable)
        buf.physical_address += self.shift
        return buf

    def close(self):
        """Leaves ``inner`` open: the module's fixture owns it and closes it."""


@pytest.mark.sim
def test_buffer_beyond_the_builds_addresses_is_refused(device, tiny):
    driver, transport = device
    high = drv.AcceleratorDriver(_BuffersAbove(transport, 1 << 32))
    assert high.check_identity().addr_width == 32
    with pytest.raises(drv.IdentityMismatch) as e:
        high.load_image(tiny)
    assert str(e.value).startswith("the weight buffer at 0x1") and "32-bit addresses" in str(e.value)
    assert "\n" not in str(e.value) and high.image is None
    driver.load_image(tiny)                      # the fixture's driver goes on as before
    assert_recovered(driver, tiny, 5)


@pytest.mark.sim
def test_a_40_bit_build_runs_from_above_4_gb(tiny):
    """The KV260's address width and DDR placement on the small build: every read and the logits
    write go through the high address halves, bit exact."""
    import dataclasses

    from mmfree.sim.transport import SimTransport

    cfg = dataclasses.replace(configs.get_config("sim-default"), addr_width=40, ddr_base=0x8_0000_0000)
    with SimTransport(cfg) as transport:
        driver = drv.AcceleratorDriver(transport)
        assert driver.check_identity().addr_width == 40
        driver.load_image(tiny)
        assert driver._weights.physical_address >= 0x8_0000_0000
        tokens = [1, 7, 300]
        want = golden_steps(tiny, tokens)
        for token, logits in zip(tokens, want):
            result = driver.step(token)
            assert np.array_equal(result.logits_act.astype(np.int64), logits)
            assert result.argmax == int(np.argmax(logits))
        driver.close()


def test_simulated_ddr_must_lie_within_the_address_width():
    import dataclasses

    with pytest.raises(configs.ConfigError, match="must be 4 KiB aligned and end within 32-bit addresses"):
        dataclasses.replace(configs.get_config("sim-default"), ddr_base=0xFFFF_F000)


class _SmallMemory(_BuffersAbove):
    """``inner`` whose allocations above ``limit`` bytes fail as a full CMA does."""

    def __init__(self, inner, limit):
        super().__init__(inner, 0)
        self.limit = limit

    def allocate(self, nbytes, *, cacheable=False):
        if nbytes > self.limit:
            raise TransportError(f"cannot allocate {nbytes:,} bytes of device memory: out of memory")
        return super().allocate(nbytes, cacheable=cacheable)


@pytest.mark.sim
def test_embedding_table_in_host_memory_is_bit_exact(device, tiny):
    """A stock PYNQ-Z2 has ~120 MiB of CMA: the 370M stream fits, its table beside it does not. With
    the table in host memory, each token's row is copied to a one-row buffer; the device's row
    address (EMBED_ADDR + TOKEN * EMBED_STRIDE, modulo 2**32) lands on it."""
    driver, transport = device
    stride = tiny.meta["regions"]["embedding"]["row_stride"]
    whole = drv.BufferLayout.of(tiny).weight_buffer_bytes
    small = drv.AcceleratorDriver(_SmallMemory(transport, whole - 1))  # stream + a row fit, stream + table not
    with pytest.raises(TransportError):
        small.load_image(tiny, embedding="device")
    small.load_image(tiny)                                            # auto: falls back to the host
    assert small.embedding_place == "host"
    tokens = [tiny.config.V - 1, 0, 17, 17, 200]
    want = golden_steps(tiny, tokens)
    for token, logits in zip(tokens, want):
        before = small.host_counts
        result = small.step(token)
        assert np.array_equal(result.logits_act.astype(np.int64), logits)
        spent = small.host_counts - before
        assert spent.buffer_bytes_written == stride and spent.flushes == 1
    driver.load_image(tiny)                                           # the fixture's driver goes on as before
    assert driver.embedding_place == "device"
    assert_recovered(driver, tiny, 5)
    with pytest.raises(ValueError, match="embedding must be one of auto, device, host, not 'disk'"):
        driver.load_image(tiny, embedding="disk")
