"""Tokens/s of the integer golden model on a random model of a released MMfreeLM shape.

370M (the default): 24 layers, hidden 1024, intermediate 2816, vocab 32000
(341 M ternary weights per token); 1.3B and 2.7B as spec/model.md §5
(``models/synthetic.py`` RELEASED_SHAPES). Builds the weight image in memory
(not timed), then times one-token steps of the integer model and of the
float model. ``--layers`` defaults to the shape's own count.

    mmfree bench-golden [--shape 370M|1.3B|2.7B] [--layers L] [--tokens 16]
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from mmfree.models.golden_float import FloatModel
from mmfree.models.golden_int import IntegerModel
from mmfree.models.synthetic import random_tensors, released_config
from mmfree.models.weight_image import WeightImage, build_image


def time_steps(model, ids) -> float:
    state = model.initial_state()
    _, state = model.step(int(ids[0]), state)            # warm-up
    t0 = time.perf_counter()
    for t in ids[1:]:
        _, state = model.step(int(t), state)
    return (len(ids) - 1) / (time.perf_counter() - t0)


def bench(layers: int | None = None, tokens: int = 16, shape: str = "370M") -> None:
    """Print the machine, the model and both golden models' tokens/s (``layers`` None: the shape's own)."""
    cfg = released_config(shape, layers)
    print(f"machine          {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"model            random {shape} shape, {cfg.L} layers, hidden {cfg.D}, intermediate {cfg.I}, vocab {cfg.V}: "
          f"{cfg.ternary_weight_count() / 1e6:.1f} M ternary weights per token", flush=True)
    t0 = time.perf_counter()
    image = WeightImage.from_bytes(build_image(cfg, random_tensors(cfg, 0)))
    ids = np.random.default_rng(0).integers(0, cfg.V, tokens + 1)
    integer = IntegerModel(image)
    print(f"image + decode   {time.perf_counter() - t0:.1f} s (not timed below)", flush=True)
    print(f"integer golden   {time_steps(integer, ids):.2f} tokens/s")
    print(f"float golden     {time_steps(FloatModel(image), ids):.2f} tokens/s")
