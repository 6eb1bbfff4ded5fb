"""The weight image: the one binary file per model that the accelerator streams.

Layout (all little-endian)::

    fixed header (64 B)   magic "MMFREEIM", format version, numerics version,
                          JSON length, data offset, total size
    JSON header           config, regions, record table (human readable)
    ---- data (offset = data_offset, 4 KiB aligned) ----
    STREAM region         read front to back once per token by the accelerator
    EMBEDDING region      bf16 rows, one fetched per token (row stride 64 B aligned)
    HOST region           float32 originals for the float golden model, tokenizer.json
    trailer (32 B)        SHA-256 of every byte before it

The STREAM region is a sequence of records in exactly the order the
accelerator consumes them; every record starts 64-byte aligned:

* ``BITLINEAR`` record (one input vector x feeding 1..3 ternary matrices):
  a 128-byte header of 32 int32 words
  ``[RECORD_MAGIC | kind, K, n, frac_a, norm source, eps mantissa, eps shift,
  x_frac, (N, frac_g, Cm, ec) x 3, 12 reserved]``,
  then the norm gain A (int32[K]), then each consumer's folded gain
  G (int32[K]), then each consumer's packed matrix. Each part is padded to
  64 bytes. A gain word holds a 24-bit signed mantissa
  (``numerics.GAIN_BITS``), sign-extended.
* ``LOWER_BOUND`` record: the header (K = D, n = 0), then GATE uint32[D]
  (Q0.32, < 1).

Format version 2 (numerics version 2) widened the gain and gate words from
16 to 32 bits; the record header is unchanged. Format version 3 moved each
layer's lower-bound record before its attention input: the accelerator holds
a layer's gates before the g rows they complete arrive.

A packed matrix (N x K ternary codes) is stored in blocks of
``rows_per_block`` (R) rows; within a block, for each group of five
consecutive inputs k = 5g..5g+4, R bytes (one per row, row r at byte r), each
byte :func:`~mmfree.models.numerics.pack_trits` of that row's five codes. N
is padded to a multiple of R and K to a multiple of 5 with zero codes. A bus
of B bytes per beat (B dividing R) therefore delivers B rows x 5 inputs per
beat.

Per layer the records are: lower bound, attention input (i, f, g), o,
gate_proj (2I rows), down_proj; then the head (lm_head). Only numpy and the
numerics module are imported: the board-side driver reads images with it.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np

from . import numerics as nx
from .config import ModelConfig

MAGIC = b"MMFREEIM"
FORMAT_VERSION = 3
FIXED_HEADER = struct.Struct("<8sIIIIQQ24x")  # 64 bytes
CHECKSUM_BYTES = 32
STREAM_ALIGN = 64
REGION_ALIGN = 4096
DEFAULT_ROWS_PER_BLOCK = 64
#: rows_per_block is a positive multiple of ROWS_PER_BLOCK_STEP (the narrowest accelerator
#: beat, 8 bytes, takes whole rows) and at most MAX_ROWS_PER_BLOCK.
ROWS_PER_BLOCK_STEP = 8
MAX_ROWS_PER_BLOCK = 4096
RECORD_HEADER_WORDS = 32
RECORD_HEADER_BYTES = 4 * RECORD_HEADER_WORDS
#: Record header word indices (int32 words): word 0 holds ``RECORD_MAGIC | kind``, then the scalars.
(KIND_WORD, K_WORD, N_CONSUMERS_WORD, FRAC_A_WORD, NORM_SOURCE_WORD, EPS_MANT_WORD, EPS_SHIFT_WORD,
 X_FRAC_WORD) = range(8)
CONSUMER_WORD = 8            # first word of the (N, frac_g, Cm, ec) groups
#: Words per consumer group (consumer c's group starts at ``CONSUMER_WORD + CONSUMER_WORDS * c``)
#: and each field's offset within it.
CONSUMER_WORDS = 4
ROWS_OFFSET, FRAC_G_OFFSET, CM_OFFSET, EC_OFFSET = range(CONSUMER_WORDS)
#: Word 0 of a record header: the kind in its low RECORD_KIND_BITS, RECORD_MAGIC ("MF") above.
RECORD_KIND_BITS = 16
RECORD_MAGIC = 0x4D46 << RECORD_KIND_BITS
MAX_CONSUMERS = 3
#: Stream words of gain mantissas (24-bit values, sign-extended) and of lower-bound gates.
GAIN_WORD = "<i4"
GATE_WORD = "<u4"


class RecordKind(enum.IntEnum):
    """Kinds of STREAM records (low half-word of header word 0)."""

    BITLINEAR = 1
    LOWER_BOUND = 2


class NormSource(enum.IntEnum):
    """Which vector's RMSNorm precedes a BitLinear record (header word 4).

    The pre-norm's 1/rms cancels from the codes; only its epsilon survives,
    as eps * mean(n**2) of the vector n it normalised (docs/numerics.md).
    """

    NONE = 0       # no pre-norm: the BitLinear's own RMSNorm with eps (down_proj)
    INPUT = 1      # the pre-norm ran over the record's input x (attn/mlp input, head)
    GATE = 2       # the pre-norm ran over the MLGRU's g (g_norm before o_proj)


class ImageError(ValueError):
    """A weight image that cannot be used; the message is one line naming the problem."""


def align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def packed_matrix_shape(n: int, k: int, rows_per_block: int) -> tuple[int, int, int]:
    """(blocks, groups of five inputs, rows per block) of a packed N x K matrix."""
    return math.ceil(n / rows_per_block), math.ceil(k / nx.TRITS_PER_BYTE), rows_per_block


def pack_matrix(codes: np.ndarray, rows_per_block: int) -> np.ndarray:
    """Ternary N x K codes -> the image's byte order (flat uint8)."""
    n, k = codes.shape
    blocks, groups, r = packed_matrix_shape(n, k, rows_per_block)
    padded = np.zeros((blocks * r, groups * nx.TRITS_PER_BYTE), dtype=np.int8)
    padded[:n, :k] = codes
    packed = nx.pack_trits(padded)                       # (blocks*R, groups)
    return packed.reshape(blocks, r, groups).transpose(0, 2, 1).reshape(-1)


