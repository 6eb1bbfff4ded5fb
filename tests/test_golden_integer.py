"""The integer golden model: hand-computed codes, and measured bounds against the float model.

Measured with numerics version 2 on a random model of the 370M shape (hidden
1024, intermediate 2816, vocab 32000; 2 layers), 12 tokens, against the
float64 golden model: one BitLinear median 9e-10 (max 2.0e-9) relative L2;
hidden state per layer median 1.2e-8 / 1.5e-8 (max 2.2e-8 / 3.6e-8); logits
max-relative error median 3.3e-9 (max 1.4e-8); argmax 12/12; the same through
the float model's batched ``forward``. (Against float32: 7.4e-8, 1.2e-7, 1.2e-7.)
No int8 code lands on the other side of a rounding boundary here, and one that
did would cost ~1e-3 at K = 1024: the bounds below (about 10x the measured
maxima) fail on a single code flip, as on any error in the arithmetic.
"""
import numpy as np
import pytest

from mmfree.models import numerics as nx
from mmfree.models.config import ModelConfig
from mmfree.models.golden_float import FloatModel, rms_norm
from mmfree.models.golden_int import IntegerModel, quantize_vector
from mmfree.models.synthetic import SHAPE_370M, random_tensors
from mmfree.models.weight_image import WeightImage, build_image


@pytest.fixture(scope="module")
def models():
    cfg = ModelConfig(num_hidden_layers=2, **SHAPE_370M)
    img = WeightImage.from_bytes(build_image(cfg, random_tensors(cfg, 1)))
    return FloatModel(img, dtype=np.float64), IntegerModel(img)


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# --------------------------------------------------------------------------
# Step 1 of a BitLinear by hand: q = sign(p) * round_half_away(127 |p| / max|p|), p = x * G
# --------------------------------------------------------------------------
ONE = 1 << nx.ACT_FRAC


@pytest.mark.parametrize("x, g, codes, peak_norm, shift", [
    # |p| = (4, 2, 1, 0) * 2**54: 127 * (1, 1/2, 1/4, 0) = 127, 63.5 (a tie: away from zero), 31.75, 0;
    # M = 2**56 is 57 bits, normalised by 26 to M' = 2**30
    ([4 * ONE, -2 * ONE, ONE, 0], [1 << 22] * 4, [127, -64, 32, 0], 1 << 30, 26),
    # a negative gain flips the sign
    ([4 * ONE, -2 * ONE, ONE, 0], [-(1 << 22)] * 4, [-127, 64, -32, 0], 1 << 30, 26),
    # tiny products are shifted left (sh < 0): 127 * (1, 3, 253) / 254 = 0.5, 1.5, 126.5, all ties
    ([254, 1, -3, 253], [1, 1, 1, 1], [127, 1, -2, 127], 254 << 23, -23),
    # one non-zero element takes the whole range
    ([0, 0, -5, 0], [7, 7, 7, 7], [0, 0, -127, 0], 35 << 25, -25),
    # the peak is in the gain, not the input
    ([ONE, ONE, ONE], [3, -6, 1], [64, -127, 21], 3 << 29, 4),
])
def test_quantize_vector_by_hand(x, g, codes, peak_norm, shift):
    qv = quantize_vector(np.array(x, np.int64), np.array(g, np.int64))
    assert qv.codes.dtype == np.int8 and qv.codes.tolist() == codes
    assert (qv.peak_norm, qv.shift) == (peak_norm, shift)


def test_quantize_vector_of_zeros():
    qv = quantize_vector(np.zeros(8, np.int64), np.full(8, 1 << 22, np.int64))
    assert not qv.codes.any() and qv.peak_norm == 0


# --------------------------------------------------------------------------
# Against the float64 model (an independent implementation of the same equations)
# --------------------------------------------------------------------------
def test_single_bitlinear_error(models):
    """One BitLinear on identical input: the integer path's own error (no upstream drift)."""
    fm, im = models
    errs = []
    for tok in [5, 1000, 31999]:
        h = fm.embedding[tok][None]
        u = rms_norm(h, fm.norm("model.layers.0.attn_norm.weight"), fm.eps)
        outs = im.bitlinear(im.embed(tok), "model.layers.0.attn.in")
        for name, y in zip("ifg", outs):
            errs.append(rel(nx.act_to_float(y), fm.bitlinear(u, f"model.layers.0.attn.{name}_proj")[0]))
    assert max(errs) < 2e-8, errs             # measured median 9e-10, max 2.0e-9


