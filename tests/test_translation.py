import math

import pytest
import torch

from ensemble_distill.data.vocab import BOS_ID, EOS_ID, PAD_ID
from ensemble_distill.errors import UserError
from ensemble_distill.models.translation import (
    TransformerConfig,
    TranslationModel,
    collate,
    inverse_sqrt_factor,
    inverse_sqrt_schedule,
    label_smoothed_loss,
    sinusoidal_positions,
)


def random_batch(seed=0, vocab_size=20):
    g = torch.Generator().manual_seed(seed)
    lengths = [(5, 4), (2, 6), (7, 1)]  # different source and target lengths, so both sides carry padding
    return collate([(torch.randint(4, vocab_size, (s,), generator=g).tolist(),
                     torch.randint(4, vocab_size, (t,), generator=g).tolist()) for s, t in lengths])


def test_collate_adds_eos_to_source_bos_to_decoder_input_and_pads_right():
    batch = collate([([5, 6], [7]), ([8], [9, 10, 11])])
    assert batch.src.tolist() == [[5, 6, EOS_ID], [8, EOS_ID, PAD_ID]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 7, PAD_ID, PAD_ID], [BOS_ID, 9, 10, 11]]
    assert batch.tgt_out.tolist() == [[7, EOS_ID, PAD_ID, PAD_ID], [9, 10, 11, EOS_ID]]
    assert batch.n_target_tokens == 6


def test_teacher_forced_distributions_equal_step_by_step_decoding():
    torch.manual_seed(0)
    model = TranslationModel(TransformerConfig.preset("tiny", 20, dropout=0.3, n_decoder_layers=2)).eval()
    batch = random_batch()
    teacher_forced = model.log_probs_teacher_forced(batch.src, batch.tgt_in)
    assert teacher_forced.shape == (3, batch.tgt_in.shape[1], 20)
    memory, src_pad = model.encode(batch.src)
    real = batch.tgt_out != PAD_ID
    for t in range(batch.tgt_in.shape[1]):
        step = model.decode_step(memory, src_pad, batch.tgt_in[:, : t + 1])
        torch.testing.assert_close(step[real[:, t]], teacher_forced[real[:, t], t], atol=1e-5, rtol=0)
    # ...and each sentence alone, without padding, gives the same distributions as in the padded batch.
    for i in range(3):
        n_src, n_tgt = int((batch.src[i] != PAD_ID).sum()), int(real[i].sum())
        alone = model.log_probs_teacher_forced(batch.src[i : i + 1, :n_src], batch.tgt_in[i : i + 1, :n_tgt])
        torch.testing.assert_close(alone[0], teacher_forced[i, :n_tgt], atol=1e-5, rtol=0)
    # Asking for the real positions only gives those rows, in row-major order.
    torch.testing.assert_close(model.log_probs_teacher_forced(batch.src, batch.tgt_in, real), teacher_forced[real])


@pytest.mark.parametrize("norm_first", [True, False])
def test_cached_decoder_steps_equal_teacher_forcing_of_the_reordered_prefixes(norm_first):
    # Two hypotheses a sentence, each step continuing a random one of its sentence's hypotheses with a random token:
    # the cached keys and values must follow their hypotheses, and each step's distribution must be that of torch's
    # own layers run over the whole prefix. Padded sources, two decoder layers, both layer orders.
    torch.manual_seed(0)
    model = TranslationModel(TransformerConfig.preset("tiny", 20, n_decoder_layers=2, norm_first=norm_first)).eval()
    src, beam = random_batch().src, 2
    g = torch.Generator().manual_seed(1)
    decoder = model.start_decoding(src, beam_size=beam)
    prefixes = torch.full((3 * beam, 1), BOS_ID)
    for _ in range(6):
        expected = model.log_probs_teacher_forced(src.repeat_interleave(beam, dim=0), prefixes)[:, -1]
        torch.testing.assert_close(decoder.step(prefixes[:, -1]), expected, atol=1e-5, rtol=0)
        parents = torch.arange(3).repeat_interleave(beam) * beam + torch.randint(0, beam, (3 * beam,), generator=g)
        decoder.reorder(parents)
        prefixes = torch.cat([prefixes[parents], torch.randint(4, 20, (3 * beam, 1), generator=g)], dim=1)


def test_start_decoding_refuses_training_mode_and_empty_beams_and_steps_stop_at_the_positions():
    torch.manual_seed(0)
    model = TranslationModel(TransformerConfig.preset("tiny", 20, max_positions=3))
    src = torch.tensor([[5, EOS_ID]])
    with pytest.raises(ValueError, match="eval mode"):
        model.start_decoding(src)
    model.eval()
    with pytest.raises(ValueError, match="beam_size must be at least 1, got 0"):
        model.start_decoding(src, beam_size=0)
    decoder = model.start_decoding(src)
    for token in (BOS_ID, 5, 6):
        decoder.step(torch.tensor([token]))
    with pytest.raises(UserError, match="sequence of 4 tokens is longer than the model's max_positions"):
        decoder.step(torch.tensor([7]))


