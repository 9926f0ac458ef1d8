"""Transformer encoder-decoder for translation (Vaswani et al. 2017), built from torch.nn layers.

    config = TransformerConfig.preset("small", vocab_size=len(vocab))
    model = TranslationModel(config)
    batch = collate(encoded_pairs)                                  # src, tgt_in = BOS y, tgt_out = y EOS
    loss = label_smoothed_loss(model(batch.src, batch.tgt_in), batch.tgt_out, smoothing=0.1)
    scheduler = inverse_sqrt_schedule(optimizer, warmup_steps=4000)
    decoder = model.start_decoding(batch.src, beam_size=4)         # cached keys and values, for beam_search.py

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
    "base": dict(d_model=512, n_heads=8, n_encoder_layers=6, n_decoder_layers=6, d_ff=2048, dropout=0.1,
                 norm_first=False),
    "small": dict(d_model=192, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=768, dropout=0.1,
                  norm_first=True),
    "tiny": dict(d_model=64, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, d_ff=256, dropout=0.0,
                 norm_first=True),
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
        for key in ("vocab_size", "d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff",
                    "max_positions"):
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

    def embed(self, ids: Tensor, start: int = 0) -> Tensor:
        """Scaled embeddings plus sinusoids [B, T, d] of ids [B, T] that sit at positions start, ..., start + T - 1."""
        end = start + ids.shape[1]
        if end > self.config.max_positions:
            raise UserError(f"sequence of {end} tokens is longer than the model's max_positions "
                            f"({self.config.max_positions})")
        scaled = self.embedding(ids) * math.sqrt(self.config.d_model)
        return self.dropout(scaled + self.positions[start:end])

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
        """Log-probabilities [B, V] of the token after each prefix [B, t] (BOS first), the decoder rerun over the
        whole prefix: quadratic in the output length. The reference that CachedDecoder is tested against."""
        states = self.decoder_states(memory, src_pad, prefix)
        return F.log_softmax(self.project(states[:, -1]).float(), dim=-1)

    def start_decoding(self, src: Tensor, beam_size: int = 1, *,
                       cache: bool = True) -> "CachedDecoder | RecomputeDecoder":
        """A step-by-step decoder of beam_size hypotheses per source row of src [B, S] (ids then EOS,
        right-padded), the B x beam_size hypotheses in sentence-major order. cache=False gives the full-recompute
        RecomputeDecoder, the reference for tests and benchmarks.

        Raises:
            ValueError: the model is in training mode (decoding skips dropout), or beam_size < 1.
        """
        if self.training:
            raise ValueError("start_decoding: put the model in eval mode first (decoding applies no dropout)")
        if beam_size < 1:
            raise ValueError(f"start_decoding: beam_size must be at least 1, got {beam_size}")
        return (CachedDecoder if cache else RecomputeDecoder)(self, src, beam_size)


class CachedDecoder:
    """Incremental decoding: each step runs the decoder on one new token per hypothesis, attending to the keys and
    values of the earlier tokens, which are kept, instead of rerunning it over the whole prefix.

        decoder = model.start_decoding(src, beam_size=4)           # N = B x 4 hypotheses, each at BOS
        log_probs = decoder.step(torch.full((N,), BOS_ID))          # [N, V]
        decoder.reorder(parents)                                    # hypothesis n continues hypothesis parents[n]
        log_probs = decoder.step(next_tokens)                       # [N, V]

    The step is our own forward of nn.TransformerDecoderLayer on its own parameters (eval mode, so no dropout):
    torch's layer and nn.MultiheadAttention take whole sequences and keep no keys or values between calls.
    Self-attention keys and values grow by one position a step ([N, H, t, d/H] per layer). Cross-attention keys
    and values of the encoder output are computed once per sentence ([B, H, S, d/H]) and never reordered: the
    hypotheses of a sentence stay with that sentence, so its beam_size rows act as beam_size query positions
    against the one copy of its keys.
    """

    def __init__(self, model: TranslationModel, src: Tensor, beam_size: int):
        memory, src_pad = model.encode(src)
        config = model.config
        self.model, self.beam_size, self.length = model, beam_size, 0
        self.n_heads, self.d_model = config.n_heads, config.d_model
        self.attend = ~src_pad[:, None, None, :]  # [B, 1, 1, S]: True at real source tokens
        cross = [F.linear(memory, layer.multihead_attn.in_proj_weight[config.d_model:],
                          layer.multihead_attn.in_proj_bias[config.d_model:]).chunk(2, dim=-1)
                 for layer in model.decoder.layers]
        self.cross_keys = [self.heads(k) for k, _ in cross]
        self.cross_values = [self.heads(v) for _, v in cross]
        n, head_size = src.shape[0] * beam_size, config.d_model // config.n_heads
        empty = memory.new_empty(n, config.n_heads, 0, head_size)
        self.keys, self.values = [empty] * len(model.decoder.layers), [empty] * len(model.decoder.layers)

    def heads(self, x: Tensor) -> Tensor:
        """[N, T, d] -> [N, H, T, d/H]"""
        return x.view(x.shape[0], x.shape[1], self.n_heads, -1).transpose(1, 2)

    def step(self, tokens: Tensor) -> Tensor:
        """Log-probabilities [N, V] (float32) of the next token after each hypothesis, extended by tokens [N].

        Raises:
            UserError: the hypotheses would outgrow the model's max_positions.
        """
        x = self.model.embed(tokens[:, None], start=self.length)  # [N, 1, d]
        for i, layer in enumerate(self.model.decoder.layers):
            if layer.norm_first:  # the two orders of nn.TransformerDecoderLayer.forward
                x = x + self.self_attention(i, layer.self_attn, layer.norm1(x))
                x = x + self.cross_attention(i, layer.multihead_attn, layer.norm2(x))
                x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
            else:
                x = layer.norm1(x + self.self_attention(i, layer.self_attn, x))
                x = layer.norm2(x + self.cross_attention(i, layer.multihead_attn, x))
                x = layer.norm3(x + layer.linear2(layer.activation(layer.linear1(x))))
        if self.model.decoder.norm is not None:
            x = self.model.decoder.norm(x)
        self.length += 1
        return F.log_softmax(self.model.project(x[:, 0]).float(), dim=-1)

    def self_attention(self, i: int, attention: nn.MultiheadAttention, x: Tensor) -> Tensor:
        query, key, value = F.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
        self.keys[i] = torch.cat([self.keys[i], self.heads(key)], dim=2)
        self.values[i] = torch.cat([self.values[i], self.heads(value)], dim=2)
        # One query, the newest position: it may see every cached one, so no causal mask.
        out = F.scaled_dot_product_attention(self.heads(query), self.keys[i], self.values[i])  # [N, H, 1, d/H]
        return attention.out_proj(out.transpose(1, 2).reshape(x.shape))

    def cross_attention(self, i: int, attention: nn.MultiheadAttention, x: Tensor) -> Tensor:
        query = F.linear(x, attention.in_proj_weight[: self.d_model], attention.in_proj_bias[: self.d_model])
        by_sentence = query.view(-1, self.beam_size, self.n_heads, self.d_model // self.n_heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(by_sentence, self.cross_keys[i], self.cross_values[i],
                                             attn_mask=self.attend)  # [B, H, beam_size, d/H]
        return attention.out_proj(out.transpose(1, 2).reshape(x.shape))

    def reorder(self, parents: Tensor):
        """Hypothesis n continues hypothesis parents[n] ([N] long, within the same sentence's rows)."""
        self.keys = [k[parents] for k in self.keys]
        self.values = [v[parents] for v in self.values]


class RecomputeDecoder:
    """CachedDecoder's interface over decode_step: every step reruns the decoder over whole prefixes. The
    reference that the cache is tested and benchmarked against."""

    def __init__(self, model: TranslationModel, src: Tensor, beam_size: int):
        self.model = model
        self.memory, self.src_pad = (t.repeat_interleave(beam_size, dim=0) for t in model.encode(src))
        self.prefixes = src.new_empty(len(self.memory), 0)

    def step(self, tokens: Tensor) -> Tensor:
        self.prefixes = torch.cat([self.prefixes, tokens[:, None]], dim=1)
        return self.model.decode_step(self.memory, self.src_pad, self.prefixes)

    def reorder(self, parents: Tensor):
        self.prefixes = self.prefixes[parents]


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

    def rows(self, start: int, stop: int) -> "TranslationBatch":
        """Sentences start..stop-1 padded to their own longest, as collate would pad them alone: a piece of the
        batch (distributed.my_pieces), whose teacher entries the store pads the same way."""
        src, tgt_in, tgt_out = self.src[start:stop], self.tgt_in[start:stop], self.tgt_out[start:stop]
        width = [int((x != PAD_ID).sum(1).max()) if len(x) else 0 for x in (src, tgt_out)]
        return TranslationBatch(src[:, :width[0]], tgt_in[:, :width[1]], tgt_out[:, :width[1]])


def collate(pairs) -> TranslationBatch:
    """A padded batch from (source ids, target ids) pairs of subword ids without specials."""
    def padded(seqs):
        return pad_sequence([torch.tensor(seq, dtype=torch.long) for seq in seqs], batch_first=True,
                            padding_value=PAD_ID)
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
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD_ID,
                           label_smoothing=smoothing)


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for optimiser update `step` (counted from 0): rises linearly to 1 at update
    warmup_steps, then decays as sqrt(warmup_steps / update). Vaswani et al.'s rate d^-0.5·min(n^-0.5, n·w^-1.5)
    is this factor times a peak rate of (d·w)^-0.5."""
    update = step + 1
    return min(update / warmup_steps, math.sqrt(warmup_steps / update))


def inverse_sqrt_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler that sets each group's rate to its initial (peak) rate times inverse_sqrt_factor."""
    schedule = functools.partial(inverse_sqrt_factor, warmup_steps=warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
