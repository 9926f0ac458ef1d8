"""Transformer encoder-decoder for translation (Vaswani et al. 2017), built from torch.nn layers.

    config = TransformerConfig.preset("small", vocab_size=len(vocab))
    model = TranslationModel(config)
    batch = collate(encoded_pairs)                                  # src, tgt_in = BOS y, tgt_out = y EOS
    loss = label_smoothed_loss(model(batch.src, batch.tgt_in), batch.tgt_out, smoothing=0.1)
    scheduler = inverse_sqrt_schedule(optimizer, warmup_steps=4000)

The vocabulary is joint (data/vocab.py), so one matrix is the source embedding, the target embedding and the
output projection. Targets are right-padded: with a causal mask no real position can see padding, so no target
padding mask is needed, and teacher forcing gives exactly the distributions of step-by-step decoding.

Presets
- base:  Transformer-Base, the paper's NMT model (d 512, 6+6 layers, 8 heads, ff 2048, dropout 0.1, post-norm); a GPU.
- small: for Multi30k on a 2-core CPU. d 256 with 3+3 layers was measured at ~1.3k target tokens/s, ~6 min for
         an epoch of Multi30k (~440K target tokens with EOS). d 192, 2+2 layers, 4 heads of 48, ff 768 trains
         ~1.9x faster (measured against d 256 3+3 in one process: 3.6M vs 7.6M parameters), ~3 min an epoch.
         d 128 would be only ~1.5x faster again, as the 8K-way tied output projection comes to dominate, and
         leaves skinny shared embeddings for two languages. Pre-norm, which trains reliably with a short warm-up.
- tiny:  unit tests (toy copy and reverse tasks).
"""

import functools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ensemble_distill.data.vocab import BOS_ID, EOS_ID, PAD_ID
from ensemble_distill.errors import UserError

