import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
from seqeval.metrics import classification_report, f1_score
from seqeval.scheme import IOB2

from ensemble_distill.calibration.bootstrap import paired_bootstrap
from ensemble_distill.calibration.comparison import compare, format_comparison, format_p, metric_key
from ensemble_distill.calibration.report import DEBIASED, evaluate, tagging_metrics
from ensemble_distill.errors import UserError
from ensemble_distill.predictions import Predictions, save_predictions

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
ROOT = Path(__file__).resolve().parents[1]


def gold_tags(n_sentences, seed):
    """IOB2 gold: sentences of 3-10 words, ~20% entity starts, half of them two words long."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(3, 11, n_sentences))])
    gold = np.zeros(offsets[-1], dtype=np.int64)
    starts = np.flatnonzero(rng.random(offsets[-1]) < 0.2)
    gold[starts] = rng.choice([1, 3], len(starts))
    inside = starts[(starts + 1 < offsets[-1]) & (rng.random(len(starts)) < 0.5)] + 1
    gold[inside] = np.where(gold[inside] == 0, gold[inside - 1] + 1, gold[inside])
    gold[offsets[:-1]] = np.where(np.isin(gold[offsets[:-1]], [2, 4]), 0, gold[offsets[:-1]])
    return offsets, gold


def tagger(offsets, gold, skill, seed, model="toy", label_names=LABELS):
    """A system whose distributions favour the gold label by `skill` (logit margin)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(gold), len(LABELS)))
    logits[np.arange(len(gold)), gold] += skill
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    order = [LABELS.index(name) for name in label_names]  # the same system under another label order
    return Predictions.tagging(probs[:, order], np.argsort(order)[gold], offsets, label_names, meta={"model": model})


def test_rows_are_the_paired_bootstrap_of_the_two_reports():
    offsets, gold = gold_tags(60, 0)
    a, b = tagger(offsets, gold, 2.5, 1, "a"), tagger(offsets, gold, 1.5, 2, "b")
    rows = compare(a, b, ["f1", "F1_conlleval", "B-ECE", "ece_1"], n_boot=40, seed=3, progress=False)
    assert [row["metric"] for row in rows] == ["f1", "f1_conlleval", "b_ece", "ece_1"]

    expected = paired_bootstrap(tagging_metrics(a)[0], tagging_metrics(b)[0], offsets, n_boot=40, seed=3,
                                progress=False, debiased=DEBIASED)
    # A and B are each system's value as its own report gives it with the same n_boot and seed (the trial's
    # compare printed B-ECE 0.0602, the uncorrected estimate, beside results.md's bias-corrected 4.16)
    report_a, report_b = evaluate(a, n_boot=40, seed=3), evaluate(b, n_boot=40, seed=3)
    for row in rows:
        d, m = expected[row["metric"]], row["metric"]
        assert (row["a"], row["b"]) == (report_a[m]["value"], report_b[m]["value"])
        assert (row["a_estimate"], row["b_estimate"]) == (report_a[m]["estimate"], report_b[m]["estimate"])
        assert (row["a"] != row["a_estimate"]) == (m in ("b_ece", "ece_1"))  # bias-corrected: another value
        assert row["estimate"] == pytest.approx(row["a_estimate"] - row["b_estimate"], abs=1e-15)
        assert (row["difference"], row["ci_low"], row["ci_high"], row["p_value"]) == pytest.approx(
            (d.value, d.ci_low, d.ci_high, d.p_value), abs=1e-12)
        assert row["significant"] == (row["p_value"] < 0.05)
    gold_seqs = a.sentence_labels(a.gold)
    f1_a = f1_score(gold_seqs, a.sentence_labels(a.predicted()), mode="strict", scheme=IOB2)
    assert rows[0]["a"] == pytest.approx(f1_a)
    assert rows[1]["a"] == pytest.approx(f1_score(gold_seqs, a.sentence_labels(a.predicted())))  # conlleval


def test_span_metrics_alone_skip_the_full_report_and_give_the_same_rows():
    offsets, gold = gold_tags(60, 1)
    a, b = tagger(offsets, gold, 2.0, 1), tagger(offsets, gold, 1.8, 2)
    alone = compare(a, b, ["f1", "recall_conlleval"], n_boot=50, seed=0, progress=False)
    with_others = compare(a, b, ["f1", "recall_conlleval", "brier"], n_boot=50, seed=0, progress=False)
    assert alone == with_others[:2]


