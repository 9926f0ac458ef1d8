"""train-ensemble → evaluate → predict through the CLI on a tiny random BERT and tiny CoNLL files."""

import json

import numpy as np

from ensemble_distill.cli import main
from ensemble_distill.predictions import load_predictions


def write_config(path, tiny_encoder, conll_files, tmp_path):
    train, dev, test = conll_files
    path.write_text(f"""
[data]
train = "{train}"
dev = "{dev}"
test = "{test}"
scheme = "iob2"
[encoder]
name = "{tiny_encoder}"
finetune_layers = 1
cache_dir = "{tmp_path / 'cache'}"
[model]
head = "crf"
lstm_hidden = 8
[train]
optimizer = "adamw"
lr = 3e-3
batch_size = 8
max_epochs = 1
[ensemble]
members = 3
subset_sizes = [2, 3]
individuals = 2
""")
    return path


def test_train_evaluate_predict(tiny_encoder, conll_files, tmp_path, capsys):
    config = write_config(tmp_path / "c.toml", tiny_encoder, conll_files, tmp_path)
    run = tmp_path / "run"
    assert main(["train-ensemble", "--config", str(config), "--out", str(run), "--n-boot", "20"]) == 0
    table = capsys.readouterr().out
    for system in ("members (3, mean ± s.e.)", "individuals (2, mean ± s.e.)", "ensemble of 2", "ensemble of 3"):
        assert system in table
    rows = json.loads((run / "eval/test/results.json").read_text())
    assert [r["system"] for r in rows][-2:] == ["ensemble of 2", "ensemble of 3"]

    # the ensemble-of-3 predictions are the mean of the three members' predictions
    members = [load_predictions(run / f"eval/test/member-{i}/predictions.npz").probs for i in range(3)]
    ensemble = load_predictions(run / "eval/test/ensemble-3/predictions.npz")
    np.testing.assert_allclose(ensemble.probs, sum(members) / 3, atol=1e-5)
    assert (run / "eval/test/ensemble-3/metrics.json").is_file()

    out = tmp_path / "pred"
    assert main(["predict", "--run", str(run), "--input", str(conll_files[2]), "--out", str(out)]) == 0
    preds = load_predictions(out / "predictions.npz")
    np.testing.assert_allclose(preds.probs, ensemble.probs, atol=1e-5)
    conll_lines = [line for line in (out / "predictions.conll").read_text().splitlines() if line]
    assert len(conll_lines) == preds.n_positions and conll_lines[0].split()[:2] == ["Germany", "B-LOC"]
    entities = [json.loads(line) for line in (out / "entities.jsonl").read_text().splitlines()]
    assert len(entities) == preds.n_sentences
    for sentence in entities:
        for entity in sentence["entities"]:
            assert 0.0 < entity["confidence"] <= 1.0
            assert entity["text"] == " ".join(sentence["tokens"][entity["start"]:entity["end"]])


def test_user_errors_are_one_line(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[train]\nlr = 'x'\n")
    assert main(["train-ensemble", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.lr" in err
    assert main(["predict", "--run", str(tmp_path / "nothing"), "--input", "x", "--out", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
