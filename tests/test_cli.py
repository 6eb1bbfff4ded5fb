"""The mmfree CLI's host commands give what the golden models compute (bad input: tests/test_bad_input.py).

The golden backend and ``logits --arith integer`` are the integer model, so
they must equal :class:`~mmfree.models.golden_int.IntegerModel` stepped here
bit for bit; float arithmetic is checked against the float64 golden model
with a tolerance that float32 rounding explains.
"""
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer

from mmfree.host.cli import DEFAULT_MODEL, main
from mmfree.models import numerics as nx
from mmfree.models.golden_float import FloatModel
from mmfree.models.golden_int import IntegerModel
from mmfree.models.synthetic import write_checkpoint, byte_level_tokenizer
from mmfree.models.weight_image import WeightImage

from helpers import SMALL

#: Float logits vs the float64 golden model, as a fraction of max|logit|. float32 rounding (2**-24 per
#: operation, a few hundred in series) stays near 1e-7 (measured 9.4e-8 here); the integer model's
#: ACT/GATE rounding likewise (measured 2.5e-8). One flipped int8 code costs about 1e-3.
FLOAT_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    tok = byte_level_tokenizer(["In the beginning God created the heaven and the earth. " * 50], SMALL.V)
    write_checkpoint(d, SMALL, seed=9, tokenizer_json=tok)
    out = d / "model.img"
    r = CliRunner().invoke(main, ["convert", str(d), str(out)])
    assert r.exit_code == 0, r.output
    assert "ternary weights" in r.output
    return out


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_info(image):
    r = run("info", image)
    assert r.exit_code == 0 and "checksum         ok" in r.output and "hidden 64, layers 2" in r.output


def test_info_on_corrupted_image(image, tmp_path):
    bad = bytearray(image.read_bytes())
    bad[-100] ^= 1                       # in the data, not the JSON header
    p = tmp_path / "bad.img"
    p.write_bytes(bytes(bad))
    r = run("info", p)
    assert r.exit_code == 1 and "MISMATCH" in r.output


def greedy_integer_ids(image: WeightImage, prompt: str, n: int) -> list[int]:
    """What greedy generation must produce: the integer golden model stepped here, argmax (lowest id on ties)."""
    tok = Tokenizer.from_str(image.tokenizer_json().decode())
    model = IntegerModel(image)
    state = model.initial_state()
    for t in [image.config.bos_token_id] + tok.encode(prompt, add_special_tokens=False).ids:
        logits, state = model.step(t, state)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(logits))
        if nxt == image.config.eos_token_id:
            break
        out.append(nxt)
        logits, state = model.step(nxt, state)
    return out


def test_generate_greedy_matches_the_integer_golden_model(image):
    img = WeightImage.load(image)
    expected = greedy_integer_ids(img, "In the beginning", 8)
    assert len(expected) == 8          # no early eos: eight tokens to compare
    text = Tokenizer.from_str(img.tokenizer_json().decode()).decode(expected)
    r = run("generate", "--model", image, "--prompt", "In the beginning", "--max-new-tokens", 8)
    assert r.exit_code == 0, r.output
    assert r.output == "In the beginning" + text + "\n"
    assert run("generate", "--model", image, "--prompt", "In the beginning", "--max-new-tokens", 8).output == r.output


def test_generate_sampling_depends_on_seed(image):
    outs = {run("generate", "--model", image, "--prompt", "God", "--max-new-tokens", 12, "--temperature", 1.5,
                "--seed", s).output for s in range(4)}
    assert len(outs) > 1


def test_generate_default_model_exists():
    assert DEFAULT_MODEL.is_file()
    r = run("generate", "--prompt", "And", "--max-new-tokens", 2)
    assert r.exit_code == 0, r.output


def test_logits_float_and_integer(image, tmp_path):
    ids = [1, 5, 9, 300]
    for arith in ("float", "float64", "integer"):
        out = tmp_path / f"{arith}.npy"
        r = run("logits", "--model", image, "--ids", " ".join(map(str, ids)), "--arith", arith, "--out", out)
        assert r.exit_code == 0, r.output
        assert np.load(out).shape == (len(ids), SMALL.V)
    f, f64, i = (np.load(tmp_path / f"{a}.npy") for a in ("float", "float64", "integer"))
    assert f64.dtype == np.float64 and f.dtype == np.float32 and i.dtype == np.float32
    img = WeightImage.load(image)
    model, stepped = IntegerModel(img), []
    state = model.initial_state()
    for t in ids:
        logits, state = model.step(t, state)
        stepped.append(nx.act_to_float(logits))
    assert np.array_equal(i, np.asarray(stepped, np.float32))          # bit exact: the integer model
    reference = FloatModel(img, dtype=np.float64).forward(ids)
    scale = np.abs(reference).max()
    assert np.array_equal(f64, reference)
    assert np.abs(f - reference).max() < FLOAT_TOLERANCE * scale
    assert np.abs(i - reference).max() < FLOAT_TOLERANCE * scale


def direct_perplexity(rows: np.ndarray, ids) -> float:
    """exp(mean NLL of ids[1:]) from the logits of ids[:-1]."""
    rows = np.asarray(rows, np.float64)
    z = rows - rows.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(np.exp(-log_p[np.arange(len(ids) - 1), ids[1:]].mean()))


