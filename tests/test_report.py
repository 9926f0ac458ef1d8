import json
import warnings

import numpy as np
import pytest
import sacrebleu
from seqeval.metrics import classification_report, f1_score
from seqeval.scheme import IOB2
from sklearn.metrics import average_precision_score

from ensemble_distill.calibration.metrics import (
    balanced_calibration,
    brier,
    entity_type_confidences,
    gold_entity_types,
    stratified_brier,
    topk_ece,
)
from ensemble_distill.calibration.report import DEBIASED, evaluate, format_table
from ensemble_distill.cli import main
from ensemble_distill.errors import UserError
from ensemble_distill.predictions import Predictions, _to_arrays, save_predictions

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TAGGING_METRICS = ["f1", "precision", "recall", "f1_conlleval", "precision_conlleval", "recall_conlleval",
                   "token_accuracy", "ece_1", "conf_gap", "brier", "bs_plus", "bs_minus",
                   "b_bs", "b_ece", "b_ece_paper", "pr_auc"]  # fmt: skip


def tagging_preds(n_sentences=40, seed=0):
    """Sentences of B-X I-X ... O tags, and a model that puts most of its mass on the gold label."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, n_sentences)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = offsets[-1]
    gold = np.zeros(n, dtype=np.int64)
    starts = np.flatnonzero(rng.random(n) < 0.25)
    gold[starts] = rng.choice([1, 3], size=len(starts))
    inside = starts[(starts + 1 < n) & (rng.random(len(starts)) < 0.5)] + 1
    gold[inside] = np.where(gold[inside] == 0, gold[inside - 1] + 1, gold[inside])
    gold[offsets[:-1]] = np.where(np.isin(gold[offsets[:-1]], [2, 4]), 0, gold[offsets[:-1]])
    logits = rng.normal(size=(n, 5))
    logits[np.arange(n), gold] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Predictions.tagging(probs, gold, offsets, LABELS, meta={"model": "toy-tagger"})


def test_tagging_values_equal_independent_computations(tmp_path):
    preds = tagging_preds()
    metrics = evaluate(preds, out_dir=tmp_path, n_boot=20, seed=0)
    per_type = [f"{m}_conlleval:{t}" for t in ("LOC", "PER") for m in ("precision", "recall", "f1")]
    assert list(metrics) == TAGGING_METRICS + per_type
    probs, gold = preds.probs, preds.gold
    value = {name: m["estimate"] for name, m in metrics.items()}  # the metric on the data itself
    for name, m in metrics.items():  # bias-corrected only where DEBIASED says: ECE-type metrics
        assert (m["value"] == m["estimate"]) == (name not in DEBIASED) or m["value"] == m["estimate"] == 0
        assert m["ci_low"] <= m["value"] <= m["ci_high"] or name not in DEBIASED

    gold_seqs, pred_seqs = preds.sentence_labels(gold), preds.sentence_labels(probs.argmax(axis=1))
    assert value["f1"] == pytest.approx(f1_score(gold_seqs, pred_seqs, mode="strict", scheme=IOB2))
    assert value["f1_conlleval"] == pytest.approx(f1_score(gold_seqs, pred_seqs))  # seqeval's default: conlleval
    by_type = classification_report(gold_seqs, pred_seqs, output_dict=True)
    for t in ("LOC", "PER"):
        assert [value[f"{m}_conlleval:{t}"] for m in ("precision", "recall", "f1")] == pytest.approx(
            [by_type[t][m] for m in ("precision", "recall", "f1-score")])
    assert value["token_accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == gold))
    assert value["ece_1"] == pytest.approx(topk_ece(probs, gold, 1))
    assert value["conf_gap"] == pytest.approx(probs.max(axis=1).mean() - np.mean(probs.argmax(axis=1) == gold))
    assert value["brier"] == pytest.approx(brier(probs, gold))
    type_conf, types = entity_type_confidences(probs, LABELS)
    gold_type = gold_entity_types(gold, LABELS, types)
    assert (value["bs_plus"], value["bs_minus"]) == pytest.approx(stratified_brier(type_conf, gold_type))
    assert value["b_bs"] == pytest.approx(balanced_calibration(type_conf, gold_type).b_bs)
    assert value["b_ece"] == pytest.approx(balanced_calibration(type_conf, gold_type).b_ece)
    paper = balanced_calibration(type_conf, gold_type, paper_compatible=True)
    assert value["b_ece_paper"] == pytest.approx(paper.b_ece)
    y = (gold_type[:, None] == np.arange(len(types))).ravel()
    assert value["pr_auc"] == pytest.approx(average_precision_score(y, type_conf.ravel()))
    for name in ("f1", "token_accuracy", "brier", "bs_plus", "pr_auc"):
        assert metrics[name]["ci_low"] <= value[name] <= metrics[name]["ci_high"]

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"] == metrics
    assert saved["settings"]["n_boot"] == 20 and saved["settings"]["seed"] == 0
    assert saved["settings"]["interval"]["b_ece"].startswith("bias-corrected")
    assert saved["settings"]["entity_support"] == {t: by_type[t]["support"] for t in ("LOC", "PER")}
    assert saved["settings"]["interval"]["f1"] == "percentile"
    assert saved["settings"]["n_positions"] == preds.n_positions
    assert set(saved["versions"]) >= {"seqeval", "sacrebleu", "numpy", "ensemble_distill"}
    assert saved["paper_scale"]["f1"] == 100 and saved["predictions_meta"] == {"model": "toy-tagger"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "pr_curve.png", "reliability_top1.png"]


def test_stored_predictions_are_the_ones_scored():
    preds = tagging_preds()
    preds.pred = np.zeros_like(preds.gold)  # all O: no predicted entity
    metrics = evaluate(preds, n_boot=5)
    # gold entities but none predicted: F1 = 2 * 0 / (gold + 0) = 0, precision 0/0 undefined
    assert metrics["f1"]["value"] == 0.0 and metrics["recall"]["value"] == 0.0
    assert np.isnan(metrics["precision"]["value"])
    assert metrics["token_accuracy"]["value"] == pytest.approx(np.mean(preds.gold == 0))


def test_evaluate_is_seeded():
    preds = tagging_preds(seed=1)
    assert evaluate(preds, n_boot=15, seed=3) == evaluate(preds, n_boot=15, seed=3)
    assert evaluate(preds, n_boot=15, seed=3) != evaluate(preds, n_boot=15, seed=4)


HYPS = ["the cat sat on the mat", "a dog barked", "it is raining today", "hello world"]
REFS = ["the cat sat on a mat", "the dog barked", "it rains today", "hello world"]


def translation_preds(vocab=40, seed=0):
    rng = np.random.default_rng(seed)
    offsets = np.array([0, 7, 11, 16, 19])
    probs = rng.dirichlet(np.full(vocab, 0.2), size=19)
    gold = np.where(rng.random(19) < 0.6, probs.argmax(axis=1), rng.integers(0, vocab, 19))
    names = [f"piece{i}" for i in range(vocab)]
    return Predictions.translation(probs, gold, offsets, names, HYPS, REFS, k=5), probs


def test_translation_values_equal_independent_computations(tmp_path):
    preds, probs = translation_preds()
    metrics = evaluate(preds, out_dir=tmp_path, n_boot=20)
    assert list(metrics) == ["bleu", "ece_1", "ece_1_paper", "ece_5", "ece_5_paper", "conf_gap", "brier", "bs_plus"]
    value = {name: m["estimate"] for name, m in metrics.items()}
    assert all(m["ci_low"] <= m["value"] <= m["ci_high"] for name, m in metrics.items() if name in DEBIASED)
    gold = preds.gold
    assert value["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    # From the dense distributions, which the compact file no longer holds.
    assert value["ece_1"] == pytest.approx(topk_ece(probs, gold, 1), rel=1e-5)
    assert value["ece_5"] == pytest.approx(topk_ece(probs, gold, 5), rel=1e-5)
    assert value["ece_5_paper"] == pytest.approx(topk_ece(probs, gold, 5, paper_compatible=True), rel=1e-5)
    assert value["brier"] == pytest.approx(brier(probs, gold), rel=1e-5)
    # Signed: mean top-1 probability minus the share of positions whose argmax is gold.
    gap = probs.max(axis=1).mean() - np.mean(probs.argmax(axis=1) == gold)
    assert value["conf_gap"] == pytest.approx(gap, rel=1e-5)
    assert value["bs_plus"] == pytest.approx(np.mean((1 - probs[np.arange(19), gold]) ** 2), rel=1e-5)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert "tok:13a" in saved["settings"]["bleu_signature"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "reliability_top1.png"]


def test_ece_5_is_left_out_when_fewer_than_5_are_stored():
    preds, _ = translation_preds()
    preds.top_ids, preds.top_probs = preds.top_ids[:, :3], preds.top_probs[:, :3]
    assert list(evaluate(preds, n_boot=3)) == ["bleu", "ece_1", "ece_1_paper", "conf_gap", "brier", "bs_plus"]


def test_format_table_shows_every_metric_with_its_interval_and_unit():
    metrics = {"f1": {"value": 0.91234, "ci_low": 0.9, "ci_high": 0.925}, "bleu": {"value": 27.5, "ci_low": 26.0,
                                                                                   "ci_high": 29.01}}  # fmt: skip
    lines = format_table(metrics).splitlines()
    assert lines[0].split()[:5] == ["metric", "value", "95%", "CI", "unit"]
    f1 = next(line for line in lines if line.startswith("f1 "))
    assert "0.9123" in f1 and "[0.9000, 0.9250]" in f1 and "fraction" in f1
    bleu = next(line for line in lines if line.startswith("bleu "))
    assert "27.5000" in bleu and "[26.0000, 29.0100]" in bleu and "0-100" in bleu
    assert "x100" in lines[-1]


def test_cli_evaluate_writes_metrics_and_plots(tmp_path, capsys):
    save_predictions(tmp_path / "dev.npz", tagging_preds())
    assert main(["evaluate", str(tmp_path / "dev.npz"), "--out", str(tmp_path / "ev"), "--n-boot", "10"]) == 0
    out = capsys.readouterr().out
    assert "f1" in out and "95% CI" in out
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["settings"]["n_boot"] == 10
    assert (tmp_path / "ev" / "pr_curve.png").exists() and (tmp_path / "ev" / "reliability_top1.png").exists()
    # Default output folder: beside the predictions file.
    assert main(["evaluate", str(tmp_path / "dev.npz"), "--n-boot", "2", "--seed", "1"]) == 0
    assert (tmp_path / "dev-eval" / "metrics.json").exists()


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path):
    """`evaluate F | head -1`: the closed pipe ends the command with status 1 and no traceback."""
    import subprocess
    import sys

    save_predictions(tmp_path / "dev.npz", tagging_preds())
    command = [sys.executable, "-m", "ensemble_distill.cli", "evaluate", str(tmp_path / "dev.npz"), "--n-boot", "2",
               "--out", str(tmp_path / "ev")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the table is printed
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and b"Traceback" not in err and b"Exception ignored" not in err, err.decode()


def test_cli_evaluate_reports_a_bad_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_text("not an archive")
    assert main(["evaluate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "not a predictions .npz file" in err
    assert main(["evaluate", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz: no such predictions file" in capsys.readouterr().err


def test_ece_type_values_lie_in_their_intervals_on_small_samples():
    # Few sentences: ECE-type statistics are biased upward on resamples (test_bootstrap shows the percentile
    # interval missing the estimate); the bias-corrected value never leaves its interval.
    for seed in range(6):
        metrics = evaluate(tagging_preds(n_sentences=25, seed=seed), n_boot=50, seed=seed)
        for name in set(DEBIASED) & set(metrics):
            m = metrics[name]
            assert m["ci_low"] <= m["value"] <= m["ci_high"], (seed, name, m)


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_undefined_metrics_are_null_in_metrics_json(tmp_path):
    preds = tagging_preds(n_sentences=6)
    preds.gold[:] = 0  # no gold entity: BS+, B-BS, B-ECE and the PR curve are undefined
    metrics = evaluate(preds, out_dir=tmp_path, n_boot=5)
    assert np.isnan(metrics["b_ece"]["value"]) and np.isnan(metrics["bs_plus"]["ci_low"])
    saved = _strict_json((tmp_path / "metrics.json").read_text())
    assert saved["metrics"]["b_ece"] == {"value": None, "ci_low": None, "ci_high": None, "estimate": None}
    assert saved["metrics"]["bs_plus"]["value"] is None and saved["metrics"]["f1"]["value"] == 0.0


def write_raw(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.mark.parametrize("labels", [["O", "S-PER", "E-PER"], ["O", "PER", "LOC"], ["O", "b-per", "i-per"]])
def test_cli_evaluate_refuses_labels_other_than_iob2_in_one_line(tmp_path, capsys, labels):
    preds = Predictions.tagging(np.full((4, 3), 1 / 3), [0, 1, 2, 0], [0, 2, 4], ["O", "B-PER", "I-PER"])
    arrays = _to_arrays(preds)
    arrays["label_names"] = np.array(labels)
    path = write_raw(tmp_path / "other.npz", arrays)
    assert main(["evaluate", str(path), "--n-boot", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: label {labels[1]!r}" in err and "not an IOB2 label" in err
    with pytest.raises(UserError, match=f"predictions: label {labels[1]!r}"):  # in memory, the same check
        evaluate(Predictions.tagging(preds.probs, preds.gold, [0, 2, 4], labels), n_boot=2)


def test_cli_evaluate_reads_probabilities_one_float32_step_above_one(tmp_path, capsys):
    preds = tagging_preds(n_sentences=8)
    arrays = _to_arrays(preds)
    arrays["probs"][0] = 0
    arrays["probs"][0, preds.gold[0]] = np.nextafter(np.float32(1), np.float32(2))  # passes the file check
    path = write_raw(tmp_path / "above.npz", arrays)
    assert main(["evaluate", str(path), "--n-boot", "2", "--out", str(tmp_path / "ev")]) == 0
    saved = _strict_json((tmp_path / "ev" / "metrics.json").read_text())
    accuracy = np.mean(arrays["probs"].argmax(axis=1) == preds.gold)
    assert saved["metrics"]["token_accuracy"]["value"] == pytest.approx(accuracy)


# ------------------------------------------------------------------ ties between classes: the order of labels


def _quantised(rng, n, classes, steps=4):
    """Rows of multiples of 1/steps summing to 1: ties at every place, and sums exact in any order (so permuted
    files can be compared bit for bit)."""
    return (rng.multinomial(steps, rng.dirichlet(np.ones(classes)), size=n) / steps).astype(np.float32)


def _same_metrics(a, b):
    assert list(a) == list(b)
    for name in a:
        for key in a[name]:
            x, y = a[name][key], b[name][key]
            assert x == y or (np.isnan(x) and np.isnan(y)), (name, key, x, y)


@pytest.mark.parametrize("seed", range(3))
def test_no_tagging_metric_depends_on_the_order_of_the_labels(seed):
    rng = np.random.default_rng(seed)
    base = tagging_preds(n_sentences=30, seed=seed)  # IOB2 gold
    probs = _quantised(rng, base.n_positions, len(LABELS))
    probs[rng.random(base.n_positions) < 0.5, :] = 0  # half the rows: gold tied with one other label
    tied = ~probs.any(axis=1)
    other = (base.gold[tied] + rng.integers(1, len(LABELS), tied.sum())) % len(LABELS)
    probs[np.flatnonzero(tied), base.gold[tied]] = 0.5
    probs[np.flatnonzero(tied), other] = 0.5
    names = np.array(LABELS)
    reference = evaluate(Predictions.tagging(probs, base.gold, base.sentence_offsets, names), n_boot=20, seed=seed)
    for _ in range(3):
        perm = rng.permutation(len(LABELS))  # column j of the permuted file is label perm[j]
        permuted = Predictions.tagging(probs[:, perm], np.argsort(perm)[base.gold], base.sentence_offsets,
                                       names[perm])
        _same_metrics(evaluate(permuted, n_boot=20, seed=seed), reference)


def test_no_translation_metric_depends_on_the_order_of_the_vocabulary():
    rng = np.random.default_rng(5)
    vocab, offsets = 12, np.array([0, 7, 11, 16, 19])
    probs = _quantised(rng, 19, vocab, steps=8)
    gold = np.where(rng.random(19) < 0.6, probs.argmax(axis=1), rng.integers(0, vocab, 19))
    names = np.array([f"piece{i}" for i in range(vocab)])
    reference = evaluate(Predictions.translation(probs, gold, offsets, names, HYPS, REFS, k=5), n_boot=20)
    for _ in range(3):
        perm = rng.permutation(vocab)
        permuted = Predictions.translation(probs[:, perm], np.argsort(perm)[gold], offsets, names[perm], HYPS, REFS)
        _same_metrics(evaluate(permuted, n_boot=20), reference)


def test_the_issue_rows_of_two_tied_labels_score_alike_in_either_order():
    # 40 rows .5 O / .5 B-PER, 4 to a sentence. Each top-1 event is right at 1/2 (the gold is one of the two tied
    # classes): accuracy 1/2 = confidence 1/2, ECE-1 0, conf_gap 0. The predicted label is O in either order
    # (ties go to O): token accuracy = the share of O gold; no span predicted, so F1 = 0 where gold has spans.
    probs = np.tile(np.array([[0.5, 0.5, 0.0]], dtype=np.float32), (40, 1))
    for gold_b_per, accuracy, f1 in ((np.tile([False, True], 20), 0.5, 0.0), (np.ones(40, bool), 0.0, 0.0)):
        for labels, order in ((["O", "B-PER", "I-PER"], [0, 1, 2]), (["B-PER", "O", "I-PER"], [1, 0, 2])):
            gold = np.where(gold_b_per, labels.index("B-PER"), labels.index("O"))
            m = evaluate(Predictions.tagging(probs[:, order], gold, np.arange(0, 41, 4), labels), n_boot=10)
            assert m["ece_1"]["estimate"] == 0.0 and m["conf_gap"]["estimate"] == 0.0
            assert m["token_accuracy"]["estimate"] == accuracy and m["f1"]["estimate"] == f1
            assert np.isnan(m["precision"]["estimate"])  # nothing predicted


# ------------------------------------------------------------------------------------ empty sentences, 0/0


def test_empty_sentences_hold_no_events_and_raise_no_warnings(tmp_path):
    base = tagging_preds(n_sentences=12, seed=2)
    lengths = np.diff(base.sentence_offsets)
    with_empty = np.concatenate([[0], np.cumsum(np.insert(lengths, [0, 5, 5, 12], 0))])  # 4 empty sentences
    preds = Predictions.tagging(base.probs, base.gold, with_empty, LABELS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" and the like fail the test
        metrics = evaluate(preds, out_dir=tmp_path, n_boot=50)
        plain = evaluate(base, n_boot=50)
    # the events are the same: so are the metrics on the data
    _same_metrics({n: {"estimate": m["estimate"]} for n, m in metrics.items()},
                  {n: {"estimate": m["estimate"]} for n, m in plain.items()})
    save_predictions(tmp_path / "e.npz", preds)
    assert main(["evaluate", str(tmp_path / "e.npz"), "--n-boot", "5", "--out", str(tmp_path / "ev")]) == 0


def test_replicates_of_empty_sentences_only_are_left_out():
    # one sentence of 3 words and 9 empty ones: a replicate draws no word with probability (9/10)^10 = 0.35
    probs = np.float32([[0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.3, 0.0, 0.7]])
    preds = Predictions.tagging(probs, [0, 1, 2], [0, 3] + [3] * 9, ["O", "B-PER", "I-PER"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = evaluate(preds, n_boot=40, seed=1)
    draws = np.random.default_rng(1).integers(0, 10, size=(40, 10))  # the bootstrap's draws (bootstrap.py)
    defined = (draws == 0).any(axis=1)  # replicates that drew the sentence with words
    assert 0 < defined.sum() < 40
    # token accuracy is 1 on every replicate with words: its interval is [1, 1] over the defined ones
    assert metrics["token_accuracy"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "estimate": 1.0}
    # ECE-1 of copies of the sentence, events .8 (1) .9 (1) .7 (1): accuracy 1, mean confidence .8, in any bins
    assert metrics["ece_1"]["estimate"] == pytest.approx(0.2)


def _gold_o_everywhere(n_sentences=6, predict_entities=False):
    preds = tagging_preds(n_sentences=n_sentences)
    preds.gold[:] = 0
    preds.pred = np.where(np.arange(preds.n_positions) % 3 == 0, 1, 0) if predict_entities else np.zeros_like(
        preds.gold)
    return preds


def test_span_metrics_without_spans_are_null_in_metrics_json(tmp_path):
    # no gold span, none predicted: precision, recall and F1 are 0/0
    metrics = evaluate(_gold_o_everywhere(), out_dir=tmp_path / "a", n_boot=5)
    saved = _strict_json((tmp_path / "a" / "metrics.json").read_text())
    for name in ("f1", "precision", "recall", "f1_conlleval", "precision_conlleval", "recall_conlleval"):
        assert saved["metrics"][name] == {"value": None, "ci_low": None, "ci_high": None, "estimate": None}
        assert np.isnan(metrics[name]["value"])
    assert "n/a" in format_table(metrics)
    # spans predicted, no gold: recall 0/0 (null); precision 0 / predicted = 0; F1 = 2 * 0 / (0 + predicted) = 0
    evaluate(_gold_o_everywhere(predict_entities=True), out_dir=tmp_path / "b", n_boot=5)
    saved = _strict_json((tmp_path / "b" / "metrics.json").read_text())["metrics"]
    assert saved["recall"]["value"] is None and saved["precision"]["value"] == 0.0 and saved["f1"]["value"] == 0.0


def test_span_f1_interval_is_over_the_replicates_where_it_is_defined():
    # 8 sentences, one with a gold span the model finds: replicates without that sentence have no span at all
    probs = np.tile(np.float32([0.9, 0.05, 0.05]), (16, 1))
    gold = np.zeros(16, dtype=np.int64)
    gold[5], probs[5] = 1, [0.1, 0.8, 0.1]  # sentence 2 (words 4, 5): "O B-PER"
    preds = Predictions.tagging(probs, gold, np.arange(0, 17, 2), ["O", "B-PER", "I-PER"])
    metrics = evaluate(preds, n_boot=30, seed=4)
    draws = np.random.default_rng(4).integers(0, 8, size=(30, 8))
    defined = (draws == 2).any(axis=1)
    assert 0 < defined.sum() < 30
    assert metrics["f1"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "estimate": 1.0}  # 1 where defined


def test_an_empty_file_is_refused_in_one_line(tmp_path, capsys):
    arrays = _to_arrays(tagging_preds(n_sentences=2))
    arrays.update(probs=np.zeros((0, 5), np.float32), gold=np.zeros(0, np.int64), sentence_offsets=np.array([0, 0]))
    path = write_raw(tmp_path / "empty.npz", arrays)
    assert main(["evaluate", str(path), "--n-boot", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: empty input: 0 positions" in err


@pytest.mark.parametrize("bad", ["B-PER ", "B- PER"])
def test_cli_evaluate_refuses_labels_with_whitespace_in_one_line(tmp_path, capsys, bad):
    arrays = _to_arrays(tagging_preds(n_sentences=4))
    arrays["label_names"] = np.array(["O", bad, "I-PER", "B-LOC", "I-LOC"])
    path = write_raw(tmp_path / "space.npz", arrays)
    assert main(["evaluate", str(path), "--n-boot", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: label {bad!r}" in err and "whitespace" in err