def test_a_better_system_is_significant_and_a_system_is_not_better_than_itself():
    offsets, gold = gold_tags(300, 2)
    good, poor = tagger(offsets, gold, 4.0, 1), tagger(offsets, gold, 1.0, 2)
    row = compare(good, poor, ["f1"], n_boot=200, progress=False)[0]
    assert row["difference"] > 0.3 and row["ci_low"] > 0 and row["significant"] and row["p_value"] == 2 / 201
    same = compare(good, good, ["f1", "b_ece"], n_boot=20, progress=False)
    assert all(r["difference"] == r["ci_low"] == r["ci_high"] == 0 and r["p_value"] == 1 for r in same)
    assert not any(r["significant"] for r in same)


def test_the_issue_example_is_a_difference_in_strict_f1_only():
    # gold B-PER I-PER O B-LOC; A predicts I-PER I-PER O B-LOC (conlleval 1.00, strict 0.67), B predicts gold
    offsets, gold = np.array([0, 4]), np.array([1, 2, 0, 3])
    probs_a, probs_b = np.full((4, 5), 0.05), np.full((4, 5), 0.05)
    probs_a[np.arange(4), [2, 2, 0, 3]] = probs_b[np.arange(4), gold] = 0.8
    a, b = (Predictions.tagging(p, gold, offsets, LABELS) for p in (probs_a, probs_b))
    strict, conlleval = compare(a, b, ["F1", "f1_conlleval"], n_boot=10, progress=False)
    assert (strict["a"], strict["b"]) == (pytest.approx(2 / 3), 1.0) and conlleval["a"] == conlleval["b"] == 1.0


def test_files_on_disk_and_label_orders_that_differ(tmp_path):
    offsets, gold = gold_tags(40, 3)
    a = tagger(offsets, gold, 2.0, 1)
    b = tagger(offsets, gold, 2.0, 1, label_names=["B-LOC", "I-LOC", "O", "I-PER", "B-PER"])
    save_predictions(tmp_path / "a.npz", a)
    save_predictions(tmp_path / "b.npz", b)
    row = compare(tmp_path / "a.npz", str(tmp_path / "b.npz"), ["ece_1", "f1"], n_boot=20, progress=False)
    # the same distributions under another label order: no difference at all
    assert [(r["difference"], r["p_value"]) for r in row] == [(pytest.approx(0, abs=1e-7), 1.0), (0.0, 1.0)]


def test_predictions_of_other_sentences_are_refused_in_one_line(tmp_path):
    offsets, gold = gold_tags(40, 4)
    a = tagger(offsets, gold, 2.0, 1)
    save_predictions(tmp_path / "a.npz", a)

    shorter = tagger(offsets[:-1], gold[: offsets[-2]], 2.0, 1)
    save_predictions(tmp_path / "b.npz", shorter)
    with pytest.raises(UserError, match=r"a\.npz and .*b\.npz do not hold the same sentences: 40 sentences in .*a\.npz"
                                        r", 39 in .*b\.npz$"):
        compare(tmp_path / "a.npz", tmp_path / "b.npz", ["f1"])

    moved = offsets.copy()
    moved[5] += 1
    with pytest.raises(UserError, match=r"sentence 4 has 10 words in A \(toy\), 11 in B$"):
        compare(a, Predictions.tagging(a.probs, a.gold, moved, LABELS), ["f1"])

    other_gold = gold.copy()
    s = int(np.argmax([gold[offsets[i]:offsets[i + 1]].any() for i in range(40)]))  # a sentence with entities
    other_gold[offsets[s]:offsets[s + 1]] = 0
    word = int(np.argmax(gold[offsets[s]:offsets[s + 1]] > 0))
    first = LABELS[gold[offsets[s] + word]]
    with pytest.raises(UserError, match=rf"word {word} of sentence {s} has gold {first} in A \(toy\), O in B$"):
        compare(a, Predictions.tagging(a.probs, other_gold, offsets, LABELS), ["f1"])

    translation, _ = translation_system(0)
    with pytest.raises(UserError, match=r"A \(toy\) holds tagging predictions, B translation ones"):
        compare(a, translation, ["f1"])


HYPS = ["the cat sat on the mat", "a dog barked", "it is raining today", "hello world", "two men are talking"]
REFS = ["the cat sat on a mat", "the dog barked", "it rains today", "hello world", "two men talk"]


def translation_system(seed, hypotheses=HYPS, offsets=(0, 7, 11, 16, 19, 24), vocab=30):
    rng = np.random.default_rng(seed)
    n = offsets[-1]
    probs = rng.dirichlet(np.full(vocab, 0.3), size=n)
    gold = np.where(rng.random(n) < 0.6, probs.argmax(axis=1), rng.integers(0, vocab, n))
    return Predictions.translation(probs, gold, offsets, [f"p{i}" for i in range(vocab)], hypotheses, REFS), probs


