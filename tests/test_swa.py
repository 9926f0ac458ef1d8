"""Stochastic weight averaging (training.StochasticWeightAveraging) in the training loop, for both tasks."""

import json

import numpy as np
import pytest
import torch

from ensemble_distill.config import Training
from ensemble_distill.training import StochasticWeightAveraging, train


def swa_run(run_dir, kill_after=None):
    """A linear model trained by SGD at 0.1 for 3 epochs of 2 updates, SWA from epoch 2 at 0.05. Returns the
    weights after each epoch, the rate of every update and the averaged weights."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    swa = StochasticWeightAveraging(model, optimizer, updates_per_epoch=2, start=2, swa_lr=0.05, anneal_updates=0)
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    y = torch.tensor([[1.0], [0.0]])
    after, rates = {}, []

    def loss_fn(m, batch):
        rates.append(optimizer.param_groups[0]["lr"])
        return ((m(x[batch]) - y[batch]) ** 2).mean(), 1

    def after_epoch(epoch):
        after[epoch] = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        if epoch == kill_after:
            raise KeyboardInterrupt

    cfg = Training(max_epochs=3, patience=5)
    train(model, lambda epoch: [[0], [1]], loss_fn, lambda m: 0.0, cfg, run_dir, False, after_epoch, optimizer, swa)
    assert swa.apply(model)
    return after, rates, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_swa_averages_the_epochs_from_its_start_at_the_swa_rate(tmp_path):
    after, rates, averaged = swa_run(tmp_path / "run")
    assert rates == [0.1, 0.1, 0.05, 0.05, 0.05, 0.05]  # SWALR without annealing: swa_lr from epoch 2's first update
    torch.testing.assert_close(averaged, (after[2] + after[3]) / 2)  # the uniform mean of epochs 2 and 3


def test_a_resumed_swa_run_averages_what_an_unbroken_one_does(tmp_path):
    _, _, straight = swa_run(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        swa_run(tmp_path / "killed", kill_after=2)
    _, rates, resumed = swa_run(tmp_path / "killed")
    assert rates == [0.05, 0.05]  # only epoch 3 again, at the SWA rate
    torch.testing.assert_close(resumed, straight, rtol=0, atol=0)


def test_swa_anneals_the_rate_to_swa_lr_by_cosine():
    """anneal_updates = 2 from lr 0.1 to 0.02: the cosine midpoint 0.06, then 0.02 (SWALR's formula by hand)."""
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    swa = StochasticWeightAveraging(model, optimizer, updates_per_epoch=10, start=1, swa_lr=0.02, anneal_updates=2)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(3):
        optimizer.step()
        swa.step()
        rates.append(optimizer.param_groups[0]["lr"])
    np.testing.assert_allclose(rates, [0.1, 0.06, 0.02, 0.02], rtol=1e-9)


def test_ner_members_trained_with_swa_are_loaded_averaged(tiny_encoder, conll_files, tmp_path):
    from test_tasks_ner import make_config

    from ensemble_distill.ensemble import train_members
    from ensemble_distill.runs import load_weights
    from ensemble_distill.tasks.ner import new_tagger

    cfg = make_config(tiny_encoder, conll_files, tmp_path, max_epochs=2, averaging="swa", swa_start=1,
                      swa_lr=1e-3)
    cfg.ensemble.members, cfg.ensemble.subset_sizes = 1, [1]
    run = train_members(cfg, tmp_path / "ens", progress=False)
    folder = tmp_path / "ens" / "members" / "member-0"
    result = json.loads((folder / "result.json").read_text())
    assert result["averaging"] == "swa" and result["weights"] == "model.pt"
    averaged, best = torch.load(folder / "model.pt"), torch.load(folder / "best.pt")
    assert any(not torch.equal(averaged[k], best[k]) for k in best)
    member = run.load(folder)
    saved = load_weights(folder, new_tagger(run.data, cfg, 0))
    for key, value in member.state_dict().items():
        assert torch.equal(value, averaged[key]) and torch.equal(value, saved.state_dict()[key]), key


def test_translation_members_trained_with_swa_keep_the_mean_of_their_rounds_from_swa_start(tmp_path):
    from test_tasks_nmt import toy_config, write_copy_task

    from ensemble_distill.ensemble import train_members
    from ensemble_distill.tasks.nmt import new_model, nll_loss, train_model

    folder = write_copy_task(tmp_path / "copy", (("train", 60), ("dev", 8), ("test", 8)))
    data = train_members(toy_config(folder, max_rounds=1), folder / "vocab-run", progress=False).data
    cfg = toy_config(folder, updates_per_round=4, max_rounds=3, patience=3, averaging="swa", swa_start=2,
                     swa_lr=1e-3)
    model = new_model(cfg, len(data.vocab), seed=3)
    after = {}

    def after_round(r):
        after[r] = {k: v.clone() for k, v in model.state_dict().items()}

    result = train_model(model, data, cfg, tmp_path / "m", nll_loss(0.1), 3, progress=False, after_round=after_round)
    assert result["averaging"] == "swa" and result["averaged_rounds"] == 2
    saved = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    for key, value in saved.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (after[2][key] + after[3][key]) / 2)
    assert not list((tmp_path / "m").glob("epoch-*.pt"))  # no checkpoint averaging snapshots