def unpack_matrix(data: np.ndarray, n: int, k: int, rows_per_block: int) -> np.ndarray:
    """Inverse of :func:`pack_matrix`: int8 N x K codes."""
    blocks, groups, r = packed_matrix_shape(n, k, rows_per_block)
    packed = np.asarray(data, np.uint8)[: blocks * groups * r].reshape(blocks, groups, r)
    rows = packed.transpose(0, 2, 1).reshape(blocks * r, groups)
    return nx.unpack_trits(rows)[:n, :k]


# --------------------------------------------------------------------------
# What a model holds, in stream order
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ConsumerSpec:
    """One ternary matrix fed by a BitLinear record's input vector."""

    name: str          # HF tensor prefix, e.g. "model.layers.0.attn.i_proj"
    rows: int          # N


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """One STREAM record: its kind, name, input length and consumers."""

    kind: RecordKind
    name: str
    k: int
    norm: str | None                 # HF name of the pre-norm gain A (None: unit gain)
    consumers: tuple[ConsumerSpec, ...] = ()
    norm_source: NormSource = NormSource.NONE
    x_frac: int = nx.ACT_FRAC        # fractional bits of the input vector x


def stream_plan(cfg: ModelConfig) -> list[RecordSpec]:
    """The records of a model in the order the accelerator consumes them."""
    plan = []
    d, i = cfg.D, cfg.I
    for layer in range(cfg.L):
        p = f"model.layers.{layer}"
        # The gates come first: the MLGRU then runs as attn.in's g rows arrive.
        plan.append(RecordSpec(RecordKind.LOWER_BOUND, f"{p}.attn.lower_bound", d, None))
        plan.append(RecordSpec(RecordKind.BITLINEAR, f"{p}.attn.in", d, f"{p}.attn_norm.weight",
                               tuple(ConsumerSpec(f"{p}.attn.{x}_proj", d) for x in "ifg"),
                               NormSource.INPUT))
        plan.append(RecordSpec(RecordKind.BITLINEAR, f"{p}.attn.out", d, f"{p}.attn.g_norm.weight",
                               (ConsumerSpec(f"{p}.attn.o_proj", d),), NormSource.GATE))
        plan.append(RecordSpec(RecordKind.BITLINEAR, f"{p}.mlp.in", d, f"{p}.mlp_norm.weight",
                               (ConsumerSpec(f"{p}.mlp.gate_proj", 2 * i),), NormSource.INPUT))
        plan.append(RecordSpec(RecordKind.BITLINEAR, f"{p}.mlp.out", i, None,
                               (ConsumerSpec(f"{p}.mlp.down_proj", d),), NormSource.NONE))
    plan.append(RecordSpec(RecordKind.BITLINEAR, "head", d, "model.norm.weight",
                           (ConsumerSpec("lm_head", cfg.V),), NormSource.INPUT))
    return plan


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor the model needs, with its shape (spec/model.md §5)."""
    d, i, v = cfg.D, cfg.I, cfg.V
    shapes = {"model.embeddings.weight": (v, d), "model.lower_bounds": (cfg.L, d),
              "model.norm.weight": (d,), "lm_head.weight": (v, d), "lm_head.norm.weight": (d,)}
    for layer in range(cfg.L):
        p = f"model.layers.{layer}"
        shapes[f"{p}.attn_norm.weight"] = (d,)
        shapes[f"{p}.mlp_norm.weight"] = (d,)
        shapes[f"{p}.attn.g_norm.weight"] = (d,)
        for x in "ifgo":
            shapes[f"{p}.attn.{x}_proj.weight"] = (d, d)
            shapes[f"{p}.attn.{x}_proj.norm.weight"] = (d,)
        shapes[f"{p}.mlp.gate_proj.weight"] = (2 * i, d)
        shapes[f"{p}.mlp.gate_proj.norm.weight"] = (d,)
        shapes[f"{p}.mlp.down_proj.weight"] = (d, i)
        shapes[f"{p}.mlp.down_proj.norm.weight"] = (i,)
    return shapes


def lower_bounds(raw: np.ndarray) -> np.ndarray:
    """LB = cumsum_l(softmax_l(P)) - softmax_l(P)[0], float32 (LB[0] = 0)."""
    p = np.asarray(raw, dtype=np.float32)
    e = np.exp(p - p.max(axis=0, keepdims=True))
    sm = (e / e.sum(axis=0, keepdims=True)).astype(np.float32)
    return (np.cumsum(sm, axis=0, dtype=np.float32) - sm[0]).astype(np.float32)


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------
def rows_per_block_problem(rows_per_block) -> str | None:
    """Why ``rows_per_block`` cannot be an image's (None when it can)."""
    if is_size(rows_per_block) and 0 < rows_per_block <= MAX_ROWS_PER_BLOCK \
            and rows_per_block % ROWS_PER_BLOCK_STEP == 0:
        return None
    return (f"rows_per_block {rows_per_block!r} is not a positive multiple of {ROWS_PER_BLOCK_STEP}, "
            f"at most {MAX_ROWS_PER_BLOCK}")