def test_translation_bleu_and_calibration_differences():
    a, _ = translation_system(0)
    b, _ = translation_system(1, hypotheses=REFS, offsets=(0, 6, 11, 15, 19, 22))  # its own tokenisation
    bleu, ece_5 = compare(a, b, ["BLEU", "ECE-5"], n_boot=30, progress=False)
    assert bleu["a"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score) and bleu["b"] == pytest.approx(100)
    assert ece_5["metric"] == "ece_5" and ece_5["estimate"] == pytest.approx(ece_5["a_estimate"] - ece_5["b_estimate"],
                                                                             abs=1e-15)
    assert compare(a, b, ["bleu"], n_boot=30, progress=False)[0] == bleu  # BLEU alone: from its statistics only

    other_refs = Predictions.translation(*_dense(a, 0), [*HYPS], [*REFS[:3], "hello there world", REFS[4]])
    with pytest.raises(UserError, match="sentence 3's reference is 'hello world' in A, 'hello there world' in B$"):
        compare(a, other_refs, ["bleu"])


def _dense(preds, seed):
    """Arguments of Predictions.translation for new distributions over preds' positions."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(len(preds.label_names), 0.3), size=preds.n_positions)
    return probs, preds.gold, preds.sentence_offsets, preds.label_names


@pytest.mark.parametrize(("name", "key"), [("F1", "f1"), ("F1 strict", "f1"), ("B-ECE", "b_ece"), ("ECE-1", "ece_1"),
                                           ("BS+", "bs_plus"), ("BS-", "bs_minus"), ("B-BS", "b_bs"),
                                           (" bleu ", "bleu"), ("f1_conlleval", "f1_conlleval"),
                                           ("F1_conlleval:PER", "f1_conlleval:PER"),
                                           ("recall_conlleval: B-X ", "recall_conlleval:B-X")])
def test_metric_names_as_the_tables_spell_them(name, key):
    assert metric_key(name) == key


def test_unknown_or_unreported_metrics_are_refused():
    offsets, gold = gold_tags(10, 5)
    a = tagger(offsets, gold, 2.0, 1)
    with pytest.raises(UserError, match="unknown metric 'F2'; the report's metrics: f1, precision"):
        compare(a, a, ["F2"])
    with pytest.raises(UserError, match=r"^A \(toy\): the report of these tagging predictions has no bleu \(it has "
                                        r"precision, recall, f1, "):
        compare(a, a, ["f1", "bleu"])
    with pytest.raises(UserError, match="at least one metric"):
        compare(a, a, [])
    with pytest.raises(UserError, match="^'b_ece:PER': of one entity type there are precision_conlleval, "):
        compare(a, a, ["b_ece:PER"])
    with pytest.raises(UserError, match=r"^A \(toy\): the report of these tagging predictions has no "
                                        r"f1_conlleval:ORG \(it has .*f1_conlleval:LOC"):
        compare(a, a, ["f1_conlleval:ORG"])
    with pytest.raises(UserError, match="n_boot"):
        compare(a, a, ["f1"], n_boot=0)


def test_format_comparison():
    offsets, gold = gold_tags(100, 6)
    rows = compare(tagger(offsets, gold, 3.0, 1), tagger(offsets, gold, 1.0, 2), ["f1", "b_ece"], n_boot=50,
                   progress=False)
    text = format_comparison(rows, "student", "baseline")
    header, rule, f1_line, b_ece_line = text.splitlines()[:4]
    assert header.split() == ["metric", "student", "baseline", "student", "-", "baseline", "95%", "CI", "p"]
    assert f1_line.split()[:5] == ["f1", "(strict)", f"{rows[0]['a']:.4f}", f"{rows[0]['b']:.4f}",
                                   f"{rows[0]['difference']:+.4f}"]
    assert f1_line.endswith("(significant)") and b_ece_line.split()[3].endswith("*")
    assert "bias-corrected" in text.splitlines()[-1] and "strict is seqeval's strict IOB2" in text
    conlleval = format_comparison(compare(tagger(offsets, gold, 3.0, 1), tagger(offsets, gold, 1.0, 2),
                                          ["F1_conlleval:PER"], n_boot=10, progress=False))
    assert conlleval.splitlines()[2].startswith("f1_conlleval:PER (conlleval)  ")


@pytest.mark.parametrize("p, text", [(0.0496, "0.0496"), (0.0504, "0.050"), (0.049996, "0.049996"),
                                     (0.0499999999, "<0.05"), (0.05, "0.050"), (0.1234, "0.123"), (0.002, "0.002")])
def test_a_printed_p_stays_on_its_side_of_alpha(p, text):
    """3 decimals unless they would round a p across 0.05 (0.0496 printed "0.050" beside "(significant)");
    beyond 6 decimals it prints "<0.05"."""
    assert format_p(p) == text


def test_the_compare_command_prints_the_table_and_writes_the_rows(tmp_path, capsys):
    import json

    from ensemble_distill.cli import main

    offsets, gold = gold_tags(30, 5)
    save_predictions(tmp_path / "a.npz", tagger(offsets, gold, 3.0, 1))
    save_predictions(tmp_path / "b.npz", tagger(offsets, gold, 1.0, 2))
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    assert main(["compare", a, b, "--n-boot", "30", "--seed", "4", "--out", str(tmp_path / "rows.json")]) == 0
    expected = compare(a, b, ["f1_conlleval", "f1", "b_ece"], n_boot=30, seed=4, progress=False)  # the default
    out = capsys.readouterr().out
    assert out.startswith(format_comparison(expected, "A", "B") + "\n") and f"A = {a}, B = {b}" in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["metric"] for r in rows] == ["f1_conlleval", "f1", "b_ece"]
    assert rows[1]["difference"] == pytest.approx(expected[1]["difference"])

    assert main(["compare", a, b, "--metrics", "B-ECE", "--n-boot", "30"]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("b_ece")

    save_predictions(tmp_path / "c.npz", tagger(offsets[:-1], gold[:offsets[-2]], 1.0, 2))
    assert main(["compare", a, str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not hold the same sentences: 30 sentences in" in err[0]
    assert main(["compare", a, b, "--metrics", "F2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown metric 'F2'" in err[0]


def test_the_package_name_compare_is_always_the_function():
    """`calibration.compare` is loaded lazily; when its module had the same name, Python bound the submodule on the
    package at import, so the second access (and `from ... import compare`) gave the module. In a fresh interpreter,
    so that the lazy path runs: every lazy name, both ways, twice."""
    code = """
