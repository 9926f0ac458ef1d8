"""Export a trained model to a runtime that needs none of our code: Hugging Face token classification (taggers)
and CTranslate2 (translation models).

    export_hf_token_classification(tagger, encoder_path, labels, "hf-tagger", temperature=1.3)
    pipeline("token-classification", model="hf-tagger")          # transformers, no ensemble_distill import

    export_ctranslate2(model, "vocab.model", "ct2-model")
    ctranslate2.Translator("ct2-model").translate_batch(pieces, beam_size=4, length_penalty=0, min_decoding_length=0)

Hugging Face. An IID tagger is the encoder's frozen bottom layers (never trained, so read from the encoder folder),
its tuned top layers, and a linear classifier on each word's first subword; in eval mode that is exactly
`<Arch>ForTokenClassification` (dropout, then `classifier`) read at first subwords. The top layers go back to their
indices in the encoder. A fitted temperature T is folded into the classifier (W/T, b/T): softmax(z/T) is the
temperature-scaled distribution, so the pipeline's scores are the calibrated ones.

CTranslate2. Our Transformer maps onto `ctranslate2.specs.TransformerSpec` layer for layer: pre-norm (with the
final LayerNorm of each stack) or post-norm as the preset says, ReLU feed-forward, torch's LayerNorm epsilon
(1e-5), embeddings scaled by sqrt(d_model), our sinusoid table (sin in even, cos in odd dimensions: not
CTranslate2's built-in layout, so the table itself is stored), one matrix for source and target embeddings and the
output projection, EOS appended to the source and BOS as the decoder's first input. The exported distributions are
the model's own, PAD and BOS included; our beam search never extends a hypothesis with those two, which
CTranslate2 does with `suppress_sequences=[["<pad>"], ["<s>"]]` (it then renormalises over the other tokens, a
difference of the order of their probability, ~1e-5 for a trained model).
"""

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .data.vocab import SubwordVocab
from .errors import UserError
from .io_utils import _umask
from .models.tagger import Tagger
from .models.translation import TranslationModel, sinusoidal_positions

SENTENCEPIECE_FILE = "sentencepiece.model"  # the subword model, copied beside the CTranslate2 model
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
HIDDEN_BOUND = 1e3  # above any entry of a final hidden state (LayerNorm output): bounds the classifier's scores


def export_hf_token_classification(tagger: Tagger, encoder_path, labels: list[str], out_dir,
                                   temperature: float | None = None, source: dict | None = None) -> Path:
    """Write a Hugging Face token-classification folder (config.json with id2label/label2id, model.safetensors
    with the whole encoder and the classifier, tokenizer files) equivalent to `tagger` at its first subwords.

    tagger: an IID Tagger whose top layers were cut from the encoder at `encoder_path` (a local HF folder, as
    `encoders.resolve_encoder` returns it); labels: its label names, in classifier order; temperature: a fitted
    T > 0 folded into the classifier, or None; source: where the weights come from (pipeline.export: the model
    folder and its weights' sha256). config.json records both under "ensemble_distill" (with T null when none
    is folded), so a calibrated export can be told from a raw one. The folder is built beside `out_dir` and
    renamed into place.

    Raises:
        ValueError: a CRF tagger, labels that do not match the classifier, a temperature that is not finite and
            positive or so small that the scores (W h + b)/T can overflow float32, or an encoder with fewer layers
            than the tagger's top.
        UserError: `out_dir` exists and is not an empty folder.
    """
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if tagger.head != "iid":
        raise ValueError(f"only an IID tagger is a plain token classifier; this one has a {tagger.head!r} head")
    if len(labels) != tagger.classifier.out_features or len(set(labels)) != len(labels):
        raise ValueError(f"{len(labels)} labels (distinct: {len(set(labels))}) for a classifier of "
                         f"{tagger.classifier.out_features} outputs")
    scale = _inverse_temperature(temperature)
    out_dir = _empty_target(out_dir)

    hf_logging.set_verbosity_error()  # its load report lists the new classifier, replaced below
    model = AutoModelForTokenClassification.from_pretrained(
        str(encoder_path), local_files_only=True, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    layers = model.base_model.encoder.layer
    cut = len(layers) - len(tagger.top.layers)
    if cut < 0:
        raise ValueError(f"the tagger tunes {len(tagger.top.layers)} layers; {encoder_path} has only {len(layers)}")
    with torch.no_grad():
        for index, layer in enumerate(tagger.top.layers):
            layers[cut + index].load_state_dict(layer.state_dict())
        model.classifier.weight.copy_(tagger.classifier.weight * scale)
        model.classifier.bias.copy_(tagger.classifier.bias * scale)
    # A tiny T makes the weights, or the scores W h + b, overflow float32: inf scores give the pipeline NaN. The
    # scores are bounded by |W|_1 max|h| + |b| per label, and h leaves the encoder's last LayerNorm with entries
    # far below HIDDEN_BOUND.
    weight, bias = model.classifier.weight.double(), model.classifier.bias.double()
    bound = weight.abs().sum(1).max() * HIDDEN_BOUND + bias.abs().max()
    if not (torch.isfinite(bound) and bound < torch.finfo(torch.float32).max):
        raise UserError(f"temperature {temperature!r}: the classifier's weights divided by it overflow float32 "
                        "scores; a temperature that small leaves no distribution to export")
    model.config.ensemble_distill = {**(source or {}), "temperature": temperature}
    # The encoder's own tokenizer files, copied as they are: the tokenizer our tagger read. (save_pretrained would
    # write this transformers version's class names and the settings of the last call, e.g. MiniLM's max_length.)
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_path), local_files_only=True)
    names = {*TOKENIZER_FILES, *tokenizer.vocab_files_names.values()}
    tokenizer_files = [Path(encoder_path) / name for name in sorted(names) if (Path(encoder_path) / name).is_file()]

    def write(folder: Path):
        model.save_pretrained(folder)  # safetensors, the default since transformers 4.35
        for path in tokenizer_files:
            shutil.copyfile(path, folder / path.name)

    return _build_into(out_dir, write)