def is_size(n) -> bool:
    """A non-negative int (not a bool): a size, offset or dimension read from a JSON header."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _pad(b: bytes, a: int = STREAM_ALIGN) -> bytes:
    return b + bytes(align(len(b), a) - len(b))


def build_image(cfg: ModelConfig, tensors: dict[str, np.ndarray], *,
                rows_per_block: int = DEFAULT_ROWS_PER_BLOCK,
                tokenizer_json: bytes | None = None,
                embedding_bf16: np.ndarray | None = None,
                source: dict | None = None,
                progress=None) -> bytes:
    """Build the image bytes from float32 checkpoint tensors (HF names).

    ``tensors`` holds latent weights (widened bf16) and gains. Weights are
    ternarized here with the reference's run-time rule
    (:func:`~mmfree.models.numerics.ternarize`), from the latent values.
    ``embedding_bf16`` gives the embedding's raw bf16 bits (stored as they
    are); without it the float32 embedding is rounded to bf16.
    ``progress`` is an optional callable(str) called once per record.
    """
    problem = rows_per_block_problem(rows_per_block)
    if problem:
        raise ValueError(problem)
    shapes = expected_tensors(cfg)
    for name, shape in shapes.items():
        if name not in tensors:
            raise ImageError(f"missing tensor {name}")
        if tuple(tensors[name].shape) != shape:
            raise ImageError(f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape}")
        if not np.all(np.isfinite(tensors[name])):
            raise ImageError(f"tensor {name} holds inf or NaN")

    host: dict[str, np.ndarray] = {}
    stream = bytearray()
    records = []
    lb = lower_bounds(tensors["model.lower_bounds"])
    host["model.lower_bounds"] = np.asarray(tensors["model.lower_bounds"], np.float32)

    for spec in stream_plan(cfg):
        if progress:
            progress(spec.name)
        start = len(stream)
        header = np.zeros(RECORD_HEADER_WORDS, dtype=np.int32)
        header[KIND_WORD] = RECORD_MAGIC | int(spec.kind)
        header[K_WORD] = spec.k
        if spec.kind == RecordKind.LOWER_BOUND:
            layer = int(spec.name.split(".")[2])
            gates = nx.float_to_gate(lb[layer]).astype(GATE_WORD)
            stream += header.tobytes() + _pad(gates.tobytes())
            records.append({"kind": "LOWER_BOUND", "name": spec.name, "offset": start,
                            "size": len(stream) - start, "k": spec.k, "layer": layer})
            continue
        if spec.norm is None:
            a_float = np.ones(spec.k, np.float32)
            a_mant, frac_a = np.full(spec.k, nx.UNIT_GAIN_MANT, np.int32), nx.UNIT_GAIN_FRAC
        else:
            a_float = np.asarray(tensors[spec.norm], np.float32)
            host[spec.norm] = a_float
            a_mant, frac_a = nx.gain_to_fixed(a_float)
        eps_mant, eps_shift = nx.eps_to_fixed(cfg.rms_norm_eps)
        header[[N_CONSUMERS_WORD, FRAC_A_WORD, NORM_SOURCE_WORD, EPS_MANT_WORD, EPS_SHIFT_WORD, X_FRAC_WORD]] = (
            len(spec.consumers), frac_a, int(spec.norm_source), eps_mant, eps_shift, spec.x_frac)
        gain_parts, matrix_parts, cons_meta = [], [], []
        for c_index, cons in enumerate(spec.consumers):
            gamma = np.asarray(tensors[f"{cons.name}.norm.weight"], np.float32)
            host[f"{cons.name}.norm.weight"] = gamma
            # The pre-norm's gain folds into the BitLinear's own gain: the
            # pre-norm's 1/rms cancels from the int8 codes (docs/numerics.md).
            g_mant, frac_g = nx.gain_to_fixed(a_float.astype(np.float64) * gamma.astype(np.float64))
            codes, m = nx.ternarize(tensors[f"{cons.name}.weight"])
            host[f"{cons.name}.weight_scale"] = np.array([m], np.float32)
            m64 = nx.weight_scale_float64(tensors[f"{cons.name}.weight"])
            cm, ec = nx.weight_scale_to_fixed(m64, spec.k)
            w = CONSUMER_WORD + CONSUMER_WORDS * c_index
            header[[w + ROWS_OFFSET, w + FRAC_G_OFFSET, w + CM_OFFSET, w + EC_OFFSET]] = (cons.rows, frac_g, cm, ec)
            gain_parts.append(_pad(g_mant.astype(GAIN_WORD).tobytes()))
            matrix_parts.append(_pad(pack_matrix(codes, rows_per_block).tobytes()))
            # m (float32) is the reference's and the float32 golden model's scale; m_float64 the
            # float64 golden model's and, through Cm, the integer model's.
            cons_meta.append({"name": cons.name, "rows": cons.rows, "frac_g": frac_g, "cm": cm, "ec": ec,
                              "m": float(m),
                              "m_float64": m64})
        offset = start + RECORD_HEADER_BYTES + len(_pad(a_mant.astype(GAIN_WORD).tobytes())) + sum(map(len, gain_parts))
        for meta, part in zip(cons_meta, matrix_parts):
            meta["matrix_offset"], meta["matrix_size"] = offset, len(part)
            offset += len(part)
        stream += header.tobytes() + _pad(a_mant.astype(GAIN_WORD).tobytes())
        for part in gain_parts + matrix_parts:
            stream += part
        records.append({"kind": "BITLINEAR", "name": spec.name, "offset": start, "size": len(stream) - start,
                        "k": spec.k, "norm": spec.norm, "frac_a": frac_a, "norm_source": spec.norm_source.name,
                        "x_frac": spec.x_frac, "eps_mant": eps_mant, "eps_shift": eps_shift,
                        "consumers": cons_meta})

    # Embedding rows, bf16, 64-byte aligned rows.
    if embedding_bf16 is None:
        embedding_bf16 = nx.float32_to_bf16(tensors["model.embeddings.weight"])
    row_stride = align(cfg.D * 2, STREAM_ALIGN)
    emb = np.zeros((cfg.V, row_stride // 2), dtype="<u2")
    emb[:, : cfg.D] = embedding_bf16
    embedding = emb.tobytes()

    host_blob = bytearray()
    host_table = {}
    for name, arr in host.items():
        arr = np.ascontiguousarray(arr, dtype="<f4")
        host_table[name] = {"offset": len(host_blob), "shape": list(arr.shape), "dtype": "float32"}
        host_blob += _pad(arr.tobytes())
    tok = None
    if tokenizer_json is not None:
        tok = {"offset": len(host_blob), "size": len(tokenizer_json)}
        host_blob += _pad(tokenizer_json)

    regions = {}
    cursor = 0
    for name, blob in (("stream", stream), ("embedding", embedding), ("host", host_blob)):
        regions[name] = {"offset": cursor, "size": len(blob)}
        cursor = align(cursor + len(blob), REGION_ALIGN)
    regions["embedding"]["row_stride"] = row_stride
    meta = {
        "format_version": FORMAT_VERSION,
        "numerics_version": nx.NUMERICS_VERSION,
        "config": cfg.to_dict(),
        "rows_per_block": rows_per_block,
        "regions": regions,
        "records": records,
        "host_tensors": host_table,
        "tokenizer": tok,
        "source": source or {},
    }
    meta_bytes = json.dumps(meta, indent=1).encode()
    data_offset = align(FIXED_HEADER.size + len(meta_bytes), REGION_ALIGN)
    data = bytearray(cursor)
    for name, blob in (("stream", stream), ("embedding", embedding), ("host", host_blob)):
        o = regions[name]["offset"]
        data[o: o + len(blob)] = blob
    total = data_offset + len(data) + CHECKSUM_BYTES
    head = FIXED_HEADER.pack(MAGIC, FORMAT_VERSION, nx.NUMERICS_VERSION, len(meta_bytes), 0, data_offset, total)
    body = head + meta_bytes + bytes(data_offset - FIXED_HEADER.size - len(meta_bytes)) + bytes(data)
    return body + hashlib.sha256(body).digest()


# --------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------
def _fields(d, where: str, **kinds) -> list:
    """``d[key]`` for each keyword, checked to be a dict holding ``kinds`` (int: non-negative int)."""
    if not isinstance(d, dict):
        raise ImageError(f"{where} is not an object")
    out = []
    for key, kind in kinds.items():
        if key not in d:
            raise ImageError(f"{where} lacks {key!r}")
        v = d[key]
        if kind is int and not is_size(v):
            raise ImageError(f"{where}: {key!r} is {v!r}, not a non-negative integer")
        if kind is not int and not isinstance(v, kind):
            raise ImageError(f"{where}: {key!r} is not a {kind.__name__}")
        out.append(v)
    return out


def _within(where: str, offset: int, size: int, limit: int, what: str) -> None:
    if offset + size > limit:
        raise ImageError(f"{where} ({offset} + {size} bytes) runs past the end of {what} ({limit} bytes)")


def check_header(meta, data_size: int) -> None:
    """Raise :class:`ImageError` when a JSON header does not describe a readable image of ``data_size``
    data bytes: a missing key, a region or record outside its bounds, or records that differ from
    :func:`stream_plan` of the header's config. Catches hand-edited headers whose checksum was redone."""
    _, _, cfg_dict, rpb, regions, records, host_tensors = _fields(
        meta, "header", format_version=int, numerics_version=int, config=dict, rows_per_block=int,
        regions=dict, records=list, host_tensors=dict)
    cfg = ModelConfig.from_dict(cfg_dict)
    problem = rows_per_block_problem(rpb)
    if problem:
        raise ImageError(problem)
    sizes = {}
    for name in ("stream", "embedding", "host"):
        if name not in regions:
            raise ImageError(f"regions lack {name!r}")
        offset, sizes[name] = _fields(regions[name], f"region {name}", offset=int, size=int)
        _within(f"region {name}", offset, sizes[name], data_size, "the data")
    (stride,) = _fields(regions["embedding"], "region embedding", row_stride=int)
    if stride < 2 * cfg.D or sizes["embedding"] < cfg.V * stride:
        raise ImageError(f"region embedding ({sizes['embedding']} bytes, row stride {stride}) does not hold "
                         f"{cfg.V} rows of {cfg.D} bf16 values")
    plan = stream_plan(cfg)
    if [r.get("name") if isinstance(r, dict) else None for r in records] != [spec.name for spec in plan]:
        raise ImageError(f"the records are not the {len(plan)} records of the config's model "
                         f"(layers {cfg.L}): first {plan[0].name}, last {plan[-1].name}")
    for spec, record in zip(plan, records):
        where = f"record {spec.name}"
        offset, size, k = _fields(record, where, offset=int, size=int, k=int)
        _within(where, offset, size, sizes["stream"], "the stream region")
        if k != spec.k:
            raise ImageError(f"{where}: k {k}, the config's model has {spec.k}")
        if spec.kind == RecordKind.LOWER_BOUND:
            continue
        _fields(record, where, frac_a=int, eps_mant=int, eps_shift=int, x_frac=int, consumers=list)
        consumers = record["consumers"]
        if [c.get("name") if isinstance(c, dict) else None for c in consumers] != [c.name for c in spec.consumers]:
            raise ImageError(f"{where}: consumers are not {', '.join(c.name for c in spec.consumers)}")
        for cspec, consumer in zip(spec.consumers, consumers):
            cwhere = f"matrix {cspec.name}"
            rows, m_offset, m_size = _fields(consumer, cwhere, rows=int, matrix_offset=int, matrix_size=int)
            _fields(consumer, cwhere, frac_g=int, cm=int)
            if rows != cspec.rows:
                raise ImageError(f"{cwhere}: {rows} rows, the config's model has {cspec.rows}")
            blocks, groups, r = packed_matrix_shape(rows, k, rpb)
            if m_size < blocks * groups * r:
                raise ImageError(f"{cwhere}: {m_size} bytes, {rows} x {k} codes need {blocks * groups * r}")
            _within(cwhere, m_offset, m_size, offset + size, f"record {spec.name}")
    for name, tensor in host_tensors.items():
        where = f"host tensor {name}"
        offset, shape = _fields(tensor, where, offset=int, shape=list)
        if not all(is_size(n) for n in shape):
            raise ImageError(f"{where}: shape {shape} is not a list of sizes")
        _within(where, offset, 4 * math.prod(shape), sizes["host"], "the host region")
    tokenizer = meta.get("tokenizer")
    if tokenizer is not None:
        offset, size = _fields(tokenizer, "tokenizer", offset=int, size=int)
        _within("tokenizer", offset, size, sizes["host"], "the host region")