def test_per_layer_and_logit_bounds(models):
    fm, im = models
    ids = np.random.default_rng(0).integers(0, fm.cfg.V, 12)
    sf, si = fm.initial_state(), im.initial_state()
    hidden, logit, agree = [], [], []
    for tok in ids:
        tf, ti = {}, {}
        lf, sf = fm.step(tok, sf, tf)
        li, si = im.step(tok, si, ti)
        hidden.append([rel(nx.act_to_float(ti[k]), tf[k]) for k in tf])
        logit.append(np.abs(nx.act_to_float(li) - lf).max() / np.abs(lf).max())
        agree.append(li.argmax() == lf.argmax())
    hidden = np.array(hidden)
    assert hidden.max() < 3e-7, hidden.max(axis=0)     # measured max 2.2e-8 / 3.6e-8
    assert max(logit) < 1e-7, max(logit)              # measured max 1.4e-8
    assert all(agree)                                  # measured 12 / 12


def test_forward_matches_the_batched_float_model(models):
    """A sequence through the integer model's forward (one token at a time, the state carried) and
    the float model's forward (all positions at once per layer): the same logits within the bound."""
    fm, im = models
    ids = [3, 17, 4096, 17, 17, 31999]
    got, want = im.forward(ids), fm.forward(ids)
    err = np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)
    assert err.max() < 1e-7, err                        # measured max 1.4e-8 on the 12 tokens above
    assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))
    # the state is live: token 17 gives other logits at each of its positions
    assert not np.allclose(got[1], got[3]) and not np.allclose(got[3], got[4])


# --------------------------------------------------------------------------
# Columns: B sequences per weight pass, and prefill of B consecutive tokens
# --------------------------------------------------------------------------
def _histories(model, prefixes):
    """The state after each prefix, stepped one token at a time."""
    states = []
    for prefix in prefixes:
        state = model.initial_state()
        for t in prefix:
            _, state = model.step(t, state)
        states.append(state)
    return states


def test_step_batch_equals_each_sequence_alone(tiny):
    model = IntegerModel(tiny)
    prefixes = [[1, 5, 9], [], [300, 2], [7]]          # different histories, one fresh state
    states = _histories(model, prefixes)
    tokens = [11, 11, 0, 319]                          # a token shared by two columns, both ends of V
    logits, new_states = model.step_batch(tokens, states)
    assert logits.shape == (4, tiny.config.V)
    for b, (t, s) in enumerate(zip(tokens, states)):
        alone, alone_state = model.step(t, s)
        assert np.array_equal(logits[b], alone), b
        for layer in range(tiny.config.L):
            assert np.array_equal(new_states[b][layer], alone_state[layer]), (b, layer)
    assert not np.array_equal(logits[0], logits[1])    # same token, other history: the states were used


def test_step_batch_refuses_mismatched_lengths(tiny):
    model = IntegerModel(tiny)
    with pytest.raises(ValueError, match="2 tokens for 1 states"):
        model.step_batch([1, 2], [model.initial_state()])


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_prefill_equals_single_steps(tiny, chunk):
    model = IntegerModel(tiny)
    ids = [1, 17, 4, 250, 9, 9, 63]
    start = _histories(model, [[3, 8]])[0]             # a chunk continues an existing state
    state, steps = start, []
    for t in ids:
        out, state = model.step(t, state)
        steps.append(out)
    prefilled, logits_all = start, []
    for i in range(0, len(ids), chunk):
        last, prefilled_next = model.prefill(ids[i:i + chunk], prefilled)
        every, every_state = model.prefill(ids[i:i + chunk], prefilled, logits="all")
        assert np.array_equal(every[-1], last)
        assert all(np.array_equal(a, b) for a, b in zip(every_state, prefilled_next))
        logits_all.extend(every)
        prefilled = prefilled_next
    assert np.array_equal(last, steps[-1])
    assert all(np.array_equal(a, b) for a, b in zip(logits_all, steps))
    assert all(np.array_equal(a, b) for a, b in zip(prefilled, state))
    assert model.prefill(ids[:2], start, logits="none")[0] is None


def test_prefill_refuses_bad_requests(tiny):
    model = IntegerModel(tiny)
    with pytest.raises(ValueError, match="at least one token"):
        model.prefill([], model.initial_state())
    with pytest.raises(ValueError, match="logits must be"):
        model.prefill([1], model.initial_state(), logits="first")