def export_ctranslate2(model: TranslationModel, vocab_model_path, out_dir) -> Path:
    """Write a CTranslate2 model folder (model.bin float32, config.json, shared_vocabulary.json) for `model`, with
    its sentencepiece model copied beside it as `sentencepiece.model`.

    Load it with `ctranslate2.Translator(out_dir, compute_type="float32")` ("int8" quantises the weights at load
    time: faster, but another model's outputs). Translate sentencepiece pieces (no BOS/EOS: the folder's config adds
    them). For our search's outputs use `beam_size=K, length_penalty=0, min_decoding_length=0` and, per sentence,
    `max_decoding_length=cap - 1` with cap our beam_search.output_length_caps (one call per distinct cap):
    CTranslate2's length penalty is length**alpha over the tokens without EOS, ours is GNMT's ((5 + n) / 6)**alpha
    with n counting EOS, so they agree only at alpha = 0; its default min_decoding_length=1 forbids an empty output;
    at its max_decoding_length it stops without EOS where we force EOS, so outputs that reach the cap may differ.

    Raises:
        ValueError: the vocabulary's size is not the model's.
        UserError: `out_dir` exists and is not an empty folder; `vocab_model_path` is not a sentencepiece model
            with our special ids.
    """
    from ctranslate2.converters.converter import Converter

    vocab = SubwordVocab(vocab_model_path)
    if len(vocab) != model.config.vocab_size:
        raise ValueError(f"{vocab_model_path} has {len(vocab)} pieces; the model's vocabulary has "
                         f"{model.config.vocab_size}")
    out_dir = _empty_target(out_dir)
    spec = ctranslate2_spec(model, [vocab.processor.id_to_piece(i) for i in range(len(vocab))])

    class _SpecConverter(Converter):
        def _load(self):
            return spec

    def write(folder: Path):
        _SpecConverter().convert(str(folder), force=True)  # validates the spec, aliases the tied matrix, saves
        shutil.copyfile(vocab.path, folder / SENTENCEPIECE_FILE)

    return _build_into(out_dir, write)


def ctranslate2_translate_capped(translator, pieces: list[list[str]], caps: list[int], **options) -> list:
    """`translator.translate_batch(pieces, **options)` (a ctranslate2.Translator, sentencepiece pieces) with
    sentence i's output limited as our beam search limits it: caps[i] tokens with EOS (caps from
    beam_search.output_length_caps), so max_decoding_length = caps[i] - 1, where CTranslate2 stops without EOS.
    It takes one max_decoding_length a call: one call per distinct cap. Results in the order of `pieces`."""
    results = [None] * len(pieces)
    for cap in sorted(set(caps)):
        rows = [i for i, c in enumerate(caps) if c == cap]
        for i, result in zip(rows, translator.translate_batch([pieces[i] for i in rows], max_decoding_length=cap - 1,
                                                              **options)):
            results[i] = result
    return results