class WeightImage:
    """A validated weight image in memory.

    ``WeightImage.load(path)`` (or ``from_bytes``) checks, in order: size of
    the fixed header, magic, format version, numerics version, declared size
    against the file size (truncation), the SHA-256 trailer (corruption), and
    the JSON header; any failure raises :class:`ImageError` with a one-line
    message. ``verify_checksum=False`` skips only the hash (for ``info`` on a
    damaged file).
    """

    def __init__(self, raw: bytes, meta: dict, data_offset: int, checksum_ok: bool | None):
        self.raw = raw
        self.meta = meta
        self.data_offset = data_offset
        self.checksum_ok = checksum_ok
        self.config = ModelConfig.from_dict(meta["config"])
        self.rows_per_block = int(meta["rows_per_block"])
        self._records = {r["name"]: r for r in meta["records"]}
        self._consumers = {c["name"]: (r, c) for r in meta["records"] for c in r.get("consumers", [])}
        self._codes_f32: dict[str, np.ndarray] = {}

    # -- loading ----------------------------------------------------------
    @classmethod
    def load(cls, path, *, verify_checksum: bool = True) -> "WeightImage":
        p = Path(path)
        if not p.is_file():
            raise ImageError(f"{p}: no such weight image")
        return cls.from_bytes(p.read_bytes(), name=str(p), verify_checksum=verify_checksum)

    @classmethod
    def from_bytes(cls, raw: bytes, *, name: str = "image", verify_checksum: bool = True) -> "WeightImage":
        if len(raw) < FIXED_HEADER.size:
            raise ImageError(f"{name}: truncated ({len(raw)} bytes, shorter than the {FIXED_HEADER.size}-byte header)")
        magic, version, numerics, json_len, _, data_offset, total = FIXED_HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise ImageError(f"{name}: not an mmfree weight image (magic {magic!r}, expected {MAGIC!r})")
        if version != FORMAT_VERSION:
            raise ImageError(f"{name}: image format version {version}, this build reads version {FORMAT_VERSION}")
        if numerics != nx.NUMERICS_VERSION:
            raise ImageError(f"{name}: image made for numerics version {numerics}, this build implements "
                             f"{nx.NUMERICS_VERSION}; convert the checkpoint again")
        if len(raw) < total:
            raise ImageError(f"{name}: truncated ({len(raw)} bytes, header declares {total})")
        if len(raw) > total:
            raise ImageError(f"{name}: {len(raw) - total} unexpected bytes after the image's end")
        checksum_ok = None
        if verify_checksum:
            checksum_ok = hashlib.sha256(raw[:-CHECKSUM_BYTES]).digest() == raw[-CHECKSUM_BYTES:]
            if not checksum_ok:
                raise ImageError(f"{name}: checksum mismatch (the file is corrupted)")
        try:
            meta = json.loads(raw[FIXED_HEADER.size: FIXED_HEADER.size + json_len])
            if not FIXED_HEADER.size + json_len <= data_offset <= total - CHECKSUM_BYTES:
                raise ImageError(f"data offset {data_offset} outside the file")
            check_header(meta, total - CHECKSUM_BYTES - data_offset)
            image = cls(raw, meta, data_offset, checksum_ok)
        except (ValueError, KeyError, TypeError) as e:
            raise ImageError(f"{name}: unreadable header ({e})") from None
        return image

    def verify(self) -> bool:
        """Recompute the SHA-256 trailer; True when it matches."""
        return hashlib.sha256(self.raw[:-CHECKSUM_BYTES]).digest() == self.raw[-CHECKSUM_BYTES:]

    # -- regions ----------------------------------------------------------
    def region(self, name: str) -> memoryview:
        r = self.meta["regions"][name]
        start = self.data_offset + r["offset"]
        return memoryview(self.raw)[start: start + r["size"]]

    @property
    def stream(self) -> memoryview:
        """The STREAM region: what the accelerator reads once per token."""
        return self.region("stream")

    def records(self) -> list[dict]:
        return list(self.meta["records"])

    @property
    def layer_bytes(self) -> int:
        """STREAM bytes of one layer: every layer's records have the same sizes, and the head's
        follow the last layer's (the accelerator reads each layer's state before its records)."""
        head = self.record("head")["offset"]
        layers = self.config.L
        if head % layers or any(self.record(f"model.layers.{l}.attn.lower_bound")["offset"] != l * (head // layers)
                                for l in range(layers)):
            raise ImageError("the image's layers do not have the same STREAM size")
        return head // layers

    def record(self, name: str) -> dict:
        return self._records[name]

    def _stream_array(self, offset: int, count: int, dtype: str) -> np.ndarray:
        return np.frombuffer(self.stream, dtype=dtype, count=count, offset=offset)

    def record_header(self, name: str) -> np.ndarray:
        return self._stream_array(self._records[name]["offset"], RECORD_HEADER_WORDS, "<i4")

    def norm_gain(self, record: str) -> tuple[np.ndarray, int]:
        """(24-bit mantissas in int32, frac) of a BITLINEAR record's pre-norm gain A."""
        r = self._records[record]
        return self._stream_array(r["offset"] + RECORD_HEADER_BYTES, r["k"], GAIN_WORD), r["frac_a"]

    def folded_gain(self, consumer: str) -> tuple[np.ndarray, int]:
        """(24-bit mantissas in int32, frac) of a consumer's folded gain G = A * gamma."""
        r, c = self._consumers[consumer]
        index = r["consumers"].index(c)
        word = np.dtype(GAIN_WORD).itemsize
        off = r["offset"] + RECORD_HEADER_BYTES + align(word * r["k"], STREAM_ALIGN) * (1 + index)
        return self._stream_array(off, r["k"], GAIN_WORD), c["frac_g"]

    def lower_bound_gates(self, layer: int) -> np.ndarray:
        r = self._records[f"model.layers.{layer}.attn.lower_bound"]
        return self._stream_array(r["offset"] + RECORD_HEADER_BYTES, r["k"], GATE_WORD).astype(np.int64)

    def consumer(self, name: str) -> dict:
        return self._consumers[name][1]

    def codes(self, consumer: str) -> np.ndarray:
        """int8 N x K ternary codes of a matrix, unpacked from the stream."""
        r, c = self._consumers[consumer]
        blob = self._stream_array(c["matrix_offset"], c["matrix_size"], "u1")
        return unpack_matrix(blob, c["rows"], r["k"], self.rows_per_block)

    def codes_float32(self, consumer: str) -> np.ndarray:
        """The codes as float32 (cached): the golden models' matrix products are
        exact in float32 because every partial sum is an integer below 2**24."""
        if consumer not in self._codes_f32:
            self._codes_f32[consumer] = self.codes(consumer).astype(np.float32)
        return self._codes_f32[consumer]

    def embedding_bf16(self, token: int | None = None) -> np.ndarray:
        """Raw bf16 bits of one embedding row (or the whole table)."""
        region = self.meta["regions"]["embedding"]
        stride = region["row_stride"] // 2
        table = np.frombuffer(self.region("embedding"), dtype="<u2").reshape(self.config.V, stride)
        return table[:, : self.config.D] if token is None else table[token, : self.config.D]

    def host_tensor(self, name: str) -> np.ndarray:
        t = self.meta["host_tensors"][name]
        count = int(np.prod(t["shape"])) if t["shape"] else 1
        return np.frombuffer(self.region("host"), dtype="<f4", count=count, offset=t["offset"]).reshape(t["shape"])

    def tokenizer_json(self) -> bytes | None:
        tok = self.meta.get("tokenizer")
        if not tok:
            return None
        return bytes(self.region("host")[tok["offset"]: tok["offset"] + tok["size"]])

    # -- summary ----------------------------------------------------------
    def matrix_stats(self) -> dict:
        """Ternary weights, packed bytes and bits per weight over the stream."""
        weights = sum(c["rows"] * r["k"] for r in self.meta["records"] for c in r.get("consumers", []))
        packed = sum(c["matrix_size"] for r in self.meta["records"] for c in r.get("consumers", []))
        return {"ternary_weights": weights, "packed_bytes": packed,
                "bits_per_weight": 8 * packed / weights if weights else 0.0,
                "stream_bytes": self.meta["regions"]["stream"]["size"],
                "embedding_bytes": self.meta["regions"]["embedding"]["size"],
                "file_bytes": len(self.raw)}
