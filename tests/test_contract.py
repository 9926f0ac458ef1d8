"""The contract both tasks keep, through the command line on tiny models: train two members → evaluate →
memoize → distill → evaluate the run (the student joins the table) → move the teacher's run folder away →
load the student from its own folder → predict on input without gold → predict with gold → `evaluate` that
predictions file. The student predicts exactly what the run's evaluation recorded for it."""

import json
import random
import shutil

import numpy as np
import pytest

from ensemble_distill import load_model
from ensemble_distill.cli import main
from ensemble_distill.data.tags import iob1_to_iob2
from ensemble_distill.predictions import load_predictions

from conftest import CONLL_SENTENCES, write_conll

WORDS = "ant bee cat dog eel fox gnu hen".split()


def ner_setting(folder, tiny_encoder):
    """A config with data paths relative to its own folder, the test file with and without gold tags."""
    data = folder / "data"
    data.mkdir()
    write_conll(data / "train.txt", CONLL_SENTENCES, repeat=5)
    write_conll(data / "dev.txt", CONLL_SENTENCES[:4])
    test = write_conll(data / "test.txt", CONLL_SENTENCES[4:])
    tokens = data / "tokens.txt"
    tokens.write_text("".join("\n".join(p.split(" ")[0] for p in s.split("|")) + "\n\n" for s in CONLL_SENTENCES[4:]))
    config = folder / "configs" / "ner.toml"
    config.parent.mkdir()
    config.write_text(f"""task = "ner"
[data]
train = "../data/train.txt"
dev = "../data/dev.txt"
test = "../data/test.txt"
scheme = "iob2"
[encoder]
name = "{tiny_encoder}"
finetune_layers = 1
cache_dir = "../cache"
[train]
optimizer = "adamw"
lr = 3e-3
batch_size = 8
max_epochs = 1
[ensemble]
members = 2
subset_sizes = [2]
""")
    student = ["--set", "train.optimizer=\"adamw\"", "--set", "train.lr=3e-3", "--set", "train.batch_size=8",
               "--set", "train.max_epochs=1"]
    return config, student, ["--input", str(tokens), "--format", "conll"], ["--input", str(test), "--token-col", "0",
                                                                            "--tag-col", "-1"]


def nmt_setting(folder, tiny_encoder):
    data = folder / "data"
    data.mkdir()
    for seed, (split, n) in enumerate((("train", 300), ("dev", 30), ("test", 20))):
        rng = random.Random(seed)
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) for _ in range(n)]
        for side in ("src", "tgt"):
            (data / f"{split}.{side}").write_text("\n".join(lines) + "\n")
    config = folder / "configs" / "nmt.toml"
    config.parent.mkdir()
    config.write_text("""task = "nmt"
[data]
train_src = "../data/train.src"
train_tgt = "../data/train.tgt"
dev_src = "../data/dev.src"
dev_tgt = "../data/dev.tgt"
test_src = "../data/test.src"
test_tgt = "../data/test.tgt"
vocab_size = 48
[model]
preset = "tiny"
dropout = 0.0
[train]
lr = 7e-3
warmup_steps = 20
batch_tokens = 600
updates_per_round = 30
max_rounds = 2
patience = 2
average_last = 1
[ensemble]
members = 2
subset_sizes = [2]
[decode]
batch_sentences = 16
temperature_positions = 100
[distill]
teacher_members = 2
top_k = 4
""")
    test = ["--input", str(data / "test.src")]
    return config, [], test, test + ["--ref", str(data / "test.tgt")]


@pytest.mark.parametrize("setting", [ner_setting, nmt_setting], ids=["ner", "nmt"])
def test_train_evaluate_memoize_distill_then_the_student_alone(setting, tiny_encoder, tmp_path, capsys):
    config, student_settings, unlabelled, labelled = setting(tmp_path, tiny_encoder)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run)]) == 0
    recorded = (run / "config.toml").read_text()
    assert str(tmp_path / "data") in recorded  # paths resolved against the config's folder, recorded absolute
    assert main(["evaluate", "--run", str(run), "--n-boot", "20"]) == 0
    assert main(["memoize", "--run", str(run), "--members", "2"]) == 0
    assert main(["distill", "--run", str(run), "--members", "2", "--n-boot", "20", *student_settings]) == 0
    assert main(["evaluate", "--run", str(run), "--n-boot", "20"]) == 0
    (student,) = [p.parent for p in (run / "students").glob("*/model.json")]
    rows = json.loads((run / "eval" / "test" / "results.json").read_text())
    assert any(student.name in row["system"] for row in rows)
    recorded_preds = load_predictions(run / "eval" / "test" / student.name / "predictions.npz")

    alone = tmp_path / "alone" / student.name
    shutil.copytree(student, alone)
    shutil.move(run, tmp_path / "moved-away")  # nothing of the teacher's run is where it was
    model = load_model(alone)
    assert model.spec["role"] == "student" and "teacher" in model.spec

    assert main(["predict", "--model", str(alone), *unlabelled, "--out", str(tmp_path / "p1")]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(alone), *labelled, "--out", str(tmp_path / "p2")]) == 0
    preds = load_predictions(tmp_path / "p2" / "predictions.npz")
    summary = capsys.readouterr().out.splitlines()[-1]  # gold given: the task's score at once, for either task
    expected = "against the references: BLEU " if preds.task == "translation" else "against the gold tags: F1 "
    assert summary.startswith(expected) and summary.endswith(f"evaluate {tmp_path / 'p2' / 'predictions.npz'}")
    assert main(["evaluate", str(tmp_path / "p2" / "predictions.npz"), "--n-boot", "20"]) == 0
    assert (tmp_path / "p2" / "predictions-eval" / "metrics.json").is_file()
    capsys.readouterr()

    if model.spec["task"] == "ner":
        # the same distributions the run's evaluation computed for the student on the same test file
        np.testing.assert_allclose(preds.probs, recorded_preds.probs, atol=1e-5)
        entities = [json.loads(line) for line in (tmp_path / "p1" / "entities.jsonl").read_text().splitlines()]
        assert [e["tokens"] for e in entities] == [[p.split(" ")[0] for p in s.split("|")]
                                                    for s in CONLL_SENTENCES[4:]]
        unlabelled_tags = [line.split()[1] for line in (tmp_path / "p1" / "predictions.conll").read_text()
                           .splitlines() if line]
        # gold or not, the same tags, written as valid IOB2 (an I-X opening a span as B-X: the IOB1 reading)
        names, offsets = preds.label_names[preds.predicted()].tolist(), preds.sentence_offsets
        assert unlabelled_tags == [tag for a, b in zip(offsets[:-1], offsets[1:]) for tag in iob1_to_iob2(names[a:b])]
    else:
        np.testing.assert_allclose(preds.gold_prob, recorded_preds.gold_prob, atol=1e-5)
        np.testing.assert_array_equal(preds.top_ids, recorded_preds.top_ids)
        translations = (tmp_path / "p1" / "translations.txt").read_text().splitlines()
        assert translations == preds.hypotheses.tolist() == recorded_preds.hypotheses.tolist()
