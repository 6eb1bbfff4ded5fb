"""The board backend (``--backend pynq``) through its own code, with the simulation underneath.

:mod:`mmfree.sim.pynq_sim` provides the part of the ``pynq`` API the host
uses (Overlay, MMIO, allocate with flush/invalidate, ps.Clocks) on the
Verilator simulation of the ``sim-default`` accelerator; installed as
``pynq`` (in ``sys.modules`` here, or as a package on ``PYTHONPATH`` for the
CLI), it lets ``host/pynq_transport.py`` and ``PynqBackend`` run unchanged:
overlay, DESIGN_HASH against the manifest, buffers, the weight image loaded
once, generation. Nothing here has run on a board.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmfree.contract.configs import get_config
from mmfree.host import backends
from mmfree.host.backends import BackendError, GoldenBackend, PynqBackend
from mmfree.host.cli import main
from mmfree.host.generate import generate
from mmfree.sim import pynq_sim
from helpers import TINY_IMAGE, Recording

pytestmark = pytest.mark.sim

CONFIG = "sim-default"


def simulated_design_hash() -> int:
    """DESIGN_HASH of the simulated sim-default build (what its register reads)."""
    from mmfree.contract.registers import design_hash_from_digest
    from mmfree.sim.accel_server import design_key

    return design_hash_from_digest(design_key(get_config(CONFIG)))


def write_overlay(folder: Path, *, design_hash: int, manifest: bool = True) -> Path:
    """A bitstream folder as ``make bitstream`` leaves it: mmfree.bit, mmfree.hwh, manifest.json.

    The .bit/.hwh contents are never read by the simulated ``pynq``; the manifest is what the
    backend checks. Its clock is the simulated device's clock in wall time (pynq_sim.WALL_CLOCK_HZ).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mmfree.bit").write_bytes(b"simulated overlay: the accelerator RTL in Verilator")
    (folder / "mmfree.hwh").write_text("<!-- simulated overlay -->\n")
    if manifest:
        cfg = get_config(CONFIG)
        (folder / "manifest.json").write_text(json.dumps({
            "board": "pynq-z2", "design_hash": f"0x{design_hash:08X}", "clock_hz": pynq_sim.WALL_CLOCK_HZ,
            "config": cfg.to_dict(), "tool_version": None}))
    return folder / "mmfree.bit"


@pytest.fixture
def fake_pynq(monkeypatch):
    """``import pynq`` gives the simulated PYNQ; the simulated device is stopped afterwards."""
    monkeypatch.setitem(sys.modules, "pynq", pynq_sim)
    yield pynq_sim
    pynq_sim.shutdown()


def test_pynq_backend_generates_the_golden_tokens(fake_pynq, tiny, tmp_path):
    bit = write_overlay(tmp_path / "overlay", design_hash=simulated_design_hash())
    board = PynqBackend(tiny, bitstream=bit)
    try:
        assert board.manifest["design_hash"] == f"0x{board.driver.identity.design_hash:08X}"
        device, golden = Recording(board), Recording(GoldenBackend(tiny))
        prompt = [tiny.config.bos_token_id, 17, 300, 5]
        want = list(generate(golden, prompt, 4))
        got = list(generate(device, prompt, 4))
        assert got == want
        for n, (a, b) in enumerate(zip(device.logits, golden.logits)):
            assert np.array_equal(a, b), f"step {n}: logits differ"
        counters = board.driver.counters()
        assert counters["tokens"] == len(device.logits) and counters["cycles_total"] > 0
        # A second sequence on the same backend: the image is not loaded again, the state is reset.
        buffers = list(board.driver.transport._buffers)
        assert list(generate(device, prompt, 4)) == want
        assert board.driver.transport._buffers == buffers
        # Greedy through the board's own code: no logits byte; the wait sleeps the token's expected
        # time (pynq_sim's clock is a lower bound of the simulator's speed), then one STATUS read.
        hosts = []

        class Greedy:                      # keeps each generated token's host traffic
            reset, advance = board.reset, board.advance

            @staticmethod
            def step_argmax(token):
                nxt = board.step_argmax(token)
                hosts.append(board.last.host)
                return nxt

        assert list(generate(Greedy, prompt, 4)) == want
        assert len(hosts) == 4
        for h in hosts:
            assert (h.buffer_bytes_read, h.invalidates, h.register_writes, h.waits) == (0, 0, 3, 1), h
            assert 2 <= h.register_reads <= 3, h                      # STATUS (once if on time), ARGMAX
    finally:
        board.close()


