"""evaluation.py on an NER run through the CLI (train-ensemble → evaluate → predict) on a tiny random BERT and
tiny CoNLL files: members, individuals, nested ensembles, raw and temperature-scaled. The translation side is in
test_tasks_nmt.py (its toy run), the table's rows in test_temperature.py."""

import json

import numpy as np
import pytest

from ensemble_distill.calibration.temperature import fit_temperature
from ensemble_distill.cli import main
from ensemble_distill.ensemble import nested_subsets
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
split_seed = 1  # its ensemble of 2 is members 0 and 2, not the first two
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
    assert [r["system"] for r in rows if not r["system"].endswith(" + TS")][-2:] == ["ensemble of 2", "ensemble of 3"]
    assert [r["name"] for r in rows] == ["members", "members-ts", "individuals", "individuals-ts", "ensemble-2",
                                         "ensemble-2-ts", "ensemble-3", "ensemble-3-ts"]

    # results.md's second table: each raw system's conlleval F1 per entity type, as its metrics.json gives it
    results, per_type = (run / "eval/test/results.md").read_text().split("F1 per entity type (conlleval)")
    assert "| F1 | F1 strict | BS+ | BS- | B-BS | B-ECE* |" in results and "\n* bias-corrected: " in results
    record = json.loads((run / "eval/test/ensemble-3/metrics.json").read_text())
    types = list(record["settings"]["entity_support"])
    assert "| system | " + " | ".join(types) + " |" in per_type and " + TS" not in per_type
    f1 = [record["metrics"][f"f1_conlleval:{t}"] for t in types]
    assert ("| ensemble of 3 | " + " | ".join(f"{100 * m['value']:.2f} [{100 * m['ci_low']:.2f}, "
                                                f"{100 * m['ci_high']:.2f}]" for m in f1) + " |") in per_type

    # the ensemble-of-3 predictions are the mean of the three members' predictions; the ensemble of 2 is the mean
    # of the two members its nested subset names (0 and 2 at split seed 1), and says so
    members = [load_predictions(run / f"eval/test/member-{i}/predictions.npz").probs for i in range(3)]
    ensemble = load_predictions(run / "eval/test/ensemble-3/predictions.npz")
    np.testing.assert_allclose(ensemble.probs, sum(members) / 3, atol=1e-5)
    assert (run / "eval/test/ensemble-3/metrics.json").is_file()
    assert not list((run / "eval").rglob("hypotheses.txt"))  # a tagger's output is its labels: no hypotheses
    pair = nested_subsets(3, [2, 3], split_seed=1)[2]
    assert pair == [0, 2]
    ensemble_2 = load_predictions(run / "eval/test/ensemble-2/predictions.npz")
    np.testing.assert_allclose(ensemble_2.probs, (members[0] + members[2]) / 2, atol=1e-5)
    assert ensemble_2.meta["ensemble"] == pair

    # a group's row is the mean and the standard error (sample s.d. / sqrt(n)) of its models' own metrics
    for group, count in (("member", 3), ("individual", 2)):
        row = next(r for r in rows if r["system"].startswith(f"{group}s ("))
        for metric in ("f1", "b_ece"):
            values = [json.loads((run / f"eval/test/{group}-{i}/metrics.json").read_text())["metrics"][metric]
                      ["value"] for i in range(count)]
            mean = sum(values) / count
            se = (sum((v - mean) ** 2 for v in values) / (count - 1)) ** 0.5 / count ** 0.5
            assert row[metric]["value"] == pytest.approx(mean) and row[metric]["se"] == pytest.approx(se)

    # temperature-scaled: T minimises the dev NLL of the ensemble's distributions (here from `predict` on the dev
    # file, the ensemble's mean by another code path), and the scaled test distributions are q^(1/T) renormalised
    layout = ["--token-col", "0", "--tag-col", "-1"]
    assert main(["predict", "--run", str(run), "--input", str(conll_files[1]), *layout, "--out",
                 str(tmp_path / "dev")]) == 0
    dev = load_predictions(tmp_path / "dev/predictions.npz")
    t = fit_temperature(np.log(dev.probs), dev.gold)
    scaled = load_predictions(run / "eval/test/ensemble-3-ts/predictions.npz")
    assert scaled.meta["temperature"] == pytest.approx(t, rel=1e-4) and t != pytest.approx(1.0, abs=1e-3)
    expected = ensemble.probs.astype(np.float64) ** (1 / t)
    np.testing.assert_allclose(scaled.probs, expected / expected.sum(1, keepdims=True), atol=1e-5)
    by_name = {r["name"]: r for r in rows}
    assert by_name["ensemble-3-ts"]["temperature"] == scaled.meta["temperature"]
    assert by_name["ensemble-3-ts"]["f1"]["value"] == by_name["ensemble-3"]["f1"]["value"]  # the argmax is kept
    assert by_name["ensemble-3-ts"]["b_ece"]["value"] != by_name["ensemble-3"]["b_ece"]["value"]

    out = tmp_path / "pred"
    layout = ["--token-col", "0", "--tag-col", "-1"]  # the input's layout is stated, not the run's
    assert main(["predict", "--run", str(run), "--input", str(conll_files[2]), *layout, "--out", str(out)]) == 0
    preds = load_predictions(out / "predictions.npz")
    np.testing.assert_allclose(preds.probs, ensemble.probs, atol=1e-5)
    assert main(["predict", "--run", str(run), "--input", str(conll_files[2]), *layout, "--out",
                 str(tmp_path / "pred-2"), "--members", "2"]) == 0
    np.testing.assert_allclose(load_predictions(tmp_path / "pred-2/predictions.npz").probs, ensemble_2.probs,
                               atol=1e-5)
    conll_lines = [line for line in (out / "predictions.conll").read_text().splitlines() if line]
    assert len(conll_lines) == preds.n_positions and conll_lines[0].split()[:2] == ["Germany", "B-LOC"]
    entities = [json.loads(line) for line in (out / "entities.jsonl").read_text().splitlines()]
    assert len(entities) == preds.n_sentences
    for s, sentence in enumerate(entities):
        for entity in sentence["entities"]:
            assert 0.0 < entity["confidence"] <= 1.0
            assert entity["text"] == " ".join(sentence["tokens"][entity["start"]:entity["end"]])
            # its confidence, the members' mean exact span probability, is checked in tests/test_predict.py
            words = preds.probs[preds.sentence_offsets[s] + entity["start"]:preds.sentence_offsets[s] + entity["end"]]
            assert preds.label_names[words[0].argmax()] in (f"B-{entity['type']}", f"I-{entity['type']}")
    assert sum(len(sentence["entities"]) for sentence in entities) > 0


