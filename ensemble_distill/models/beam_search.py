"""Batched beam search for an ensemble of translation models (a single model is an ensemble of one).

    decoded = beam_search([model_a, model_b], src, beam_size=4, alpha=0.6)
    decoded.tokens[0]          # best target ids of sentence 0, without BOS and EOS
    greedy_decode([model], src)

At every step the ensemble's next-token distribution is the uniform mean of its members' probabilities (as in
the paper: the argmax of the averaged token distribution), and the beam is scored with its logarithm; members are
combined inside the search, not by merging their finished outputs.

The candidates follow fairseq: each step ranks the 2K best extensions of the K live hypotheses by their summed
log-probability; an EOS extension among the top K is set aside as finished, and the K best other extensions
become the new beam. The answer is the finished hypothesis with the best score / lp(length), with GNMT's length
penalty lp(n) = ((5 + n) / 6)^alpha (Wu et al. 2016), n counting EOS.

A sentence is done once no live hypothesis can still beat its best finished one, or when its length cap forces
EOS. Log-probabilities are <= 0, so a live hypothesis's summed log-probability s only falls as it grows, and lp
only grows with n: it can finish with at most s / lp(cap). The search stops when best finished >= best live
s / lp(cap) (with alpha = 0: best finished >= best live s), the exact bound (transformers'
`early_stopping="never"`), so it returns what the same beam returns searched to the cap (tested), and at
alpha = 0 what CTranslate2 returns before the cap (measured, README). fairseq's rule, done once K hypotheses
have finished, which this replaces, can stop with a better hypothesis still live (README: "Translate new text").
With K = 1 the search is greedy decoding for any alpha (the first EOS ends it), as CTranslate2 and transformers
run beam 1.

The cap is the sentence's own (1.5 x its source length + 10: output_length_caps), not the padded batch's, so a
sentence's translation does not depend on the sentences batched with it; the batch decodes until each is done.
All sentences x beams move as one batch.

Each member decodes incrementally (CachedDecoder: its keys and values cached, reordered with the surviving
beams), so a step costs the same at every length; cache=False reruns each member's decoder over whole prefixes,
the reference the cache is tested and benchmarked against (same hypotheses, scores within float rounding).

Inputs beyond the models' positions never abort a search (as fairseq): the output length is capped so that every
decoder prefix fits (EOS is forced at the limit, so the hypothesis comes back truncated), and a source longer
than the encoder takes is cut to fit, keeping its EOS, with a warning that counts such sources.
"""

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ensemble_distill.data.vocab import BOS_ID, EOS_ID, PAD_ID
from ensemble_distill.errors import UserError
from ensemble_distill.models.translation import TranslationModel, fit_sources


class Decoded(NamedTuple):
    tokens: list[list[int]]  # per sentence: the best hypothesis, without BOS and EOS
    scores: Tensor  # [B] its summed log-probability divided by the length penalty


