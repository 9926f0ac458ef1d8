import copy
import dataclasses
import itertools
import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from ensemble_distill.data.vocab import BOS_ID, EOS_ID, PAD_ID
from ensemble_distill.errors import UserError
from ensemble_distill.models.beam_search import beam_search, greedy_decode, length_penalty, output_length_caps
from ensemble_distill.models.translation import (
    TransformerConfig,
    TranslationModel,
    collate,
    fit_sources,
    fit_to_positions,
    label_smoothed_loss,
)

COPY, REVERSE = 10, 11  # the first source token says which task; symbols are 4..9; vocabulary of 12



def toy_examples(generator, n):
    """(source, target) pairs: COPY x -> x, or REVERSE x -> reversed x, for random x of 3..6 symbols."""
    examples = []
    for length, task in zip(torch.randint(3, 7, (n,), generator=generator).tolist(),
                            torch.randint(0, 2, (n,), generator=generator).tolist()):
        x = torch.randint(4, 10, (length,), generator=generator).tolist()
        examples.append(([COPY, *x], x) if task == 0 else ([REVERSE, *x], x[::-1]))
    return examples


def train_toy(steps, batch_size, seed=0, **config):
    """A tiny model trained on the toy tasks for `steps` Adam steps (weights from `seed`, data from `seed` + 1)."""
    torch.manual_seed(seed)
    data = torch.Generator().manual_seed(seed + 1)
    model = TranslationModel(TransformerConfig.preset("tiny", vocab_size=12, **config))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.98))
    for _ in range(steps):
        batch = collate(toy_examples(data, batch_size))
        loss = label_smoothed_loss(model(batch.src, batch.tgt_in), batch.tgt_out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def toy_model():
    return train_toy(steps=175, batch_size=256)


@pytest.fixture(scope="module")
def held_out():
    return toy_examples(torch.Generator().manual_seed(99), 200)


@pytest.mark.parametrize("decode", [lambda m, src: beam_search([m], src, beam_size=4),
                                    lambda m, src: greedy_decode([m], src)], ids=["beam", "greedy"])
def test_trained_tiny_model_copies_and_reverses(toy_model, held_out, decode):
    decoded = decode(toy_model, collate(held_out).src)
    correct = [tokens == target for tokens, (_, target) in zip(decoded.tokens, held_out)]
    assert sum(correct) >= 196  # of 200 unseen-seed examples; the trained model gets ~199
    assert decoded.tokens[:3] == [target for _, target in held_out[:3]]


def test_ensemble_of_identical_members_decodes_like_one_member(toy_model, held_out):
    src = collate(held_out[:50]).src
    one = beam_search([toy_model], src, beam_size=3)
    three = beam_search([toy_model, copy.deepcopy(toy_model), copy.deepcopy(toy_model)], src, beam_size=3)
    assert three.tokens == one.tokens
    torch.testing.assert_close(three.scores, one.scores, atol=1e-5, rtol=0)


def test_a_padded_batch_decodes_like_each_sentence_alone(toy_model, held_out):
    examples = sorted(held_out[:8], key=lambda e: len(e[0]))  # varied lengths: all but the longest are padded
    batched = beam_search([toy_model], collate(examples).src, beam_size=3, max_len=8)
    for i, example in enumerate(examples):
        alone = beam_search([toy_model], collate([example]).src, beam_size=3, max_len=8)
        assert alone.tokens[0] == batched.tokens[i]
        assert alone.scores[0].item() == pytest.approx(batched.scores[i].item(), abs=1e-5)


def test_output_length_caps_by_hand():
    src = collate([([4, 5], []), ([4, 5, 6, 7, 8, 9], []), ([4] * 40, [])]).src  # 3, 7 and 41 tokens with EOS
    assert output_length_caps(src, positions=64).tolist() == [14, 20, 64]  # 1.5 x 3 + 10 = 14.5, 1.5 x 7 + 10 = 20.5
    assert output_length_caps(src, positions=16).tolist() == [14, 16, 16]
    assert output_length_caps(src, positions=16, max_len=5).tolist() == [5, 5, 5]
    assert output_length_caps(src, positions=4, max_len=5).tolist() == [4, 4, 4]


def test_a_sentence_at_its_length_cap_decodes_alike_alone_and_beside_longer_sources():
    # Once the cap was the padded batch's (1.5 x its longest source + 10), so a sentence that never chose EOS came
    # back 13 tokens long alone and 28 beside a 12-token source. Never-stopping Markov tables: exact scores.
    models = [MarkovModel(seed=2, n_sentences=4, max_len=30, eos_bias=-8.0),
              MarkovModel(seed=3, n_sentences=4, max_len=30, eos_bias=-8.0)]
    # Sentences 1..3 (0 is the padding id, which the cap does not count): caps 13, 28 and 20 tokens.
    sources = {1: [1, EOS_ID], 2: [2, *[4] * 10, EOS_ID], 3: [3, *[4] * 5, EOS_ID]}
    batch = torch.tensor([row + [PAD_ID] * (12 - len(row)) for row in sources.values()])
    for beam_size in (1, 3):
        batched = beam_search(models, batch, beam_size=beam_size, alpha=0.6)
        for i, ((sentence, row), cap) in enumerate(zip(sources.items(), (13, 28, 20))):
            alone = beam_search(models, torch.tensor([row]), beam_size=beam_size, alpha=0.6)
            tokens, score = reference_beam_search(models, sentence, beam_size, 0.6, max_len=cap)
            assert batched.tokens[i] == alone.tokens[0] == tokens and len(tokens) == cap - 1
            assert batched.scores[i].item() == alone.scores[0].item() == pytest.approx(score, abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_an_untrained_transformer_at_its_cap_decodes_alike_alone_and_in_a_batch(beam_size):
    # Padding, attention masks and the ensemble's mean: untrained models (seeds 5 and 7) that never pick EOS here,
    # so every output runs to its cap.
    def untrained(seed):
        torch.manual_seed(seed)
        return TranslationModel(TransformerConfig.preset("tiny", vocab_size=12, max_positions=64)).eval()

    short, long = [COPY, 4, 5], long_source(31)
    for models in ([untrained(5)], [untrained(5), untrained(7)]):
        batched = beam_search(models, collate([(short, []), (long, [])]).src, beam_size=beam_size)
        alone = beam_search(models, collate([(short, [])]).src, beam_size=beam_size)
        assert [len(t) for t in batched.tokens] == [15, 57]  # caps 1.5 x 4 + 10 = 16 and 1.5 x 32 + 10 = 58
        assert batched.tokens[0] == alone.tokens[0]
        torch.testing.assert_close(batched.scores[0], alone.scores[0], atol=1e-5, rtol=0)


class MarkovModel(torch.nn.Module):
    """A stand-in translation model: the next-token distribution depends only on the sentence, the step and the
    previous token, through a random table, so any output's probability can be computed directly. src[:, 0] is the
    sentence's index into the table."""

    def __init__(self, seed, n_sentences=3, max_len=6, vocab_size=6, eos_bias=0.0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        logits = 2 * torch.randn(n_sentences, max_len, vocab_size, vocab_size, generator=generator)
        logits[..., [PAD_ID, BOS_ID]] = -math.inf
        logits[..., EOS_ID] += eos_bias
        self.table = logits.log_softmax(dim=-1)  # [sentence, step, previous token, next token]
        self.config = SimpleNamespace(max_positions=max_len)  # the table has a row for prefixes of 1..max_len

    def start_decoding(self, src, beam_size, cache=True):
        return MarkovDecoder(self.table, src[:, 0].repeat_interleave(beam_size))

    def next_log_probs(self, sentence, prefix):
        """log p of the token after prefix (BOS first) [V]."""
        return self.table[sentence, len(prefix) - 1, prefix[-1]]

    def token_log_probs(self, sentence, target):
        """log p of each token of target (EOS included) given the tokens before it."""
        tokens = [BOS_ID, *target, EOS_ID]
        return torch.stack([self.table[sentence, t, tokens[t], tokens[t + 1]] for t in range(len(tokens) - 1)])


class MarkovDecoder:
    """The decoder interface of TranslationModel.start_decoding for a MarkovModel: each row's sentence follows it."""

    def __init__(self, table, sentences):
        self.table, self.sentences, self.length = table, sentences, 0

    def step(self, tokens):
        self.length += 1
        return self.table[self.sentences, self.length - 1, tokens]

    def reorder(self, parents):
        self.sentences = self.sentences[parents]


def markov_sources(n):
    return torch.tensor([[sentence, EOS_ID] for sentence in range(n)])


def brute_force_best(models, sentence, max_len, alpha):
    """The best output over ALL outputs of up to max_len tokens (EOS included), token probabilities averaged."""
    real_tokens = [1, 4, 5]  # every id but pad, bos and eos, in a vocabulary of 6
    best = (-math.inf, None)
    for n in range(max_len):
        for target in itertools.product(real_tokens, repeat=n):
            member_log_probs = torch.stack([m.token_log_probs(sentence, target) for m in models])
            log_mean_probs = torch.log(member_log_probs.exp().mean(dim=0))
            best = max(best, (log_mean_probs.sum().item() / length_penalty(n + 1, alpha), list(target)))
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
@pytest.mark.parametrize("beam_size, max_len", [(12, 3), (36, 4)])
def test_wide_beam_finds_the_brute_force_best_output_of_the_mean_distribution(alpha, beam_size, max_len):
    # Beam 12 with at most 3 tokens (36 with 4) keeps every prefix and ranks every EOS extension within the top K
    # (at most 9 + 3 candidates a step; 27 + 9): the search is exhaustive and must agree with brute force.
    models = [MarkovModel(seed=1), MarkovModel(seed=101)]
    decoded = beam_search(models, markov_sources(3), beam_size=beam_size, alpha=alpha, max_len=max_len)
    for sentence in range(3):
        score, target = brute_force_best(models, sentence, max_len=max_len, alpha=alpha)
        assert decoded.tokens[sentence] == target
        assert decoded.scores[sentence].item() == pytest.approx(score, abs=1e-5)


def test_members_are_averaged_inside_the_beam_not_after():
    # For sentence 2 of these tables the mean distribution's best output is neither member's own best output, so a
    # search that decoded the members separately and then picked among their outputs could not find it.
    models = [MarkovModel(seed=1), MarkovModel(seed=101)]
    decoded = beam_search(models, markov_sources(3), beam_size=12, alpha=0.0, max_len=3)
    separate = [beam_search([m], markov_sources(3), beam_size=12, alpha=0.0, max_len=3).tokens[2] for m in models]
    assert separate == [[5, 1], [4]]
    assert decoded.tokens[2] == [5] == brute_force_best(models, sentence=2, max_len=3, alpha=0.0)[1]


def reference_beam_search(models, sentence, beam_size, alpha, max_len, stop="bound"):
    """The same search, one hypothesis at a time in plain Python: an independent check of the batched bookkeeping.
    stop: "bound" (beam_search's rule: done once the best finished score >= the best live summed log-probability
    / lp(max_len); beam 1 at the first EOS), "cap" (never early: search to max_len), or "k_finished" (fairseq's
    rule, done once beam_size hypotheses have finished: the rule beam_search followed before, kept here to show
    where it fails)."""
    beams, finished = [(0.0, [BOS_ID])], []
    for step in range(max_len):
        candidates = []
        for score, prefix in beams:
            member = torch.stack([m.next_log_probs(sentence, prefix) for m in models])
            log_probs = torch.log(member.exp().mean(dim=0))
            for token, log_prob in enumerate(log_probs.tolist()):
                allowed = token == EOS_ID if step == max_len - 1 else token not in (PAD_ID, BOS_ID)
                if allowed and log_prob > -math.inf:
                    candidates.append((score + log_prob, prefix + [token]))
        top = sorted(candidates, key=lambda c: -c[0])[: 2 * beam_size]
        new = [(s / length_penalty(step + 1, alpha), p) for rank, (s, p) in enumerate(top)
               if p[-1] == EOS_ID and rank < beam_size]
        finished += new
        beams = [(s, p) for s, p in top if p[-1] != EOS_ID][:beam_size]
        if stop == "k_finished" and len(finished) >= beam_size:
            break
        if stop == "bound" and beam_size == 1 and new:
            break
        if stop == "bound" and finished and beams and max(finished)[0] >= beams[0][0] / length_penalty(max_len, alpha):
            break
    score, best = max(finished)
    return best[1:-1], score


@pytest.mark.parametrize("beam_size, alpha", [(1, 0.0), (2, 0.6), (3, 1.0), (5, 0.6)])
def test_batched_search_matches_a_one_hypothesis_at_a_time_reference(beam_size, alpha):
    models = [MarkovModel(seed=2), MarkovModel(seed=3), MarkovModel(seed=4)]
    decoded = beam_search(models, markov_sources(3), beam_size=beam_size, alpha=alpha, max_len=6)
    for sentence in range(3):
        tokens, score = reference_beam_search(models, sentence, beam_size, alpha, max_len=6)
        assert decoded.tokens[sentence] == tokens
        assert decoded.scores[sentence].item() == pytest.approx(score, abs=1e-5)


# When a sentence is done: the best finished hypothesis against what the live ones can still reach


@pytest.mark.parametrize("beam_size", [2, 3, 5])
@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_stopping_early_returns_what_searching_to_the_cap_returns(beam_size, alpha):
    # The bound is exact: no hypothesis the beam would find later can beat the answer. (fairseq's rule, done once
    # K have finished, returns something else for 0 to 2 of these sentences a setting: random tables seldom make it
    # fail; TrialModel below makes it fail by construction.)
    models = [MarkovModel(seed=6, n_sentences=30), MarkovModel(seed=7, n_sentences=30)]
    decoded = beam_search(models, markov_sources(30), beam_size=beam_size, alpha=alpha, max_len=6)
    for sentence in range(30):
        tokens, score = reference_beam_search(models, sentence, beam_size, alpha, max_len=6, stop="cap")
        assert reference_beam_search(models, sentence, beam_size, alpha, max_len=6) == (tokens, score)
        assert decoded.tokens[sentence] == tokens
        assert decoded.scores[sentence].item() == pytest.approx(score, abs=1e-5)


X, SHORT = 4, [5, 6, 7, 8]  # the greedy path's word; words that each end a short, worse translation


class TrialModel(torch.nn.Module):
    """The trial's failure in miniature (README: beam 4 gave "A young girl in a pool." at -3.78 where greedy gave
    "A young girl is swimming in a pool." at -3.19): after BOS, X has p 0.55 and each SHORT word 0.1; a SHORT word
    is followed by EOS (0.9), X by X (0.9) until five X, then EOS (0.99). Greedy reads X X X X X EOS, log p -1.03;
    the short hypotheses finish at step 2 with -2.41, before it, and under fairseq's rule K of them ended the search.
    Vocabulary of 9; the source is ignored."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(max_positions=64)

    def next_log_probs(self, sentence, prefix):
        """log p of the token after prefix (BOS first) [9]."""
        words = tuple(prefix[1:])
        if not words:
            probs = {X: 0.55, EOS_ID: 0.05, **{w: 0.1 for w in SHORT}}
        elif words == (X,) * len(words) and len(words) < 5:
            probs = {X: 0.9, EOS_ID: 0.1}
        elif len(words) == 1:  # a SHORT word
            probs = {EOS_ID: 0.9, X: 0.1}
        else:
            probs = {EOS_ID: 0.99, X: 0.01}
        logits = torch.full((9,), math.log(1e-6))
        for token, p in probs.items():
            logits[token] = math.log(p)
        logits[[PAD_ID, BOS_ID]] = -math.inf
        return logits.log_softmax(dim=0)

    def start_decoding(self, src, beam_size, cache=True):
        return PrefixDecoder(self, src.shape[0] * beam_size)


class PrefixDecoder:
    """The decoder interface of TranslationModel.start_decoding for a model that sees each row's whole prefix."""

    def __init__(self, model, n_rows):
        self.model, self.prefixes = model, [[] for _ in range(n_rows)]

    def step(self, tokens):
        self.prefixes = [p + [t] for p, t in zip(self.prefixes, tokens.tolist())]  # BOS first
        return torch.stack([self.model.next_log_probs(0, p) for p in self.prefixes])

    def reorder(self, parents):
        self.prefixes = [list(self.prefixes[i]) for i in parents.tolist()]


def brute_force_trial_best(model, max_len, alpha):
    """The best output of up to max_len tokens (EOS included) over every output of the words X and SHORT."""
    best = (-math.inf, None)

    def visit(prefix, log_prob):
        nonlocal best
        next_log_probs = model.next_log_probs(0, prefix).tolist()
        ended = log_prob + next_log_probs[EOS_ID]
        best = max(best, (ended / length_penalty(len(prefix), alpha), prefix[1:]))
        if len(prefix) < max_len:
            for word in (X, *SHORT):
                visit(prefix + [word], log_prob + next_log_probs[word])

    visit([BOS_ID], 0.0)
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.6])
@pytest.mark.parametrize("beam_size", [2, 4])
def test_a_beam_does_not_stop_on_short_hypotheses_while_a_better_one_is_live(beam_size, alpha):
    model = TrialModel()
    src = torch.tensor([[X, EOS_ID]])
    greedy = greedy_decode([model], src, max_len=8)
    decoded = beam_search([model], src, beam_size=beam_size, alpha=alpha, max_len=8)
    score, best = brute_force_trial_best(model, max_len=8, alpha=alpha)
    assert greedy.tokens[0] == best == [X] * 5
    assert decoded.tokens[0] == best and decoded.scores[0].item() == pytest.approx(score, abs=1e-5)
    greedy_log_prob = sum(model.next_log_probs(0, [BOS_ID, *[X] * n])[X if n < 5 else EOS_ID] for n in range(6))
    assert decoded.scores[0].item() >= greedy_log_prob / length_penalty(6, alpha) - 1e-6
    # ...where fairseq's rule returned a SHORT word, worse than greedy by the search's own score.
    old_tokens, old_score = reference_beam_search([model], 0, beam_size, alpha, max_len=8, stop="k_finished")
    assert old_tokens in [[word] for word in SHORT] and old_score < score - 0.5


def test_beam_1_is_greedy_whatever_the_length_penalty():
    # A bound at the cap would let one beam look past its first EOS when alpha > 0; beam 1 stays greedy decoding.
    models = [MarkovModel(seed=8, n_sentences=20)]
    greedy = greedy_decode(models, markov_sources(20), max_len=6)
    for alpha in (0.6, 2.0):
        assert beam_search(models, markov_sources(20), beam_size=1, alpha=alpha, max_len=6).tokens == greedy.tokens


def test_greedy_takes_the_argmax_token_until_eos():
    model = MarkovModel(seed=5)
    decoded = greedy_decode([model], markov_sources(3), max_len=6)
    for sentence in range(3):
        prefix = [BOS_ID]
        while prefix[-1] != EOS_ID and len(prefix) <= 6:
            next_token = int(model.table[sentence, len(prefix) - 1, prefix[-1]].argmax())
            prefix.append(next_token if len(prefix) < 6 else EOS_ID)
        assert decoded.tokens[sentence] == prefix[1:-1]


def test_max_len_forces_eos(toy_model, held_out):
    decoded = beam_search([toy_model], collate(held_out[:20]).src, beam_size=4, max_len=2)
    assert all(len(tokens) <= 1 for tokens in decoded.tokens)
    assert torch.isfinite(decoded.scores).all()
    with pytest.raises(UserError, match="beam_size >= 1"):
        beam_search([toy_model], collate(held_out[:2]).src, beam_size=0)


# Incremental decoding: the cached search against full recompute


@pytest.fixture(scope="module")
def systems(toy_model):
    """Models and ensembles whose hypotheses end at many lengths, with both layer orders and 1 or 2 decoder layers."""
    pre_norm = train_toy(steps=20, batch_size=64, seed=3, n_decoder_layers=2)  # barely trained: unsure where to stop
    post_norm = train_toy(steps=40, batch_size=64, seed=3, n_decoder_layers=2, norm_first=False)
    torch.manual_seed(4)  # untrained, and 12 positions: decodes until the positions run out
    random = TranslationModel(TransformerConfig.preset("tiny", vocab_size=12, n_decoder_layers=2, max_positions=12))
    return {"trained": [toy_model], "pre-norm": [pre_norm], "post-norm": [post_norm], "random": [random.eval()],
            "ensemble of 3": [toy_model, pre_norm, post_norm], "ensemble with random": [random, post_norm]}


@pytest.mark.parametrize("beam_size", [1, 2, 4])
@pytest.mark.parametrize("system", ["trained", "pre-norm", "post-norm", "random", "ensemble of 3",
                                    "ensemble with random"])
def test_cached_search_finds_the_full_recompute_hypotheses(systems, held_out, system, beam_size):
    models = systems[system]
    batch = collate(held_out[:12]).src  # 3 to 7 tokens: all but the longest rows padded
    for src in (batch, batch[:1, : int((batch[0] != PAD_ID).sum())]):  # ...and one sentence alone, unpadded
        for max_len in (1, 4, None):  # None: 1.5 x each source + 10, capped at 12 positions with the random model
            cached = quiet(beam_search, models, src, beam_size=beam_size, max_len=max_len)
            full = quiet(beam_search, models, src, beam_size=beam_size, max_len=max_len, cache=False)
            assert cached.tokens == full.tokens
            torch.testing.assert_close(cached.scores, full.scores, atol=1e-5, rtol=0)


def test_the_systems_compared_end_at_many_lengths(systems, held_out):
    # What makes the comparison above a test of the cache: beams that finish at different steps (so finished
    # hypotheses are set aside while others grow), and searches cut at the positions.
    src = collate(held_out[:12]).src
    lengths = {name: {len(t) for t in beam_search(models, src, beam_size=4).tokens} for name, models in systems.items()}
    assert len(lengths["pre-norm"]) >= 3 and len(lengths["post-norm"]) >= 3 and len(lengths["ensemble of 3"]) >= 3
    assert 11 in lengths["random"]  # 12 positions: BOS and 11 tokens, then EOS forced


# Inputs at and beyond the models' positions


def with_positions(model, max_positions):
    """The same weights in a model of max_positions positions (sinusoids are not weights)."""
    limited = TranslationModel(dataclasses.replace(model.config, max_positions=max_positions))
    limited.load_state_dict(model.state_dict())
    return limited.eval()


def quiet(fn, *args, **kwargs):
    """fn's result, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def long_source(n, seed=7):
    return [COPY, *torch.randint(4, 10, (n - 1,), generator=torch.Generator().manual_seed(seed)).tolist()]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_default_output_length_is_capped_at_the_models_positions(beam_size):
    # The default max_len of a 2-column source is 13 tokens; the tables have rows for prefixes of at most 6 tokens.
    # An unwilling-to-stop model must come back with its best 5-token hypothesis and a forced EOS, exactly as a
    # search told max_len = 6 (the one-hypothesis-at-a-time reference, with its own bookkeeping).
    models = [MarkovModel(seed=2, eos_bias=-8.0), MarkovModel(seed=3, eos_bias=-8.0)]
    decoded = quiet(beam_search, models, markov_sources(3), beam_size=beam_size, alpha=0.6)
    for sentence in range(3):
        tokens, score = reference_beam_search(models, sentence, beam_size, 0.6, max_len=6)
        assert decoded.tokens[sentence] == tokens and len(tokens) == 5
        assert decoded.scores[sentence].item() == pytest.approx(score, abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_sources_at_and_beyond_the_encoders_positions_decode(toy_model, beam_size):
    model = with_positions(toy_model, 16)
    at_limit, beyond = long_source(15), long_source(23)  # 16 and 24 tokens with EOS
    with pytest.warns(UserWarning, match="1 of 2 sources are longer than the model's 16 positions"):
        decoded = beam_search([model], collate([(beyond, []), (at_limit, [])]).src, beam_size=beam_size)
    assert all(len(tokens) + 1 <= 16 for tokens in decoded.tokens)  # EOS included
    # The long source decodes as its first 15 tokens and EOS; the one at the limit decodes as it is, unwarned.
    cut = quiet(beam_search, [toy_model], collate([(beyond[:15], [])]).src, beam_size=beam_size, max_len=16)
    alone = quiet(beam_search, [model], collate([(at_limit, [])]).src, beam_size=beam_size)
    assert decoded.tokens == [cut.tokens[0], alone.tokens[0]]
    torch.testing.assert_close(decoded.scores, torch.cat([cut.scores, alone.scores]), atol=1e-5, rtol=0)


def test_an_ensemble_takes_its_smallest_members_positions(toy_model):
    members = [toy_model, with_positions(toy_model, 12)]
    with pytest.warns(UserWarning, match="12 positions"):
        decoded = beam_search(members, collate([(long_source(30), [])]).src, beam_size=3)
    assert len(decoded.tokens[0]) + 1 <= 12


@pytest.mark.parametrize("beam_size", [1, 4])
def test_short_sources_decode_as_without_a_limit(toy_model, held_out, beam_size):
    src = collate(held_out[:40]).src  # at most 7 tokens: the default max_len of 20 is capped at 16
    for models in ([toy_model], [toy_model, copy.deepcopy(toy_model)]):
        limited = [with_positions(m, 16) for m in models]
        expected = beam_search(models, src, beam_size=beam_size)
        got = quiet(beam_search, limited, src, beam_size=beam_size)
        assert got.tokens == expected.tokens
        torch.testing.assert_close(got.scores, expected.scores, atol=1e-5, rtol=0)


def test_fit_sources_keeps_eos_and_fit_to_positions_cuts_both_sides():
    src = collate([([4, 5, 6, 7, 8], []), ([4, 5], []), ([4, 5, 6], [])]).src  # rows of 6, 3 and 4 tokens
    cut, n = fit_sources(src, 4)
    assert cut.tolist() == [[4, 5, 6, EOS_ID], [4, 5, EOS_ID, PAD_ID], [4, 5, 6, EOS_ID]] and n == 1
    assert fit_sources(src, 6) == (src, 0)
    pairs = [([4, 5, 6, 7], [8]), ([4], [5, 6, 7, 8, 9]), ([4, 5, 6], [7, 8, 9])]
    assert fit_to_positions(pairs, 4) == ([([4, 5, 6], [8]), ([4], [5, 6, 7]), ([4, 5, 6], [7, 8, 9])], 2)


def test_evaluation_splits_are_cut_to_the_models_positions(tmp_path):
    # A test sentence of 600 words (subwords) under a 512-position model: once the whole evaluation aborted in the
    # teacher-forced pass or the search. Now the split is cut to fit, once, with a warning that counts the pairs.
    from ensemble_distill.config import TranslationConfig
    from ensemble_distill.tasks.nmt import load_translation_data, new_model, teacher_forced

    rng = torch.Generator().manual_seed(0)
    words = "ant bee cat dog eel fox gnu hen".split()

    def line(n):
        return " ".join(words[i] for i in torch.randint(0, len(words), (n,), generator=rng).tolist())

    lines = {"train": [line(4) for _ in range(100)], "dev": [line(3)], "test": [line(3), line(600), line(5)]}
    cfg = TranslationConfig()
    for split, text in lines.items():
        for side in ("src", "tgt"):
            (tmp_path / f"{split}.{side}").write_text("\n".join(text) + "\n")
            setattr(cfg.data, f"{split}_{side}", str(tmp_path / f"{split}.{side}"))
    cfg.data.vocab_size, cfg.model.preset = 48, "tiny"
    with pytest.warns(UserWarning, match="test.src: 1 of 3 test pairs have a side longer than the model's 512"):
        data = load_translation_data(cfg, tmp_path, splits=("train", "test"), progress=False)
    test = data.splits["test"]
    assert [max(len(src), len(tgt)) for src, tgt in test.pairs] == [3, 511, 5]
    assert test.references == lines["test"]  # BLEU compares with what the file holds

    model = new_model(cfg, len(data.vocab), seed=0)
    gold = torch.cat([g for _, g in teacher_forced([model], test, batch_sentences=3)])
    assert len(gold) == test.n_positions() == 4 + 512 + 6
    # The cut source fills the encoder exactly (an untrained model would search all 512 steps: max_len keeps it short).
    src = collate(test.pairs).src
    assert src.shape[1] == 512 and len(quiet(beam_search, [model], src, beam_size=2, max_len=3).tokens) == 3