def test_freed_buffer_refuses_device_access(fake_pynq, tiny, tmp_path):
    """PynqTransport.close frees its buffers; a freed buffer must not reach the device again."""
    bit = write_overlay(tmp_path / "overlay", design_hash=simulated_design_hash())
    board = PynqBackend(tiny, bitstream=bit)
    arrays = [buf._array for buf in board.driver.transport._buffers]
    assert arrays and all(a.device_address is not None for a in arrays)
    board.close()
    for a in arrays:
        assert a.device_address is None
        with pytest.raises(ValueError, match="this buffer was freed"):
            a.flush()
        with pytest.raises(ValueError, match="this buffer was freed"):
            a.invalidate()


def test_pynq_backend_refuses_a_manifest_of_another_build(fake_pynq, tiny, tmp_path):
    real = simulated_design_hash()
    bit = write_overlay(tmp_path / "overlay", design_hash=real ^ 0x00010000)
    with pytest.raises(BackendError) as e:
        PynqBackend(tiny, bitstream=bit)
    assert str(e.value) == (f"DESIGN_HASH reads 0x{real:08X} but the manifest says 0x{real ^ 0x00010000:08X}: "
                            "the bitstream and its manifest do not belong together")


def test_pynq_backend_refuses_a_bitstream_without_manifest(fake_pynq, tiny, tmp_path):
    bit = write_overlay(tmp_path / "overlay", design_hash=0, manifest=False)
    with pytest.raises(BackendError, match=r"manifest.json: no manifest beside the bitstream; the pynq backend "
                                           r"refuses a bitstream it cannot identify"):
        PynqBackend(tiny, bitstream=bit)


def test_cli_missing_bitstream_is_one_line(fake_pynq, tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "BITSTREAMS", tmp_path / "bitstreams")
    runner = CliRunner()
    for args, message in (
            (["--bitstream", str(tmp_path / "missing.bit")], f"Error: {tmp_path / 'missing.bit'}: no such bitstream"),
            (["--hw-config", "kv260"], f"Error: {tmp_path / 'bitstreams' / 'kv260' / 'mmfree.bit'}: no such "
                                       "bitstream (build it with `make bitstream BOARD=kv260` on a machine with "
                                       "Vivado and copy bitstreams/kv260/ here: docs/board.md)"),
            (["--hw-config", "sim-default"], "Error: configuration 'sim-default' is not a board build "
                                             "(boards: pynq-z2, kv260)")):
        for command in ("generate", "bench"):
            r = runner.invoke(main, [command, "--model", str(TINY_IMAGE), "--prompt", "x", "--backend", "pynq", *args])
            lines = [x for x in r.output.strip().splitlines() if x.strip()]
            assert r.exit_code == 1 and lines == [message], r.output


def test_cli_generate_and_bench_on_the_simulated_board(tmp_path):
    """``mmfree generate/bench --backend pynq`` in a fresh process whose ``pynq`` is the simulated one."""
    bit = write_overlay(tmp_path / "overlay", design_hash=simulated_design_hash())
    package = tmp_path / "site" / "pynq"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from mmfree.sim.pynq_sim import *  # noqa: F401,F403\n"
                                         "from mmfree.sim.pynq_sim import __version__, ps  # noqa: F401\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    exe = [sys.executable, "-m", "mmfree.host.cli"]
    args = ["--model", str(TINY_IMAGE), "--prompt", "In the beginning"]
    golden = subprocess.run([*exe, "generate", *args, "--max-new-tokens", "4"], capture_output=True, text=True,
                            env=env, timeout=600)
    board = subprocess.run([*exe, "generate", *args, "--max-new-tokens", "4", "--backend", "pynq",
                            "--bitstream", str(bit)], capture_output=True, text=True, env=env, timeout=600)
    assert golden.returncode == 0 and board.returncode == 0, board.stderr
    assert board.stdout == golden.stdout
    bench = subprocess.run([*exe, "bench", *args, "--tokens", "3", "--backend", "pynq", "--bitstream", str(bit),
                            "--json", str(tmp_path / "bench.json")], capture_output=True, text=True, env=env,
                           timeout=600)
    assert bench.returncode == 0, bench.stderr
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert figures["backend"] == "pynq" and figures["generated"] == 3
    assert figures["bitstream"]["design_hash"] == f"0x{simulated_design_hash():08X}"
    assert figures["host_tokens_per_s"] > 0 and figures["counters_mean"]["cycles_total"] > 0
    assert figures["counters_mean"]["bytes_read"] > 0
    assert figures["host_bytes_read_per_token"] == 0 and figures["host_register_writes_per_token"] == 3
    assert 2 <= figures["host_register_reads_per_token"] < 3
    assert set(figures["host_us_per_token_modelled"]) == {"pynq-z2", "kv260"}
    for label in ("host ", "device ", "phases ", "weight wait ", "memory ", "host I/O "):
        assert any(line.startswith(label) for line in bench.stdout.splitlines()), bench.stdout
