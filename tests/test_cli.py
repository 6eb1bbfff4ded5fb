"""The mmfree CLI: the commands work, and bad input gives one line and a non-zero exit."""
import numpy as np
import pytest
from click.testing import CliRunner

from mmfree.host.cli import DEFAULT_MODEL, main
from mmfree.models.synthetic import write_checkpoint, byte_level_tokenizer

from helpers import SMALL


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


def assert_one_line_error(r, text):
    assert r.exit_code != 0
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert lines[-1].startswith("Error:") and text in lines[-1], r.output
    assert "Traceback" not in r.output


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


def test_generate_greedy_is_deterministic_and_matches_golden(image):
    a = run("generate", "--model", image, "--prompt", "In the beginning", "--max-new-tokens", 8)
    b = run("generate", "--model", image, "--prompt", "In the beginning", "--max-new-tokens", 8)
    assert a.exit_code == 0 and a.output == b.output and a.output.startswith("In the beginning")


def test_generate_sampling_depends_on_seed(image):
    outs = {run("generate", "--model", image, "--prompt", "God", "--max-new-tokens", 12, "--temperature", 1.5,
                "--seed", s).output for s in range(4)}
    assert len(outs) > 1


def test_generate_default_model_exists():
    assert DEFAULT_MODEL.is_file()
    r = run("generate", "--prompt", "And", "--max-new-tokens", 2)
    assert r.exit_code == 0, r.output


def test_logits_float_and_integer(image, tmp_path):
    for arith in ("float", "float64", "integer"):
        out = tmp_path / f"{arith}.npy"
        r = run("logits", "--model", image, "--ids", "1 5 9 300", "--arith", arith, "--out", out)
        assert r.exit_code == 0, r.output
        assert np.load(out).shape == (4, SMALL.V)
    f, f64, i = (np.load(tmp_path / f"{a}.npy") for a in ("float", "float64", "integer"))
    assert f64.dtype == np.float64 and f.dtype == np.float32
    assert np.abs(f - i).max() < 0.2 * np.abs(f).max()
    assert np.abs(f - f64).max() < 0.2 * np.abs(f64).max()


def test_eval(image, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("In the beginning God created the heaven and the earth. " * 3)
    r = run("eval", "--model", image, "--text-file", text)
    assert r.exit_code == 0, r.output
    assert "perplexity float" in r.output and "greedy agreement" in r.output


@pytest.mark.parametrize("args,text", [
    (["logits", "--ids", "1 2 99999", "--out", "x.npy"], "token id 99999 out of range"),
    (["logits", "--ids", "1 two", "--out", "x.npy"], "must be integers"),
    (["generate", "--prompt", "  "], "empty prompt"),
])
def test_bad_input(image, args, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run(args[0], "--model", image, *args[1:]), text)


def test_missing_image(tmp_path):
    assert_one_line_error(run("generate", "--model", tmp_path / "none.img", "--prompt", "x"), "no such weight image")


def test_corrupt_image_refused(image, tmp_path):
    p = tmp_path / "trunc.img"
    p.write_bytes(image.read_bytes()[:-10])
    assert_one_line_error(run("generate", "--model", p, "--prompt", "x"), "truncated")


def test_convert_bad_checkpoint(tmp_path):
    assert_one_line_error(run("convert", tmp_path, tmp_path / "o.img"), "no config.json")
    assert not (tmp_path / "o.img").exists()