def ctranslate2_spec(model: TranslationModel, pieces: list[str]):
    """The `ctranslate2.specs.TransformerSpec` of `model` (weights as float32 numpy arrays), with `pieces` (the
    subword of each id) as its shared source and target vocabulary."""
    from ctranslate2.specs import common_spec, transformer_spec

    config = model.config
    spec = transformer_spec.TransformerSpec.from_config(
        (config.n_encoder_layers, config.n_decoder_layers), config.n_heads, pre_norm=config.norm_first,
        activation=common_spec.Activation.RELU)  # torch's Transformer layers default to ReLU
    spec.config.add_source_eos = True  # our sources are ids then EOS; the decoder starts from BOS ("<s>")
    spec.config.layer_norm_epsilon = 1e-5  # torch's LayerNorm default, used by every norm of the model
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)

    embedding = _numpy(model.embedding.weight)
    positions = _numpy(sinusoidal_positions(config.max_positions, config.d_model))
    for stack, spec_stack in ((model.encoder, spec.encoder), (model.decoder, spec.decoder)):
        spec_stack.scale_embeddings = True  # by sqrt(d_model), as TranslationModel.embed
        spec_stack.position_encodings.encodings = positions
        if stack.norm is not None:
            _set_norm(spec_stack.layer_norm, stack.norm)
    spec.encoder.embeddings[0].weight = embedding
    spec.decoder.embeddings.weight = embedding
    spec.decoder.projection.weight = embedding  # the same array: saved once

    for layer, layer_spec in zip(model.encoder.layers, spec.encoder.layer):
        _set_self_attention(layer_spec.self_attention, layer.self_attn, layer.norm1)
        _set_feed_forward(layer_spec.ffn, layer, layer.norm2)
    for layer, layer_spec in zip(model.decoder.layers, spec.decoder.layer):
        _set_self_attention(layer_spec.self_attention, layer.self_attn, layer.norm1)
        d = config.d_model  # cross-attention: queries from the decoder, keys and values (one fused matrix) from memory
        weight, bias = _numpy(layer.multihead_attn.in_proj_weight), _numpy(layer.multihead_attn.in_proj_bias)
        _set_linear(layer_spec.attention.linear[0], weight[:d], bias[:d])
        _set_linear(layer_spec.attention.linear[1], weight[d:], bias[d:])
        _set_linear(layer_spec.attention.linear[2], _numpy(layer.multihead_attn.out_proj.weight),
                    _numpy(layer.multihead_attn.out_proj.bias))
        _set_norm(layer_spec.attention.layer_norm, layer.norm2)
        _set_feed_forward(layer_spec.ffn, layer, layer.norm3)
    return spec


# Each sublayer's spec carries the LayerNorm of that sublayer: before it (pre-norm) or after the residual sum
# (post-norm), as the spec's pre_norm says; torch's norm1/norm2/norm3 are self-attention/cross-attention/feed-forward.


def _set_self_attention(spec, attention: torch.nn.MultiheadAttention, norm) -> None:
    # torch's in_proj stacks the query, key and value projections in that order, CTranslate2's fused layout.
    _set_linear(spec.linear[0], _numpy(attention.in_proj_weight), _numpy(attention.in_proj_bias))
    _set_linear(spec.linear[1], _numpy(attention.out_proj.weight), _numpy(attention.out_proj.bias))
    _set_norm(spec.layer_norm, norm)


def _set_feed_forward(spec, layer, norm) -> None:
    _set_linear(spec.linear_0, _numpy(layer.linear1.weight), _numpy(layer.linear1.bias))
    _set_linear(spec.linear_1, _numpy(layer.linear2.weight), _numpy(layer.linear2.bias))
    _set_norm(spec.layer_norm, norm)


def _set_linear(spec, weight: np.ndarray, bias: np.ndarray) -> None:
    spec.weight, spec.bias = weight, bias


def _set_norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _numpy(norm.weight), _numpy(norm.bias)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy().copy()


def _inverse_temperature(temperature: float | None) -> float:
    if temperature is None:
        return 1.0
    if not (math.isfinite(float(temperature)) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return 1.0 / float(temperature)


def _empty_target(out_dir) -> Path:
    """out_dir as a Path, refused if it holds anything: an export never mixes with or deletes other files."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists and is not an empty folder; exports go to a new folder")
    return out_dir


def _build_into(out_dir: Path, write) -> Path:
    """Run write(folder) on a temporary folder beside out_dir, then rename it to out_dir (replacing an empty
    one): a reader never sees a half-written export, and a failed one leaves nothing behind."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        write(build)
        # mkdtemp and safetensors make owner-only files; an export is read like any other output
        for path in build.iterdir():
            path.chmod(0o666 & ~_umask())
        build.chmod(0o777 & ~_umask())
        os.replace(build, out_dir)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return out_dir

