"""Issue 5's acceptance test: the accelerator RTL generates the golden model's text, bit for bit.

``mmfree generate --backend sim`` runs the bundled model on the
``sim-default`` accelerator in Verilator (through the same driver as a PYNQ
board) and must print exactly what ``--backend golden`` prints for 32
greedy tokens; every step's logits must equal the integer golden model's.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from mmfree.host.backends import GoldenBackend, SimBackend
from mmfree.host.generate import generate
from mmfree.models.weight_image import WeightImage
from helpers import Recording

pytestmark = [pytest.mark.sim, pytest.mark.slow]

PROMPT = "And God said"
TOKENS = 32


def mmfree(*args, timeout=1800):
    exe = os.path.join(os.path.dirname(sys.executable), "mmfree")
    start = time.perf_counter()
    out = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return out, time.perf_counter() - start


def test_generate_sim_prints_the_golden_text():
    golden, _ = mmfree("generate", "--prompt", PROMPT, "--max-new-tokens", TOKENS, "--backend", "golden")
    sim, seconds = mmfree("generate", "--prompt", PROMPT, "--max-new-tokens", TOKENS, "--backend", "sim")
    assert golden.returncode == 0 and sim.returncode == 0, sim.stderr
    assert sim.stdout == golden.stdout
    assert len(sim.stdout.split()) > 10
    extra = [x for x in sim.stderr.splitlines() if x.strip() and x != "building the simulator (once)..."]
    assert not extra, sim.stderr
    print(f"generate --backend sim, {TOKENS} tokens: {seconds:.1f} s")


def test_sim_backend_logits_equal_golden_at_every_step(kjv):
    """Every step's float64 logits, not only the argmax (fewer tokens: the CLI test above has 32)."""
    image = kjv
    prompt, tokens = [image.config.bos_token_id, 1000, 7, 4095], 8
    sim = SimBackend(image)
    try:
        golden, device = Recording(GoldenBackend(image)), Recording(sim)
        want = list(generate(golden, prompt, tokens))
        got = list(generate(device, prompt, tokens))
        assert got == want
        assert len(device.logits) == len(golden.logits) == len(prompt) + tokens - 1   # the last is not fed back
        for n, (a, b) in enumerate(zip(device.logits, golden.logits)):
            assert a.dtype == np.float64 and np.array_equal(a, b), f"step {n}: logits differ"
        assert sim.driver.counters()["tokens"] == len(device.logits)
    finally:
        sim.close()


def test_sim_backend_errors_are_one_line(tmp_path):
    from mmfree.models.synthetic import TINY_RANDOM, build_tiny_random, random_tensors
    from mmfree.models.weight_image import build_image

    # The tiny model converted with 32 rows per block: the sim-default build streams 64.

    tok = WeightImage.load(build_tiny_random(tmp_path)).tokenizer_json()
    bad = tmp_path / "r32.img"
    bad.write_bytes(build_image(TINY_RANDOM, random_tensors(TINY_RANDOM, 0), rows_per_block=32, tokenizer_json=tok))
    out, _ = mmfree("generate", "--model", bad, "--prompt", "x", "--backend", "sim")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        "Error: the model does not fit this accelerator build: rows_per_block 32 (this build streams 64")


def test_bench_sim_reports_counters_and_simulator_speed(tmp_path):
    """`mmfree bench --backend sim` prints the hardware counters and the simulator's own speed (issue 5)."""
    import json

    out, _ = mmfree("bench", "--backend", "sim", "--tokens", 2, "--json", tmp_path / "b.json")
    assert out.returncode == 0, out.stderr
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["generated"] == 2 and figures["counters_mean"]["cycles_total"] > 0
    assert figures["simulated_cycles_per_s"] > 0
    assert "simulated cycles per second" in out.stdout


def test_bench_streams_on_the_sim_gives_device_figures(tmp_path):
    """`mmfree bench --streams 2 --prompt-tokens P` on the two-column build: prefill and decode
    figures from the hardware counters. A prefill pass and a decode pass both carry two tokens over
    one weight pass, so prefill runs at the aggregate decode rate; decoding two sequences at once
    is nearly twice one alone. Asking for more sequences than the build holds is one line."""
    import json

    figures = {}
    for streams in (1, 2):
        out, _ = mmfree("bench", "--backend", "sim", "--streams", streams, "--prompt-tokens", 4, "--tokens", 2,
                        "--json", tmp_path / f"s{streams}.json")
        assert out.returncode == 0, out.stderr
        figures[streams] = json.loads((tmp_path / f"s{streams}.json").read_text())
    two = figures[2]
    assert two["streams"] == 2 and two["prefill_tokens_per_pass"] == 2
    device = two["device"]
    assert device["prefill_tokens_per_s"] == pytest.approx(device["aggregate_tokens_per_s"], rel=0.1)
    assert device["aggregate_tokens_per_s"] > 1.5 * figures[1]["device"]["aggregate_tokens_per_s"]
    refused, _ = mmfree("bench", "--backend", "sim", "--streams", 3, "--tokens", 1)
    assert refused.returncode == 1 and refused.stderr.strip() == \
        "Error: --streams 3: this sim build holds 2 sequences at once"


def test_several_prompts_through_the_columns_equal_golden(tmp_path):
    """Three prompts on the two-column sim-default build (two sequences per weight pass, prompts
    prefilled two tokens per pass, the third prompt waiting for a free sequence): each prompt's
    tokens equal the golden model's, run alone."""
    import json

    pfile = tmp_path / "prompts.txt"
    pfile.write_text("And God said\nIn the beginning\nThe LORD is my shepherd\n")
    sim, _ = mmfree("generate", "--prompt-file", pfile, "--max-new-tokens", 6, "--json", "--backend", "sim")
    assert sim.returncode == 0, sim.stderr
    got = [json.loads(line) for line in sim.stdout.splitlines()]
    assert [g["prompt"] for g in got] == pfile.read_text().splitlines()
    for g in got:
        alone, _ = mmfree("generate", "--prompt", g["prompt"], "--max-new-tokens", 6, "--json", "--streams", 1)
        assert alone.returncode == 0, alone.stderr
        assert json.loads(alone.stdout) == g