def test_user_errors_are_one_line(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[train]\nlr = 'x'\n")
    assert main(["train-ensemble", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.lr" in err
    assert main(["predict", "--run", str(tmp_path / "nothing"), "--input", "x", "--out", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_a_temperature_scaled_teachers_student_never_takes_a_scaled_systems_folder(tmp_path):
    from types import SimpleNamespace

    from ensemble_distill.distill.memoize import Truncation, store_name, student_name
    from ensemble_distill.errors import UserError
    from ensemble_distill.evaluation import run_systems

    assert [student_name(store_name(3, t, ts)) for t, ts in ((Truncation(), False), (Truncation(), True),
                                                             (Truncation(64), False), (Truncation(64), True))] == [
        "student-3", "student-ts-3", "student-3-top64", "student-ts-3-top64"]
    # A run with student-3 and the old name of the TS teacher's student (student-3-ts, student-3's scaled
    # evaluation folder) is refused, naming the folder; student-ts-3 beside student-3 is evaluated.
    ensemble = SimpleNamespace(members=3, subset_sizes=[3], individuals=0, split_seed=None)
    run = SimpleNamespace(run_dir=tmp_path, cfg=SimpleNamespace(ensemble=ensemble))
    for name in ("student-3", "student-ts-3"):
        (tmp_path / "students" / name).mkdir(parents=True)
        (tmp_path / "students" / name / "result.json").write_text("{}")
    names = [s.name for s in run_systems(run)[1]]
    assert names == ["member-0", "member-1", "member-2", "ensemble-3", "student-3", "student-ts-3"]
    (tmp_path / "students" / "student-ts-3").rename(tmp_path / "students" / "student-3-ts")
    with pytest.raises(UserError, match=r"students/student-3-ts: its evaluation folder would be the temperature-"
                                        r"scaled one of student-3"):
        run_systems(run)