PRESETS = {
    "base": dict(d_model=512, n_heads=8, n_encoder_layers=6, n_decoder_layers=6, d_ff=2048, dropout=0.1, norm_first=False),
    "small": dict(d_model=192, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=768, dropout=0.1, norm_first=True),
    "tiny": dict(d_model=64, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, d_ff=256, dropout=0.0, norm_first=True),
}


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    norm_first: bool = False  # False is Vaswani et al.'s post-norm
    max_positions: int = 512

    def __post_init__(self):
        for key in ("vocab_size", "d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff", "max_positions"):
            if getattr(self, key) < 1:
                raise UserError(f"model config: {key} must be at least 1, got {getattr(self, key)}")
        if self.d_model % self.n_heads:
            raise UserError(f"model config: d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0 <= self.dropout < 1:
            raise UserError(f"model config: dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def preset(cls, name: str, vocab_size: int, **overrides) -> "TransformerConfig":
        if name not in PRESETS:
            raise UserError(f"model config: preset must be one of {', '.join(PRESETS)}, got {name!r}")
        return replace(cls(vocab_size, **PRESETS[name]), **overrides)


class TranslationModel(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embedding = nn.Embedding(config.vocab_size, d, padding_idx=PAD_ID)
        self.register_buffer("positions", sinusoidal_positions(config.max_positions, d), persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        layer_args = dict(nhead=config.n_heads, dim_feedforward=config.d_ff, dropout=config.dropout,
                          batch_first=True, norm_first=config.norm_first)
        # Pre-norm stacks end with a LayerNorm; post-norm layers already normalise their output.
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, **layer_args), config.n_encoder_layers,
                                             norm=nn.LayerNorm(d) if config.norm_first else None,
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(d, **layer_args), config.n_decoder_layers,
                                             norm=nn.LayerNorm(d) if config.norm_first else None)
        self.reset_parameters()

    def reset_parameters(self):
        # As fairseq: Xavier for the layers; embeddings N(0, d^-1/2), so that after scaling by sqrt(d) they have
        # unit variance, like the sinusoids they are added to.
        for name, parameter in self.named_parameters():
            if parameter.dim() > 1 and not name.startswith("embedding"):
                nn.init.xavier_uniform_(parameter)
        nn.init.normal_(self.embedding.weight, std=self.config.d_model**-0.5)
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()

    def embed(self, ids: Tensor) -> Tensor:
        length = ids.shape[1]
        if length > self.config.max_positions:
            raise UserError(f"sequence of {length} tokens is longer than the model's max_positions ({self.config.max_positions})")
        scaled = self.embedding(ids) * math.sqrt(self.config.d_model)
        return self.dropout(scaled + self.positions[:length])

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder states [B, S, d] and the source padding mask [B, S] (True at padding)."""
        src_pad = src == PAD_ID
        return self.encoder(self.embed(src), src_key_padding_mask=src_pad), src_pad

    def decoder_states(self, memory: Tensor, src_pad: Tensor, tgt_in: Tensor) -> Tensor:
        length = tgt_in.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tgt_in.device).triu(1)
        return self.decoder(self.embed(tgt_in), memory, tgt_mask=causal, tgt_is_causal=True,
                            memory_key_padding_mask=src_pad)

    def project(self, states: Tensor) -> Tensor:
        return F.linear(states, self.embedding.weight)  # tied output projection

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Next-token logits [B, T, V] under teacher forcing."""
        memory, src_pad = self.encode(src)
        return self.project(self.decoder_states(memory, src_pad, tgt_in))

    def log_probs_teacher_forced(self, src: Tensor, tgt_in: Tensor, real: Tensor | None = None) -> Tensor:
        """Next-token log-probabilities [B, T, V] under teacher forcing: what calibration and the teacher store read.
        With a mask `real` [B, T], only those positions, [positions, V] in row-major order: padding is then
        neither projected onto the vocabulary nor normalised, the bulk of the work."""
        memory, src_pad = self.encode(src)
        states = self.decoder_states(memory, src_pad, tgt_in)
        return F.log_softmax(self.project(states if real is None else states[real]).float(), dim=-1)

    def decode_step(self, memory: Tensor, src_pad: Tensor, prefix: Tensor) -> Tensor:
        """Log-probabilities [B, V] of the token after each prefix [B, t] (BOS first). The decoder is rerun over
        the whole prefix: simple, and cheap enough for caption-length outputs."""
        states = self.decoder_states(memory, src_pad, prefix)
        return F.log_softmax(self.project(states[:, -1]).float(), dim=-1)


def sinusoidal_positions(n_positions: int, d_model: int) -> Tensor:
    """Vaswani et al.'s encodings [n_positions, d_model]: sin in even, cos in odd dimensions."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return table


@dataclass
class TranslationBatch:
    src: Tensor  # [B, S] source ids then EOS, right-padded
    tgt_in: Tensor  # [B, T] BOS then target ids, right-padded
    tgt_out: Tensor  # [B, T] target ids then EOS, right-padded: the gold next tokens

    @property
    def n_target_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())


def collate(pairs) -> TranslationBatch:
    """A padded batch from (source ids, target ids) pairs of subword ids without specials."""
    def padded(seqs):
        return pad_sequence([torch.tensor(seq, dtype=torch.long) for seq in seqs], batch_first=True, padding_value=PAD_ID)
    return TranslationBatch(
        src=padded([[*src, EOS_ID] for src, _ in pairs]),
        tgt_in=padded([[BOS_ID, *tgt] for _, tgt in pairs]),
        tgt_out=padded([[*tgt, EOS_ID] for _, tgt in pairs]),
    )


def fit_to_positions(pairs, max_positions: int) -> tuple[list, int]:
    """(source, target) id pairs without specials cut to what a model of `max_positions` positions takes: at most
    max_positions - 1 ids a side (then EOS, or BOS). Returns the pairs and how many of them were cut."""
    limit = max_positions - 1
    fitted = [(src[:limit], tgt[:limit]) for src, tgt in pairs]
    return fitted, sum(len(src) > limit or len(tgt) > limit for src, tgt in pairs)


def fit_sources(src: Tensor, max_positions: int) -> tuple[Tensor, int]:
    """Sources [B, S] (ids then EOS, right-padded) cut to at most max_positions columns; a row that loses its
    tail keeps its EOS in the last column (as fairseq's truncate_source). Returns them and how many rows lost ids."""
    if src.shape[1] <= max_positions:
        return src, 0
    cut = (src != PAD_ID).sum(1) > max_positions
    src = src[:, :max_positions].clone()
    src[cut, -1] = EOS_ID
    return src, int(cut.sum())


def label_smoothed_loss(logits: Tensor, targets: Tensor, smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy per non-padding target token against (1 - λ)·one-hot + λ·uniform over all V classes
    (Szegedy et al. 2016); λ = 0.1 for the paper's LS runs, 0 for plain cross-entropy."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD_ID, label_smoothing=smoothing)


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for optimiser update `step` (counted from 0): rises linearly to 1 at update
    warmup_steps, then decays as sqrt(warmup_steps / update). Vaswani et al.'s rate d^-0.5·min(n^-0.5, n·w^-1.5)
    is this factor times a peak rate of (d·w)^-0.5."""
    update = step + 1
    return min(update / warmup_steps, math.sqrt(warmup_steps / update))


def inverse_sqrt_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler that sets each group's rate to its initial (peak) rate times inverse_sqrt_factor."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(inverse_sqrt_factor, warmup_steps=warmup_steps))