def test_eval_figures_are_the_golden_models(image, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("In the beginning God created the heaven and the earth. " * 3)
    r = run("eval", "--model", image, "--text-file", text)
    assert r.exit_code == 0, r.output
    img = WeightImage.load(image)
    tok = Tokenizer.from_str(img.tokenizer_json().decode())
    ids = [img.config.bos_token_id] + tok.encode(text.read_text(), add_special_tokens=False).ids
    integer = IntegerModel(img).forward(ids[:-1])
    float64 = FloatModel(img, dtype=np.float64, exact_ties=True).forward(ids[:-1])
    figures = dict(re.findall(r"^(perplexity \w+|greedy agreement \S+)\s+([\d.]+)", r.stdout, re.M))
    assert int(re.search(r"^tokens\s+(\d+)", r.stdout, re.M).group(1)) == len(ids) - 1
    # printed to 4 decimals (perplexity) and 2 (agreement, %)
    assert abs(float(figures["perplexity integer"]) - direct_perplexity(integer, ids)) <= 0.5e-4 + 1e-9
    assert abs(float(figures["perplexity float64"]) - direct_perplexity(float64, ids)) <= 0.5e-4 + 1e-9
    agreement = 100 * np.mean(integer.argmax(axis=1) == float64.argmax(axis=1))
    assert abs(float(figures["greedy agreement integer/float64"]) - agreement) <= 0.005 + 1e-9


def test_missing_image_names_it(tmp_path):
    r = run("generate", "--model", tmp_path / "none.img", "--prompt", "x")
    assert r.exit_code == 1 and r.output == f"Error: {tmp_path / 'none.img'}: no such weight image\n"


def test_truncated_image_refused(image, tmp_path):
    p = tmp_path / "trunc.img"
    p.write_bytes(image.read_bytes()[:-10])
    r = run("generate", "--model", p, "--prompt", "x")
    assert r.exit_code == 1 and r.output.startswith(f"Error: {p}: truncated") and r.output.count("\n") == 1


def test_convert_without_config_writes_nothing(tmp_path):
    r = run("convert", tmp_path, tmp_path / "o.img")
    assert r.exit_code == 1 and r.output == f"Error: {tmp_path}: no config.json\n"
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_command_without_loading_them():
    r = run("--help")
    listed = re.findall(r"^  (\S+)\s", r.output.split("Commands:")[1], re.M)
    assert listed == sorted(["bench", "convert", "eval", "generate", "info", "logits", "serve", "synth",
                             "synth-units", "bitstream", "bench-accel", "bench-golden", "fidelity", "fidelity-budget"])


def _json_lines(output):
    return [json.loads(line) for line in output.splitlines()]


@pytest.mark.parametrize("backend, temperature", [("golden", 0.0), ("golden", 1.2), ("float", 0.0)])
def test_several_prompts_give_what_each_gives_alone(image, tmp_path, backend, temperature):
    """Three prompts through two sequences (the third waits for a free one), from --prompt and
    --prompt-file: each JSON object equals that prompt run alone."""
    prompts = ["In the beginning", "God created", "the earth. In"]
    pfile = tmp_path / "prompts.txt"
    pfile.write_text(f"{prompts[1]}\n\n{prompts[2]}\r\n")        # blank lines skipped, CRLF taken
    common = ["--model", image, "--max-new-tokens", 7, "--temperature", temperature, "--seed", 5,
              "--backend", backend, "--json"]
    r = run("generate", "--prompt", prompts[0], "--prompt-file", pfile, "--streams", 2, *common)
    assert r.exit_code == 0, r.output
    together = _json_lines(r.output)
    assert [o["prompt"] for o in together] == prompts
    tok = Tokenizer.from_str(WeightImage.load(image).tokenizer_json().decode())
    for prompt, got in zip(prompts, together):
        alone = run("generate", "--prompt", prompt, "--streams", 1, *common)
        assert alone.exit_code == 0, alone.output
        assert _json_lines(alone.output) == [got]
        assert got["text"] == tok.decode(got["tokens"]) and 0 < len(got["tokens"]) <= 7
    if backend == "golden" and temperature == 0:
        assert together[0]["tokens"] == greedy_integer_ids(WeightImage.load(image), prompts[0], 7)


def test_several_prompts_as_text_in_order(image):
    r = run("generate", "--model", image, "--prompt", "God", "--prompt", "In the", "--max-new-tokens", 3)
    assert r.exit_code == 0, r.output
    first, second = r.output.split("\n\n")
    assert first.startswith("God") and second.startswith("In the") and second.endswith("\n")


@pytest.mark.parametrize("args, message", [
    ([], "give a prompt"),
    (["--prompt", "God", "--prompt", " "], "prompt 2 is empty"),
    (["--prompt", "God", "--streams", 0], "--streams"),
])
def test_generate_refuses_bad_prompts(image, args, message):
    r = run("generate", "--model", image, *args)
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_prompt_file_without_text_is_refused(image, tmp_path):
    pfile = tmp_path / "blank.txt"
    pfile.write_text("\n  \n")
    r = run("generate", "--model", image, "--prompt-file", pfile)
    assert r.exit_code == 1 and "no text" in r.output


def test_bench_streams_reports_prefill_decode_and_first_token(image, tmp_path):
    out = tmp_path / "streams.json"
    r = run("bench", "--model", image, "--streams", 3, "--prompt-tokens", 5, "--tokens", 2, "--json", out)
    assert r.exit_code == 0, r.output
    figures = json.loads(out.read_text())
    assert (figures["streams"], figures["prompt_tokens"], figures["prefill_tokens_per_pass"]) == (3, 5, 3)
    host = figures["host"]
    assert host["aggregate_tokens_per_s"] == pytest.approx(3 * host["per_sequence_tokens_per_s"], rel=1e-3)
    assert host["prefill_tokens_per_s"] > 0 and host["ttft_ms"] > 0
    assert "device" not in figures and "first token after 5 prompt tokens" in r.output