def length_penalty(length, alpha: float):
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def beam_search(models: Sequence[TranslationModel], src: Tensor, *, beam_size: int = 4, alpha: float = 0.6,
                max_len: int | None = None, cache: bool = True) -> Decoded:
    """Best translation of each source row of src [B, S] (ids then EOS, right-padded) under the mean of the models,
    which are put in eval mode. Each sentence's output has at most output_length_caps(src, positions, max_len)
    tokens, EOS included: max_len for every sentence if given, else 1.5 x its own source length + 10; never more
    than the models' max_positions. Sources longer than max_positions are cut to fit, with a warning. The defaults
    beam 4 and alpha 0.6 are Vaswani et al.'s. cache=False decodes by full recompute (the reference).

    Raises:
        UserError: beam_size or max_len below 1.
    """
    batch_size, k, device = src.shape[0], beam_size, src.device
    if k < 1 or (max_len is not None and max_len < 1):
        raise UserError(f"beam search needs beam_size >= 1 and max_len >= 1, got {beam_size} and {max_len}")
    positions = min(model.config.max_positions for model in models)
    src, n_cut = fit_sources(src, positions)
    if n_cut:
        warnings.warn(f"beam search: {n_cut} of {batch_size} sources are longer than the model's {positions} "
                      f"positions; each was cut to its first {positions - 1} tokens and EOS", stacklevel=2)
    caps = output_length_caps(src, positions, max_len)
    steps = max(caps.tolist(), default=0)
    for model in models:
        model.eval()
    decoders = [model.start_decoding(src, k, cache=cache) for model in models]
    sentences = torch.arange(batch_size, device=device)

    prefixes = torch.full((batch_size * k, 1), BOS_ID, device=device)  # live hypotheses, k consecutive rows a sentence
    scores = torch.full((batch_size, k), -math.inf, device=device)
    scores[:, 0] = 0.0  # all beams start identical: let only one of them extend at the first step
    best_score = torch.full((batch_size,), -math.inf, device=device)
    best_tokens = torch.full((batch_size, steps + 1), PAD_ID, device=device)
    # The most a live hypothesis can still finish with is its score / lp(cap) (see the module docstring).
    bound_scale = 1 / length_penalty(caps.double(), alpha).float()  # [B]
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)

    for step in range(steps):
        log_probs = ensemble_log_probs(decoders, prefixes[:, -1]).view(batch_size, k, -1)
        log_probs[..., [PAD_ID, BOS_ID]] = -math.inf
        vocab_size = log_probs.shape[-1]
        out_of_room = caps == step + 1  # [B] sentences at their cap: EOS is their only extension
        if out_of_room.any():  # the [B, K, V] pass only at steps where some sentence reaches its cap
            log_probs.masked_fill_(out_of_room[:, None, None] & (torch.arange(vocab_size, device=device) != EOS_ID),
                                   -math.inf)
        top_scores, top_ids = (scores[:, :, None] + log_probs).view(batch_size, -1).topk(2 * k, dim=1)
        top_beams, top_tokens = top_ids // vocab_size, top_ids % vocab_size

        # Finished: EOS extensions ranked within the top K, of sentences still searching; keep the best per sentence.
        is_eos = top_tokens == EOS_ID
        finishing = is_eos & (torch.arange(2 * k, device=device) < k) & (top_scores > -math.inf) & ~done[:, None]
        normalised = torch.where(finishing, top_scores / length_penalty(step + 1, alpha), -math.inf)
        candidate_score, candidate = normalised.max(dim=1)
        improves = candidate_score > best_score
        best_score = torch.where(improves, candidate_score, best_score)
        candidate_prefix = prefixes[sentences * k + top_beams[sentences, candidate]]
        best_tokens[improves, : step + 1] = candidate_prefix[improves]
        best_tokens[improves, step + 1] = EOS_ID

        # Live: the K best extensions that are not EOS (at most K of the 2K are EOS, so K remain), best first.
        scores, live = torch.where(is_eos, -math.inf, top_scores).topk(k, dim=1)
        # >=: a later hypothesis could at best tie, and a tie does not replace the best (improves is strict).
        beaten = best_score >= scores[:, 0] * bound_scale
        done |= out_of_room | (beaten if k > 1 else finishing.any(dim=1))  # K = 1: greedy, the first EOS ends it
        if done.all():
            break

        parents = (sentences[:, None] * k + top_beams.gather(1, live)).view(-1)
        prefixes = torch.cat([prefixes[parents], top_tokens.gather(1, live).view(-1, 1)], dim=1)
        for decoder in decoders:
            decoder.reorder(parents)

    tokens = [row[1 : row.index(EOS_ID)] for row in best_tokens.tolist()]
    return Decoded(tokens, best_score)


def output_length_caps(src: Tensor, positions: int, max_len: int | None = None) -> Tensor:
    """The most tokens (EOS included) each translation of src [B, S] (ids then EOS, right-padded) may have, long [B]:
    max_len if given, else floor(1.5 x n) + 10 with n the row's own tokens (EOS included, padding not); never
    more than positions, so the longest decoder input (BOS and all but the last token) fits. fairseq's
    max_len_a x n + max_len_b takes n of the batch's longest source; a row's own n keeps a translation
    independent of the sentences batched with it."""
    if max_len is not None:
        return torch.full((src.shape[0],), min(max_len, positions), dtype=torch.long, device=src.device)
    lengths = (src != PAD_ID).sum(dim=1)
    return (lengths * 3 // 2 + 10).clamp(max=positions)


def ensemble_log_probs(decoders, tokens: Tensor) -> Tensor:
    """log of the mean of the members' next-token probabilities [N, V] after each hypothesis, extended by tokens
    [N], computed stably as logsumexp - log M."""
    if len(decoders) == 1:  # the member's own: logsumexp over one would cost a fifth of a single model's search
        return decoders[0].step(tokens)
    member_log_probs = torch.stack([decoder.step(tokens) for decoder in decoders])
    return member_log_probs.logsumexp(dim=0) - math.log(len(decoders))


def greedy_decode(models: Sequence[TranslationModel], src: Tensor, max_len: int | None = None) -> Decoded:
    """The argmax token at every step until EOS: beam search with one beam."""
    return beam_search(models, src, beam_size=1, alpha=0.0, max_len=max_len)
