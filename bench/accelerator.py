"""Cycles per token of the accelerator RTL and the tokens/s a board user would see, per board.

For each configuration (``contract/configs.py``: ``pynq-z2``, ``kv260``) the
accelerator's Verilator model runs twice, on the board's memory model (refresh,
rows, turnaround, port acceptance, latency spread: ``docs/memory.md``) and on
the ideal memory (a constant ``ddr_bytes_per_cycle``: the upper bound), through
the host driver exactly as ``mmfree generate --backend sim`` does:

* the bundled model (``models/kjv/kjv.img``);
* random models of each released shape (370M, 1.3B, 2.7B: hidden, intermediate
  and vocab in full; ``models/synthetic.py`` RELEASED_SHAPES) with 1 and 2
  layers, on each configuration that holds the shape. The difference is one
  layer's cost; the L-layer figure is
  ``cycles(L=1) + (L - 1) * (cycles(L=2) - cycles(L=1))``, and likewise for
  the bytes read.

Per token it records CYCLES_TOTAL, the phase counters and BYTES_READ (with the
bytes the token writes, its recurrent state and logits: ``bytes_moved``), and
checks the logits against the integer golden model bit for bit. It also
measures the board model's sustained sequential read bandwidth through the
build's own read master (``sim/ddr_calib``) and the host traffic of a greedy
token (register reads and writes, buffer bytes: the driver's counts).
Derived, per board and model:

* ``ddr_peak_gb_per_s`` (the DRAM's theoretical peak) and
  ``ddr_sustained_gb_per_s`` (what the board model delivers), and the tokens/s
  ceilings at each (bandwidth / bytes moved per token, read and written);
* ``efficiency_vs_sustained`` = (bytes moved per token / sustained bytes per
  cycle) / board-model cycles per token;
* ``host_us_per_token``: the greedy token's counts priced with the board's
  cited costs (``contract/host_costs.py``);
* ``board_tokens_per_s`` = 1 / (device time on the board model + host time);
* the ideal-memory figures (``cycles_per_token_ideal``, ``tokens_per_s_ideal``),
  labelled as the upper bound;
* simulated cycles per second (wall time of the simulator's waits);
* many tokens per weight pass (``docs/columns.md``): ``streams`` (the build's
  columns, B), the cycles of a decode pass of B sequences and of a prefill
  pass of B tokens (both checked bit for bit; for B = 1 the token above),
  ``aggregate_tokens_per_s`` (B tokens per decode pass, with its host time),
  ``prefill_tokens_per_s`` and ``ttft_ms_128`` (a 128-token prompt prefilled
  B tokens per pass, its first new token from the last pass).

Writes ``<out>/accelerator.json`` (every figure) and ``<out>/accelerator.png``
(measured vs roofline cycles per token per configuration).

    mmfree bench-accel [--configs pynq-z2,kv260] [--models bundled,370m,1.3b,2.7b] [--tokens 3] [--out bench/results]
    make bench-accel
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "models" / "kjv" / "kjv.img"
CACHE = REPO / "build" / "bench"


def synthetic_image(shape: str, layers: int, cache: Path, progress) -> Path:
    """A random weight image of the released ``shape`` (``models/synthetic.py`` RELEASED_SHAPES)
    with ``layers`` layers (built once, cached; rebuilt when the cached one was made for another
    image format or numerics version)."""
    from mmfree.models.synthetic import random_tensors, released_config
    from mmfree.models.weight_image import ImageError, WeightImage, build_image

    path = cache / f"random-{shape.lower()}-l{layers}.img"
    if path.exists():
        try:
            WeightImage.load(path)
        except ImageError:
            progress(f"{path.name} is stale (another format or numerics version): rebuilding")
            path.unlink()
    if not path.exists():
        progress(f"building {path.name} (once)")
        cfg = released_config(shape, layers)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(build_image(cfg, random_tensors(cfg, seed=layers),
                                    source={"checkpoint": f"synthetic {shape} shape, {layers} layers, seed {layers}"}))
        tmp.replace(path)
    return path


def holds(config, shape: str) -> bool:
    """Whether the build ``config`` holds the released ``shape`` (its on-chip capacity)."""
    from mmfree.models.synthetic import released_config

    c = released_config(shape)
    return (c.D <= config.max_hidden and c.L <= config.max_layers and c.I <= config.max_intermediate
            and c.V <= config.max_vocab)


def run_model(config, image, tokens: int, progress) -> dict:
    """Run ``tokens`` tokens of ``image`` on the simulated accelerator of ``config``; per-token figures."""
    from mmfree.host.driver import AcceleratorDriver, BufferLayout, Read
    from mmfree.models.golden_int import IntegerModel
    from mmfree.sim.transport import SimTransport

    rng = np.random.default_rng(0)
    ids = [image.config.bos_token_id] + [int(t) for t in rng.integers(0, image.config.V, tokens - 1)]
    golden = IntegerModel(image)
    state = golden.initial_state()
    rows = []
    with SimTransport(config, progress=progress) as transport:
        driver = AcceleratorDriver(transport)
        identity = driver.check_identity()
        t0 = time.perf_counter()
        driver.load_image(image)
        load_s = time.perf_counter() - t0
        for token in ids:
            cycles0, wall0 = transport.cycles, transport.wait_wall_s
            result = driver.step(token)
            want, state = golden.step(token, state)
            rows.append({"token": token, **result.counters,
                         "bit_exact": bool(np.array_equal(result.logits_act.astype(np.int64), want)),
                         "argmax_ok": result.argmax == int(np.argmax(want))
                         and result.argmax_value == int(want[result.argmax]),
                         "wall_s": result.wall_s,
                         "sim_cycles": transport.cycles - cycles0,
                         "sim_wall_s": transport.wait_wall_s - wall0})
            progress(f"{config.name} {image.config.L}-layer token {token}: {result.counters['cycles_total']:,} cycles")
        passes = _column_passes(driver, golden, ids, progress) if driver.columns > 1 else {}
        # what a greedy generated token asks of the host (the second: the first after the full
        # read-outs above learns nothing new, but keep the steady state)
        for token in ids[:2]:
            greedy = driver.step(token, read=Read.ARGMAX).host
        # and with the embedding table in host memory (a board whose contiguous memory cannot hold it)
        driver.load_image(image, embedding="host")
        for token in ids[:2]:
            greedy_row = driver.step(token, read=Read.ARGMAX).host
    steady = rows[1:]        # every token costs the same (no KV cache); the first is kept apart anyway
    cycles = [r["cycles_total"] for r in steady]
    return {"config": config.name, "layers": image.config.L, "hidden": image.config.D,
            "intermediate": image.config.I, "vocab": image.config.V, "tokens": rows,
            "load_s": load_s, "design_hash": f"0x{identity.design_hash:08X}",
            "cycles_per_token": float(np.median(cycles)),
            "phases": {k: float(np.median([r[k] for r in steady])) for k in steady[0] if k.startswith("cycles_")},
            "bytes_read": int(np.median([r["bytes_read"] for r in steady])),
            "bytes_written": BufferLayout.of(image).pass_write_bytes(1),
            "bit_exact": all(r["bit_exact"] and r["argmax_ok"] for r in rows) and passes.get("bit_exact", True),
            "streams": driver.columns,
            "decode_pass_cycles": passes.get("decode_cycles", float(np.median(cycles))),
            "prefill_pass_cycles": passes.get("prefill_cycles", float(np.median(cycles))),
            "greedy_pass_host": _host_counts(passes["greedy_host"]) if passes else None,
            "memory": config.memory,
            "greedy_host": _host_counts(greedy), "greedy_host_embedding_in_host": _host_counts(greedy_row),
            "buffer_bytes": _buffer_bytes(image, driver.columns),
            "sim_cycles_per_s": sum(r["sim_cycles"] for r in rows) / max(sum(r["sim_wall_s"] for r in rows), 1e-9)}


def _column_passes(driver, golden, ids, progress) -> dict:
    """A decode pass of every column (one sequence per slot, each a step further than the one
    before) and a prefill pass of as many tokens; both checked against the integer model."""
    from mmfree.host.driver import Read
    from mmfree.models import numerics as nx

    B = driver.columns
    states = [golden.initial_state() for _ in range(B)]
    for slot in range(B):
        driver.reset_state(slot=slot)
    tokens = [ids[c % len(ids)] for c in range(B)]
    result = driver.run_pass(tokens)
    want, states = golden.step_batch(tokens, states)
    exact = bool(np.array_equal(result.column_logits, nx.act_to_float(want)))
    decode_cycles = result.counters["cycles_total"]
    greedy = driver.run_pass(tokens, read=Read.ARGMAX)
    want, states = golden.step_batch(tokens, states)
    exact &= greedy.argmaxes == tuple(int(np.argmax(w)) for w in want)
    driver.reset_state(slot=0)
    result = driver.run_pass(tokens, slots=[0], prefill=True)
    want, _ = golden.prefill(tokens, golden.initial_state())
    exact &= bool(np.array_equal(result.logits_act, want))
    progress(f"{B}-column passes: decode {decode_cycles:,} cycles, prefill {result.counters['cycles_total']:,}")
    return {"decode_cycles": decode_cycles, "prefill_cycles": result.counters["cycles_total"],
            "greedy_host": greedy.host, "bit_exact": exact}


def _host_counts(counts) -> dict:
    return {k: getattr(counts, k) for k in ("register_reads", "register_writes", "buffer_bytes_read",
                                            "buffer_bytes_written", "invalidates", "flushes", "waits")}


def _buffer_bytes(image, columns: int = 1) -> dict:
    """Device memory the driver allocates for ``image`` (:class:`~mmfree.host.driver.BufferLayout`):
    STREAM, the embedding table (or one row of it per column, when the table stays in host memory) and
    the logits and the recurrent state (one slot per column), each buffer in whole pages (BUFFER_ALIGN) as
    the contiguous allocator hands them out."""
    from mmfree.host.driver import BUFFER_ALIGN, BufferLayout

    layout = BufferLayout.of(image, columns)
    return {"stream": layout.embed_offset, "table": layout.embed_bytes, "row": columns * layout.embed_stride,
            "logits": -(-layout.logits_bytes // BUFFER_ALIGN) * BUFFER_ALIGN,
            "state": -(-layout.state_bytes // BUFFER_ALIGN) * BUFFER_ALIGN}


def sustained_read(config, progress, clock_hz: float | None = None) -> dict:
    """Sequential read bandwidth of the board memory model through this build's read master, at
    ``clock_hz`` (default the build's clock): ``gb_per_s`` and the model's statistics."""
    import dataclasses

    from mmfree.sim.ddr_calib import measure_read

    config = dataclasses.replace(config, clock_hz=clock_hz or config.clock_hz)
    progress(f"{config.name}: read bandwidth of the board memory model at {config.clock_hz / 1e6:g} MHz")
    read_bytes = 4 << 20
    stats = measure_read(dict(config.ddr_params(), size_bytes=read_bytes), bus_bytes=config.bus_bytes,
                         ports=config.ports, outstanding=config.outstanding,
                         burst_bytes=config.max_burst_beats * config.bus_bytes, read_bytes=read_bytes)
    out = {k: stats[k] for k in ("bytes_per_cycle", "latency_min", "latency_mean", "latency_max",
                                 "row_misses", "refreshes")}
    out.update(clock_mhz=config.clock_hz / 1e6, gb_per_s=stats["bytes_per_cycle"] * config.clock_hz / 1e9)
    return out


def derive(config, board_run: dict, ideal_run: dict, sustained: dict, build_read: dict, name: str) -> dict:
    """Every figure of one model on one board: board-model and ideal cycles, the DDR ceilings,
    host time and board tokens/s (see the module docstring). ``sustained``: the memory model at its
    calibration clock (the DDR's sustained rate); ``build_read``: at the build's clock (what its
    ports carry)."""
    from mmfree.contract.host_costs import host_us_per_token
    from mmfree.contract.memory import get_board_memory

    peak = get_board_memory(config.memory_board).peak_bytes_per_s
    sustained_bpc = sustained["gb_per_s"] * 1e9 / config.clock_hz      # DDR sustained, per build cycle
    cycles = board_run["cycles_per_token"]
    nbytes = board_run["bytes_read"] + board_run["bytes_written"]         # moved: read and written
    # Where the embedding table goes on a stock image: beside the stream if the contiguous memory
    # holds both, else in host memory (one row copied per token: docs/capacity.md).
    contiguous = get_board_memory(config.memory_board).contiguous_bytes.value
    b = board_run["buffer_bytes"]
    with_table = b["stream"] + b["table"] + b["logits"] + b["state"]
    with_row = b["stream"] + b["row"] + b["logits"] + b["state"]
    place = "device" if with_table <= contiguous else "host" if with_row <= contiguous else "does not fit"
    greedy = board_run["greedy_host" if place == "device" else "greedy_host_embedding_in_host"]
    host_us = host_us_per_token(config.memory_board, greedy["register_reads"], greedy["register_writes"],
                                greedy["buffer_bytes_read"], invalidates=greedy["invalidates"],
                                waits=greedy["waits"], bytes_written=greedy["buffer_bytes_written"],
                                flushes=greedy["flushes"])
    device_s = cycles / config.clock_hz
    ideal_roofline = config.roofline_cycles(ideal_run["bytes_read"] + ideal_run["bytes_written"])
    columns = _columns_figures(config, board_run, host_us, greedy)
    return {"config": config.name, "model": name, "clock_mhz": config.clock_hz / 1e6,
            "bytes_read": board_run["bytes_read"], "bytes_written": board_run["bytes_written"],
            "bytes_moved": nbytes, "cycles_per_token": cycles, "phases": board_run["phases"],
            "device_buffer_bytes": {"with_table": with_table, "table_in_host_memory": with_row},
            "contiguous_bytes": contiguous, "embedding_place": place,
            "ddr_peak_gb_per_s": peak / 1e9,
            "ddr_sustained_gb_per_s": sustained["gb_per_s"],
            "build_read_gb_per_s": build_read["gb_per_s"],
            "efficiency_vs_build_read": nbytes / build_read["bytes_per_cycle"] / cycles,
            "sustained_roofline_cycles": nbytes / sustained_bpc,
            "efficiency_vs_sustained": nbytes / sustained_bpc / cycles,
            "device_us_per_token": 1e6 * device_s,
            "host_us_per_token": host_us,
            "host_register_accesses_per_token": greedy["register_reads"] + greedy["register_writes"],
            "host_bytes_read_per_token": greedy["buffer_bytes_read"],
            "host_bytes_written_per_token": greedy["buffer_bytes_written"],
            "board_tokens_per_s": 1 / (device_s + host_us * 1e-6),
            "device_tokens_per_s": 1 / device_s,
            "ceiling_tokens_per_s_at_peak": peak / nbytes,
            "ceiling_tokens_per_s_at_sustained": sustained_bpc * config.clock_hz / nbytes,
            "cycles_per_token_ideal": ideal_run["cycles_per_token"],
            "ideal_ddr_gb_per_s": config.ddr_bytes_per_second / 1e9,
            "roofline_cycles_ideal": ideal_roofline,
            "efficiency_ideal": ideal_roofline / ideal_run["cycles_per_token"],
            "tokens_per_s_ideal": config.clock_hz / ideal_run["cycles_per_token"],
            "sustained_read": sustained, "build_read": build_read, **columns}


def _columns_figures(config, board_run: dict, host_us: float, greedy: dict) -> dict:
    """Tokens per weight pass: B = ``streams`` sequences per decode pass, B prompt tokens per prefill
    pass; each pass with the host time of a greedy pass (for B = 1, the greedy token's)."""
    import math

    from mmfree.contract.host_costs import host_us_per_token

    B = board_run["streams"]
    pass_host = board_run.get("greedy_pass_host") or greedy
    pass_host_us = host_us if B == 1 else host_us_per_token(
        config.memory_board, pass_host["register_reads"], pass_host["register_writes"],
        pass_host["buffer_bytes_read"], invalidates=pass_host["invalidates"], waits=pass_host["waits"],
        bytes_written=pass_host["buffer_bytes_written"], flushes=pass_host["flushes"])
    decode_s = board_run["decode_pass_cycles"] / config.clock_hz + pass_host_us * 1e-6
    prefill_s = board_run["prefill_pass_cycles"] / config.clock_hz + pass_host_us * 1e-6
    return {"streams": B, "decode_pass_cycles": board_run["decode_pass_cycles"],
            "prefill_pass_cycles": board_run["prefill_pass_cycles"],
            "aggregate_tokens_per_s": B / decode_s, "per_sequence_tokens_per_s": 1 / decode_s,
            "prefill_tokens_per_s": B / prefill_s, "ttft_ms_128": 1e3 * math.ceil(128 / B) * prefill_s}


def project_full(one: dict, two: dict, layers: int) -> dict:
    """The L-layer figures from measurements at 1 and 2 layers (one layer = their difference)."""
    def scale(a, b):
        return a + (layers - 1) * (b - a)

    return {"cycles_per_token": scale(one["cycles_per_token"], two["cycles_per_token"]),
            "per_layer_cycles": two["cycles_per_token"] - one["cycles_per_token"],
            "phases": {k: scale(one["phases"][k], two["phases"][k]) for k in one["phases"]},
            "bytes_read": int(scale(one["bytes_read"], two["bytes_read"])),
            "bytes_written": int(scale(one["bytes_written"], two["bytes_written"])), "greedy_host": two["greedy_host"],
            "streams": two["streams"], "greedy_pass_host": two["greedy_pass_host"],
            "decode_pass_cycles": scale(one["decode_pass_cycles"], two["decode_pass_cycles"]),
            "prefill_pass_cycles": scale(one["prefill_pass_cycles"], two["prefill_pass_cycles"]),
            "greedy_host_embedding_in_host": two["greedy_host_embedding_in_host"],
            "buffer_bytes": {k: int(scale(one["buffer_bytes"][k], two["buffer_bytes"][k])) for k in one["buffer_bytes"]}}


def plot(figures: list[dict], path: Path) -> None:
    """One panel per (model, configuration): the measured cycles per token, stacked by phase,
    beside the DDR roofline; linear scales from zero, so bar heights compare."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(f["model"] for f in figures))
    configs = list(dict.fromkeys(f["config"] for f in figures))
    phases = ["cycles_embed", "cycles_prep", "cycles_matvec", "cycles_elementwise", "cycles_head"]
    colors = ["#9e9e9e", "#e6a23c", "#3b7dd8", "#67c23a", "#a06cd5"]
    fig, axes = plt.subplots(len(models), len(configs), figsize=(4.2 * len(configs), 3.6 * len(models)),
                             squeeze=False)
    for r, model in enumerate(models):
        for c, config in enumerate(configs):
            ax = axes[r][c]
            (f,) = [f for f in figures if f["model"] == model and f["config"] == config] or [None]
            if f is None:
                ax.axis("off")
                continue
            bottom = 0.0
            for name, color in zip(phases, colors):
                value = f["phases"].get(name, 0.0)
                ax.bar(0, value, 0.6, bottom=bottom, color=color,
                       label=name.removeprefix("cycles_") if r == c == 0 else None)
                bottom += value
            ax.bar(1, f["sustained_roofline_cycles"], 0.6, color="#f56c6c",
                   label="sustained-bandwidth roofline" if r == c == 0 else None)
            ax.bar(2, f["cycles_per_token_ideal"], 0.6, color="#c0c4cc", label="ideal memory" if r == c == 0 else None)
            ax.text(0, f["cycles_per_token"], f"{f['cycles_per_token']:,.0f}\n"
                    f"{100 * f['efficiency_vs_sustained']:.1f} % of sustained\n{f['board_tokens_per_s']:,.1f} tok/s "
                    "(host incl.)", ha="center", va="bottom", fontsize=7)
            ax.text(1, f["sustained_roofline_cycles"], f"{f['sustained_roofline_cycles']:,.0f}", ha="center",
                    va="bottom", fontsize=7)
            ax.text(2, f["cycles_per_token_ideal"], f"{f['cycles_per_token_ideal']:,.0f}", ha="center",
                    va="bottom", fontsize=7)
            ax.set_xticks([0, 1, 2], ["board model (RTL)", "roofline", "ideal (RTL)"], fontsize=8)
            ax.set_ylim(0, 1.4 * max(f["cycles_per_token"], f["sustained_roofline_cycles"]))
            ax.set_title(f"{config} ({f['ddr_sustained_gb_per_s']:.2f} GB/s sustained of {f['ddr_peak_gb_per_s']:.1f}, "
                         f"{f['clock_mhz']:.0f} MHz)\n{model}", fontsize=8)
            ax.set_ylabel("cycles per token")
    fig.legend(loc="lower center", ncol=6, fontsize=8)
    fig.suptitle("mmfree accelerator RTL on each board's memory model: cycles per token vs the roofline")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(json_path: Path) -> None:
    """Redraw the PNG from a JSON this bench wrote."""
    plot(json.loads(json_path.read_text())["figures"], json_path.with_suffix(".png"))


#: What ``models`` may name: the bundled model, and the released shapes (projected from 1 and 2
#: layers), each run on the configurations that hold it.
SHAPES = {"370m": "370M", "1.3b": "1.3B", "2.7b": "2.7B"}
MODELS = ("bundled", *SHAPES)
#: Where the figures go by default.
RESULTS = REPO / "bench" / "results"


def bench(config_names: list[str], models: list[str], tokens: int, out: Path) -> bool:
    """Run every model on every configuration, write ``out/accelerator.{json,png}``, print the table.

    True when every run was bit exact. Raises :class:`click.ClickException` (one line) for a damaged
    image or a driver or transport failure.
    """
    import click
    from tqdm import tqdm

    from mmfree.contract.configs import get_config
    from mmfree.host.options import write_output
    from mmfree.models.weight_image import ImageError, WeightImage

    from mmfree.models.synthetic import released_config

    configs = [get_config(c) for c in config_names]
    shapes = [SHAPES[m] for m in models if m in SHAPES]
    plan = {c.name: (["bundled"] if "bundled" in models else []) +
            [f"{s.lower()}-l{n}" for s in shapes if holds(c, s) for n in (1, 2)] for c in configs}
    bar = tqdm(total=2 * sum(len(v) for v in plan.values()), unit="run", file=sys.stderr, desc="accelerator bench")

    def progress(line):
        if line.startswith("building"):          # slow, once: worth a line of its own
            bar.write(line, file=sys.stderr)
        bar.set_postfix_str(line[-60:])

    for c in configs:
        for s in shapes:
            if not holds(c, s):
                bar.write(f"{c.name} does not hold the {s} shape (D {c.max_hidden}, L {c.max_layers}, "
                          f"I {c.max_intermediate} at most): not run", file=sys.stderr)
    images = {}
    try:
        if "bundled" in models:
            images["bundled"] = WeightImage.load(BUNDLED)
        for s in shapes:
            if any(holds(c, s) for c in configs):
                for layers in (1, 2):
                    images[f"{s.lower()}-l{layers}"] = WeightImage.load(synthetic_image(s, layers, CACHE, progress))
    except ImageError as e:
        bar.close()
        raise click.ClickException(str(e)) from None

    runs, figures = [], []
    from mmfree.host.driver import DriverError
    from mmfree.contract.transport import TransportError

    try:
        for config in configs:
            from mmfree.contract.memory import get_board_memory

            calibration_mhz = get_board_memory(config.memory_board).calibration_clock_mhz.value
            sustained = sustained_read(config, progress, calibration_mhz * 1e6)
            build_read = sustained_read(config, progress)
            measured = {"board": {}, "ideal": {}}
            for memory in measured:
                for key in plan[config.name]:
                    measured[memory][key] = run_model(config.with_memory(memory), images[key], tokens, progress)
                    runs.append({"model": key, **measured[memory][key]})
                    bar.update()
            board, ideal = measured["board"], measured["ideal"]
            if "bundled" in board:
                figures.append(derive(config, board["bundled"], ideal["bundled"], sustained, build_read,
                                      "bundled KJV model (6 layers, D 256)"))
            for s in shapes:
                one, two = f"{s.lower()}-l1", f"{s.lower()}-l2"
                if one not in board:
                    continue
                layers = released_config(s).L
                full = project_full(board[one], board[two], layers)
                fig = derive(config, full, project_full(ideal[one], ideal[two], layers), sustained, build_read,
                             f"{s} shape, {layers} layers (projected from 1 and 2)")
                fig["per_layer_cycles"] = full["per_layer_cycles"]
                figures.append(fig)
    except (DriverError, TransportError) as e:
        bar.close()
        raise click.ClickException(str(e)) from None
    bar.close()

    out.mkdir(parents=True, exist_ok=True)
    report = {"bench": "accelerator", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "configs": {c.name: c.to_dict() for c in configs}, "figures": figures, "runs": runs}
    write_output(out / "accelerator.json", json.dumps(report, indent=1) + "\n")
    plot(figures, out / "accelerator.png")

    print(f"{'config':<8} {'model':<28} {'cycles (board)':>14} {'cycles (ideal)':>14} {'peak':>5} {'sust.':>6} "
          f"{'eff.':>6} {'host us':>8} {'table':>6} {'board tok/s':>11} {'ceiling':>8} {'ideal tok/s':>11}")
    for f in figures:
        print(f"{f['config']:<8} {f['model'][:28]:<28} {f['cycles_per_token']:>14,.0f} {f['cycles_per_token_ideal']:>14,.0f} "
              f"{f['ddr_peak_gb_per_s']:>5.1f} {f['ddr_sustained_gb_per_s']:>6.2f} "
              f"{100 * f['efficiency_vs_sustained']:>5.1f}% {f['host_us_per_token']:>8.0f} {f['embedding_place'][:6]:>6} "
              f"{f['board_tokens_per_s']:>11.2f} {f['ceiling_tokens_per_s_at_sustained']:>8.2f} "
              f"{f['tokens_per_s_ideal']:>11.2f}")
    print("GB/s: the DRAM's theoretical peak and what the board memory model sustains; eff.: of the sustained "
          "roofline; table: where the embedding table fits beside the stream in the board's contiguous memory "
          "(device, or host: one row copied per token); ceiling: tokens/s at the sustained bandwidth; ideal: the RTL "
          "on a constant-rate memory (upper bound)")
    for r in runs:
        print(f"{r['config']:<8} {r['memory']:<5} {r['model']:<10} {r['layers']:>2} layers: "
              f"{r['cycles_per_token']:>11,.0f} cycles, {r['sim_cycles_per_s']:,.0f} simulated cycles/s, "
              f"bit exact: {r['bit_exact']}")
    print(f"wrote {out / 'accelerator.json'} and {out / 'accelerator.png'}")
    return all(r["bit_exact"] for r in runs)
