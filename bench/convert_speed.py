"""Time ``mmfree convert`` on a random sharded checkpoint of a released MMfreeLM shape.

Writes the checkpoint (bf16 shards of at most ``--max-shard-size``, as the
released ones, ``models/synthetic.py``) to a temporary directory (not
timed), then runs ``mmfree convert`` on it in a child process and prints its
wall time, the image's bytes and the child's peak resident memory
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``) beside the checkpoint's bf16 bytes.

    python bench/convert_speed.py [--shape 370M|1.3B|2.7B] [--layers L] [--max-shard-size 2GB] [--tmp-dir DIR]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmfree.models.synthetic import RELEASED_SHAPES, released_config, write_checkpoint


def bench(shape: str = "370M", layers: int | None = None, max_shard_size: str = "2GB", tmp_dir: Path | None = None) -> None:
    """Print the machine, the model, the checkpoint's size and convert's time, image bytes and peak RSS."""
    cfg = released_config(shape, layers)
    work = Path(tempfile.mkdtemp(prefix="convert-speed-", dir=tmp_dir))
    try:
        print(f"machine          {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print(f"model            random {shape} shape, {cfg.L} layers, hidden {cfg.D}, intermediate {cfg.I}, "
              f"vocab {cfg.V}: {cfg.ternary_weight_count() / 1e6:.1f} M ternary weights per token", flush=True)
        t0 = time.perf_counter()
        ckpt = write_checkpoint(work / f"mmfree-{shape}", cfg, seed=0, max_shard_size=max_shard_size)
        shards = sorted(ckpt.glob("*.safetensors"))
        bf16_bytes = sum(p.stat().st_size for p in shards)
        print(f"checkpoint       {len(shards)} shard(s), {bf16_bytes / 1e9:.2f} GB bf16, "
              f"written in {time.perf_counter() - t0:.1f} s (not timed below)", flush=True)
        image = work / "model.img"
        exe = Path(sys.executable).with_name("mmfree")
        t0 = time.perf_counter()
        done = subprocess.run([str(exe), "convert", str(ckpt), str(image)], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode:
            sys.exit(f"mmfree convert failed: {done.stderr.strip().splitlines()[-1]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024   # kB on Linux
        print(f"convert          {seconds:.1f} s")
        print(f"image            {image.stat().st_size:,} bytes")
        print(f"peak RSS         {peak / 1e9:.2f} GB ({peak / bf16_bytes:.2f} x the bf16 checkpoint)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/convert_speed.py", description=bench.__doc__)
    parser.add_argument("--shape", choices=list(RELEASED_SHAPES), default="370M")
    parser.add_argument("--layers", type=int, help="layers (default: the shape's own)")
    parser.add_argument("--max-shard-size", default="2GB", help="largest shard [2GB]")
    parser.add_argument("--tmp-dir", type=Path, help="make the temporary directory under this one (default: $TMPDIR)")
    args = parser.parse_args(argv)
    bench(args.shape, args.layers, args.max_shard_size, args.tmp_dir)


if __name__ == "__main__":
    main()