def test_dropout_acts_only_in_training_mode():
    torch.manual_seed(0)
    model = TranslationModel(TransformerConfig.preset("tiny", 20, dropout=0.3))
    batch = random_batch()
    assert not torch.allclose(model(batch.src, batch.tgt_in), model(batch.src, batch.tgt_in))
    model.eval()
    assert torch.equal(model(batch.src, batch.tgt_in), model(batch.src, batch.tgt_in))


def test_one_matrix_is_source_and_target_embedding_and_output_projection():
    torch.manual_seed(0)
    model = TranslationModel(TransformerConfig.preset("tiny", 20)).eval()
    vocab_sized = [name for name, p in model.named_parameters() if p.shape[0] == 20]
    assert vocab_sized == ["embedding.weight"]
    batch = random_batch()
    memory, src_pad = model.encode(batch.src)
    states = model.decoder_states(memory, src_pad, batch.tgt_in)
    torch.testing.assert_close(model(batch.src, batch.tgt_in), states @ model.embedding.weight.T)
    assert torch.all(model.embedding.weight[PAD_ID] == 0)


def test_base_preset_has_transformer_base_size():
    # Vaswani et al. (2017), Table 3: the base model has 65M parameters with its 37K joint BPE vocabulary.
    with torch.device("meta"):
        model = TranslationModel(TransformerConfig.preset("base", vocab_size=37000))
    n_parameters = sum(p.numel() for p in model.parameters())
    assert 60e6 < n_parameters < 66e6
    assert (model.config.d_model, model.config.n_heads, model.config.d_ff) == (512, 8, 2048)
    assert len(model.encoder.layers) == len(model.decoder.layers) == 6


def test_sinusoidal_positions_by_hand():
    table = sinusoidal_positions(3, 4)
    expected = [[math.sin(p), math.cos(p), math.sin(p / 100), math.cos(p / 100)] for p in range(3)]
    torch.testing.assert_close(table, torch.tensor(expected))


def test_config_errors_name_the_key():
    with pytest.raises(UserError, match="d_model .* divisible by n_heads"):
        TransformerConfig.preset("tiny", 20, n_heads=5)
    with pytest.raises(UserError, match="dropout"):
        TransformerConfig.preset("tiny", 20, dropout=1.5)
    with pytest.raises(UserError, match="vocab_size must be at least 1"):
        TransformerConfig.preset("tiny", 0)
    with pytest.raises(UserError, match="preset must be one of base, small, tiny"):
        TransformerConfig.preset("huge", 20)
    model = TranslationModel(TransformerConfig.preset("tiny", 20, max_positions=4))
    with pytest.raises(UserError, match="longer than the model's max_positions"):
        model(torch.full((1, 5), 4), torch.full((1, 2), 4))


def test_label_smoothed_loss_by_hand_on_three_classes():
    # One real position (logits 1, 2, 3; gold class 2) and one padding position (gold id 0) that must not count.
    logits = torch.tensor([[[1.0, 2.0, 3.0], [5.0, -1.0, 0.0]]])
    targets = torch.tensor([[2, PAD_ID]])
    log_z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    log_p = [1 - log_z, 2 - log_z, 3 - log_z]
    assert label_smoothed_loss(logits, targets).item() == pytest.approx(-log_p[2])
    # λ = 0.1: target distribution 0.9 one-hot + 0.1 uniform over the 3 classes.
    expected = -(0.9 + 0.1 / 3) * log_p[2] - (0.1 / 3) * (log_p[0] + log_p[1])
    assert label_smoothed_loss(logits, targets, smoothing=0.1).item() == pytest.approx(expected)


def test_inverse_sqrt_factor_by_hand():
    factors = [inverse_sqrt_factor(step, warmup_steps=4) for step in range(8)]
    expected = [0.25, 0.5, 0.75, 1.0, math.sqrt(4 / 5), math.sqrt(4 / 6), math.sqrt(4 / 7), math.sqrt(4 / 8)]
    assert factors == pytest.approx(expected)
    # Vaswani et al.'s rate d^-0.5 min(n^-0.5, n w^-1.5) for update n = step + 1, with d = 512, w = 4000.
    d, w = 512, 4000
    for n in (1, 100, 3999, 4000, 4001, 100_000):
        vaswani = d**-0.5 * min(n**-0.5, n * w**-1.5)
        assert (d * w) ** -0.5 * inverse_sqrt_factor(n - 1, w) == pytest.approx(vaswani)


def test_inverse_sqrt_schedule_sets_the_optimiser_rate():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.01)
    scheduler = inverse_sqrt_schedule(optimizer, warmup_steps=2)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.005, 0.01, 0.01 * math.sqrt(2 / 3), 0.01 * math.sqrt(2 / 4)])