import importlib, types
import ensemble_distill.calibration as C
first = C.compare
from ensemble_distill.calibration import compare as imported
from ensemble_distill.calibration import compare as again
from ensemble_distill.calibration import comparison
assert first is C.compare is imported is again is comparison.compare, (first, imported)
for name in C._LAZY:
    a, b = getattr(C, name), getattr(importlib.import_module("ensemble_distill.calibration"), name)
    assert a is b and not isinstance(a, types.ModuleType), name
"""
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_entity_type_metrics_are_seqevals_per_type_scores_in_the_report_and_in_compare():
    offsets, gold = gold_tags(80, 7)
    a, b = tagger(offsets, gold, 1.5, 1, "a"), tagger(offsets, gold, 1.0, 2, "b")
    report = classification_report(a.sentence_labels(a.gold), a.sentence_labels(a.predicted()), output_dict=True)
    metrics = evaluate(a, n_boot=30, seed=1)
    for entity_type in ("LOC", "PER"):
        assert metrics[f"f1_conlleval:{entity_type}"]["estimate"] == pytest.approx(report[entity_type]["f1-score"])
        assert metrics[f"recall_conlleval:{entity_type}"]["estimate"] == pytest.approx(report[entity_type]["recall"])
    rows = compare(a, b, ["f1_conlleval:PER", "F1_conlleval:LOC"], n_boot=30, seed=1, progress=False)
    assert [r["metric"] for r in rows] == ["f1_conlleval:PER", "f1_conlleval:LOC"]
    assert rows[0]["a"] == metrics["f1_conlleval:PER"]["value"]  # the same replicates as the report's
    # alone (span statistics only) or beside a calibration metric (the report's function): the same rows
    assert rows == compare(a, b, ["f1_conlleval:PER", "F1_conlleval:LOC", "b_ece"], n_boot=30, seed=1,
                           progress=False)[:2]


def test_a_p_at_the_floor_of_the_resamples_is_said_to_be_one(tmp_path, capsys):
    """With B resamples the smallest two-sided p is 2/(B + 1): a strong system against a weak one reaches it, and
    compare says that such a p only bounds the true one (--n-boot 5: 0.333)."""
    from ensemble_distill.cli import main

    offsets, gold = gold_tags(80, 4)
    save_predictions(tmp_path / "a.npz", tagger(offsets, gold, 6.0, 1, "a"))
    save_predictions(tmp_path / "b.npz", tagger(offsets, gold, 0.5, 2, "b"))
    assert main(["compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--metrics", "f1", "--n-boot", "5"]) == 0
    out = capsys.readouterr().out
    assert " 0.333" in out.splitlines()[2]
    assert "p = 0.333 is the smallest p that --n-boot 5 allows" in out
    assert main(["compare", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--metrics", "f1", "--n-boot", "5"]) == 0
    assert "smallest p" not in capsys.readouterr().out  # p 1: nothing to say
