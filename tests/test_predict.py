"""Tagging new text (tag_text.py, `predict`): input formats and standard input, the layout the user states, no
cache written, span confidences equal to spans.py's on the same distributions, thresholds picked on dev."""

import io
import json
import sys

import numpy as np
import pytest
import torch
from seqeval.metrics import f1_score
from seqeval.scheme import IOB2

from ensemble_distill.cli import main
from ensemble_distill.data.tags import TagError, iob1_to_iob2, validate_iob2
from ensemble_distill.predictions import load_predictions, predicted_labels
from ensemble_distill.spans import SpanLabels, decode_spans, iid_span_probabilities, tagger_span_probabilities
from ensemble_distill.tag_text import predict, tag
from ensemble_distill.tasks import load_model

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
SENTENCES = [["Peter", "Blackburn", "visits", "Paris", "and", "New", "York"],
             ["Werner", "Zwingmann", "said", "on", "Wednesday", "consumers", "should", "buy", "sheepmeat"],
             ["Fischler", "proposed", "measures", "after", "reports", "from", "Britain", "and", "France"],
             ["EU", "rejects", "German", "call"]]


def tagger_folder(folder, encoder, head: str, seed: int, transitions_scale: float = 1.0):
    """A finished model folder of a random tagger whose classifier is scaled up, so that it predicts spans (and,
    for a CRF, its transition scores by `transitions_scale`)."""
    from ensemble_distill.encoders import load_pretrained, split_encoder
    from ensemble_distill.models.tagger import Tagger
    from ensemble_distill.runs import save_model, write_result
    from ensemble_distill.tasks.ner import encoder_weights_sha256

    torch.manual_seed(seed)
    _, top = split_encoder(load_pretrained(encoder), 1)
    model = Tagger(top, len(LABELS), head, lstm_hidden=8, dropout=0.0)
    with torch.no_grad():
        model.classifier.weight.mul_(20)
        if head == "crf":
            for scores in model.crf._scores():
                scores.mul_(transitions_scale)
    spec = {"task": "ner", "role": "student", "seed": seed, "labels": LABELS,
            "model": {"head": head, "lstm_hidden": 8, "dropout": 0.0},
            "encoder": {"name": str(encoder), "path": str(encoder), "finetune_layers": 1,
                        "sha256": encoder_weights_sha256(encoder)}}
    save_model(folder, model, spec)
    write_result(folder, task="ner", role="student", seed=seed, best_epoch=1, epochs=1, best_score=0.0,
                 score="span_f1")
    return folder


@pytest.fixture(scope="module")
def folders(tiny_encoder, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    folders = {name: tagger_folder(root / name, tiny_encoder, head, seed)
               for name, head, seed in (("iid", "iid", 1), ("crf", "crf", 2), ("iid2", "iid", 3))}
    # transitions strong enough that the best path and the per-word most probable labels disagree
    folders["crf-strong"] = tagger_folder(root / "crf-strong", tiny_encoder, "crf", 7, transitions_scale=10)
    return folders


def entities(out):
    return [json.loads(line) for line in (out / "entities.jsonl").read_text().splitlines()]


def conll_tokens(sentences) -> str:
    return "".join("\n".join(words) + "\n\n" for words in sentences)


def test_every_input_format_and_standard_input_give_the_same_entities(folders, tmp_path, monkeypatch, capsys):
    (tmp_path / "in.conll").write_text("# a comment\n" + conll_tokens(SENTENCES))
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"tokens": s}) + "\n" for s in SENTENCES))
    (tmp_path / "in.txt").write_text("".join(" ".join(s) + "\n\n" for s in SENTENCES))  # blank lines skipped
    model = ["predict", "--model", str(folders["iid"])]
    results = {}
    for name in ("in.conll", "in.jsonl", "in.txt"):
        assert main([*model, "--input", str(tmp_path / name), "--out", str(tmp_path / f"out-{name}")]) == 0
        results[name] = entities(tmp_path / f"out-{name}")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(conll_tokens(SENTENCES).encode())))
    assert main([*model, "--input", "-", "--out", str(tmp_path / "stdin")]) == 0
    results["-"] = entities(tmp_path / "stdin")
    capsys.readouterr()
    reference = results.pop("in.conll")
    assert [s["tokens"] for s in reference] == SENTENCES
    assert sum(len(s["entities"]) for s in reference) > 0
    for sentence in results["in.txt"]:  # only text input has a source line: the offsets into it, the rest as all
        line = " ".join(sentence["tokens"])
        for e in sentence["entities"]:
            assert line[e.pop("char_start"):e.pop("char_end")] == e["text"]
    for name, result in results.items():
        assert [(s["tokens"], s["entities"]) for s in result] == [(s["tokens"], s["entities"]) for s in reference]
    assert [s["line"] for s in reference] == [2, 10, 20, 30]  # each sentence's first line in the file


def test_device_cpu_writes_what_the_default_writes(folders, tmp_path, capsys):
    """predict had no --device; --device cpu is the default's device, so the same bytes (cuda without a GPU is
    refused in test_cli)."""
    (tmp_path / "in.conll").write_text(conll_tokens(SENTENCES))
    for name, extra in (("default", []), ("cpu", ["--device", "cpu"])):
        for model in ("iid", "crf"):
            assert main(["predict", "--model", str(folders[model]), "--input", str(tmp_path / "in.conll"), *extra,
                         "--out", str(tmp_path / name / model)]) == 0
    capsys.readouterr()
    for model in ("iid", "crf"):
        for file in ("entities.jsonl", "predictions.conll"):
            default = (tmp_path / "default" / model / file).read_text()
            assert (tmp_path / "cpu" / model / file).read_text() == default and default.strip()


HARD = ["The U.S. Department of Justice sued Google in Washington, D.C. on Monday.",
        "Jean-Luc Picard and O’Brien met at São Paulo’s airport."]  # trial 6; a typographic apostrophe ’ in both


def test_text_is_split_penn_treebank_style_as_conll_2003_is(tmp_path):
    """The encoder's BERT pre-tokenizer split at every punctuation mark (U . S ., Jean - Luc, O ' Brien), and the
    models, trained on CoNLL-2003's words, tagged the pieces as separate entities. The words here are the Penn
    Treebank rules applied by hand: abbreviations, hyphens and inner apostrophes stay, the final period, commas,
    quotes, brackets and the clitic 's are split off (also after a typographic ’); German ordinals stay "3."."""
    from ensemble_distill.tag_text import read_input

    path = tmp_path / "news.txt"
    path.write_text("\n".join([*HARD, "", "  ", "Die EU-Kommission in Brüssel hat am 3. Mai 2024 entschieden.",
                               'He said "Peter (not I) can\'t come."']) + "\n")
    text = read_input(path)
    assert text.tokens == [
        ["The", "U.S.", "Department", "of", "Justice", "sued", "Google", "in", "Washington", ",", "D.C.", "on",
         "Monday", "."],
        ["Jean-Luc", "Picard", "and", "O’Brien", "met", "at", "São", "Paulo", "’s", "airport", "."],
        ["Die", "EU-Kommission", "in", "Brüssel", "hat", "am", "3.", "Mai", "2024", "entschieden", "."],
        ["He", "said", '"', "Peter", "(", "not", "I", ")", "ca", "n't", "come", ".", '"']]
    assert text.lines == [1, 2, 5, 6] and text.gold is None
    assert text.sources == [*HARD, "Die EU-Kommission in Brüssel hat am 3. Mai 2024 entschieden.",
                            'He said "Peter (not I) can\'t come."']
    assert [[source[a:b] for a, b in spans] for source, spans in zip(text.sources, text.char_spans)] == text.tokens


def test_text_entities_carry_their_exact_source_text_and_character_offsets(tmp_path, monkeypatch):
    """Spans over words the tokenizer splits without a space between them ("Paulo’s") or that hold punctuation:
    line[char_start:char_end] is the entity as typed (the words joined by spaces would be "São Paulo ’s");
    conll and jsonl inputs, which have no source line, give no character offsets and the words joined."""
    from types import SimpleNamespace

    from ensemble_distill import tag_text

    tags = [["O", "B-LOC", "I-LOC", "I-LOC", "I-LOC", "O", "B-PER", "O", "B-LOC", "O", "B-LOC", "O", "O", "O"],
            ["B-PER", "I-PER", "O", "B-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC", "O", "O"]]
    distributions = [np.eye(len(LABELS), dtype=np.float32)[[LABELS.index(t) for t in row]] for row in tags]
    offsets = np.cumsum([0, *map(len, tags)])
    predicted = np.split(predicted_labels(np.concatenate(distributions), LABELS), offsets[1:-1])
    spans = decode_spans(np.concatenate(predicted), offsets, SpanLabels.from_names(LABELS))
    monkeypatch.setattr(tag_text, "tag", lambda *_, **__: tag_text.Tagged(LABELS, distributions, predicted, spans,
                                                                          np.ones(len(spans))))
    model = SimpleNamespace(tokenizer=None, labels=LABELS)
    (tmp_path / "hard.txt").write_text("\n".join(HARD) + "\n")
    tag_text.predict([model], tmp_path / "hard.txt", tmp_path / "text")
    found = [[(e["type"], e["start"], e["end"], e["char_start"], e["char_end"], e["text"]) for e in s["entities"]]
             for s in entities(tmp_path / "text")]
    assert found == [[("LOC", 1, 5, 4, 30, "U.S. Department of Justice"), ("PER", 6, 7, 36, 42, "Google"),
                      ("LOC", 8, 9, 46, 56, "Washington"), ("LOC", 10, 11, 58, 62, "D.C.")],
                     [("PER", 0, 2, 0, 15, "Jean-Luc Picard"), ("PER", 3, 4, 20, 27, "O’Brien"),
                      ("LOC", 6, 9, 35, 46, "São Paulo’s")]]
    for line, sentence in zip(HARD, entities(tmp_path / "text")):
        for e in sentence["entities"]:
            assert line[e["char_start"]:e["char_end"]] == e["text"]

    words = tag_text.read_input(tmp_path / "hard.txt").tokens
    (tmp_path / "hard.jsonl").write_text("".join(json.dumps({"tokens": w}) + "\n" for w in words))
    (tmp_path / "hard.conll").write_text(conll_tokens(words))
    for name in ("hard.jsonl", "hard.conll"):
        tag_text.predict([model], tmp_path / name, tmp_path / name.replace(".", "-"))
        found = [e for s in entities(tmp_path / name.replace(".", "-")) for e in s["entities"]]
        assert [e["text"] for e in found] == ["U.S. Department of Justice", "Google", "Washington", "D.C.",
                                             "Jean-Luc Picard", "O’Brien", "São Paulo ’s"]
        assert not any("char_start" in e or "char_end" in e for e in found)


def test_trained_taggers_give_every_text_entity_its_source_characters(folders, tmp_path, capsys):
    """The same through the CLI with real (tiny) taggers, a single CRF and an IID ensemble: whatever spans they
    predict, each one's character offsets give its text."""
    (tmp_path / "hard.txt").write_text("\n".join(HARD + [" ".join(s) for s in SENTENCES]) + "\n")
    for name, models in (("crf", ["--model", str(folders["crf"])]), ("iid", ["--model", str(folders["iid"])])):
        assert main(["predict", *models, "--input", str(tmp_path / "hard.txt"), "--out", str(tmp_path / name)]) == 0
        result = entities(tmp_path / name)
        assert sum(len(s["entities"]) for s in result) > 0
        lines = (tmp_path / "hard.txt").read_text().splitlines()
        for sentence in result:
            for e in sentence["entities"]:
                assert lines[sentence["line"] - 1][e["char_start"]:e["char_end"]] == e["text"]
    capsys.readouterr()


def test_the_layout_is_stated_never_guessed(folders, tmp_path, capsys):
    indexed = tmp_path / "indexed.tsv"
    indexed.write_text("1\tPeter\tB-PER\n2\tBlackburn\tI-PER\n3\tvisits\tO\n\n1\tParis\tB-LOC\n")
    model = ["predict", "--model", str(folders["iid"]), "--input", str(indexed)]
    for extra in ([], ["--tag-col", "-1"]):  # three columns: which is the token?
        assert main([*model, *extra, "--out", str(tmp_path / "a")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"{indexed}: 3 columns" in err and "--token-col" in err
    assert main([*model, "--token-col", "1", "--tag-col", "-1", "--out", str(tmp_path / "b")]) == 0
    assert [s["tokens"] for s in entities(tmp_path / "b")] == [["Peter", "Blackburn", "visits"], ["Paris"]]
    gold = [line.split()[1] for line in (tmp_path / "b" / "predictions.conll").read_text().splitlines() if line]
    assert gold == ["B-PER", "I-PER", "O", "B-LOC"] and (tmp_path / "b" / "predictions.npz").is_file()
    # with gold, predict prints the span F1 at once (seqeval's, both readings, of the labels evaluate scores: the
    # most probable ones, before predictions.conll's IOB2 repair) and how to get every metric
    saved = load_predictions(tmp_path / "b" / "predictions.npz")
    gold_seqs, pred_seqs = saved.sentence_labels(saved.gold), saved.sentence_labels(saved.predicted())
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (f"against the gold tags: F1 {100 * f1_score(gold_seqs, pred_seqs):.2f} (conlleval), "
                       f"{100 * f1_score(gold_seqs, pred_seqs, mode='strict', scheme=IOB2):.2f} (strict) over 2 "
                       f"sentences and 2 gold entities; every metric with intervals: ensemble-distill evaluate "
                       f"{tmp_path / 'b' / 'predictions.npz'}")
    assert main([*model, "--token-col", "1", "--out", str(tmp_path / "c")]) == 0  # tokens only: no gold, no npz
    assert "against the gold tags" not in capsys.readouterr().out
    assert [s["tokens"] for s in entities(tmp_path / "c")] == [["Peter", "Blackburn", "visits"], ["Paris"]]
    assert not (tmp_path / "c" / "predictions.npz").exists()
    two = tmp_path / "two.conll"  # token and tag: the token column is the other one
    two.write_text("Peter B-PER\nBlackburn I-PER\n")
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(two), "--tag-col", "-1",
                 "--out", str(tmp_path / "d")]) == 0
    assert entities(tmp_path / "d")[0]["tokens"] == ["Peter", "Blackburn"]


def test_a_jsonl_lines_own_fields_come_through_to_its_output_line(folders, tmp_path, capsys):
    records = [{"id": "doc-7#3", "tokens": SENTENCES[0], "meta": {"source": "feed"}},
               {"tokens": SENTENCES[1], "sentence": "mine", "id": 4}]  # a field named as ours is ours
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    first, second = entities(tmp_path / "out")
    assert list(first) == ["id", "meta", "sentence", "line", "tokens", "entities"]
    assert (first["id"], first["meta"], first["tokens"]) == ("doc-7#3", {"source": "feed"}, SENTENCES[0])
    assert (second["id"], second["sentence"], second["line"]) == (4, 1, 2)


@pytest.mark.parametrize("name", ["iid", "crf"])
def test_a_jsonl_line_of_no_tokens_keeps_its_output_line_with_no_entities(folders, tmp_path, capsys, name):
    """An empty document ("tokens": []) between two others: its line of entities.jsonl is there, id and all, with
    no entities, no block in predictions.conll, and the other lines are what they are without it."""
    records = [{"id": 1, "tokens": SENTENCES[0]}, {"id": 2, "tokens": []}, {"id": 3, "tokens": SENTENCES[3]}]
    (tmp_path / "with.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "without.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[::2]))
    (tmp_path / "none.jsonl").write_text(json.dumps({"id": 9, "tokens": []}) + "\n")
    for stem in ("with", "without", "none"):
        assert main(["predict", "--model", str(folders[name]), "--input", str(tmp_path / f"{stem}.jsonl"),
                     "--out", str(tmp_path / stem)]) == 0
    capsys.readouterr()
    lines, alone = entities(tmp_path / "with"), entities(tmp_path / "without")
    assert [line["id"] for line in lines] == [1, 2, 3]
    assert (lines[1]["tokens"], lines[1]["entities"], lines[1]["sentence"], lines[1]["line"]) == ([], [], 1, 2)
    for got, want in zip(lines[::2], alone):
        assert {k: v for k, v in got.items() if k not in ("sentence", "line")} == {
            k: v for k, v in want.items() if k not in ("sentence", "line")}
    assert (tmp_path / "with" / "predictions.conll").read_text() == (
        tmp_path / "without" / "predictions.conll").read_text()
    (only,) = entities(tmp_path / "none")
    assert (only["id"], only["entities"]) == (9, [])


def test_prediction_writes_no_cache(folders, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ENSEMBLE_DISTILL_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "in.jsonl").write_text(json.dumps({"tokens": SENTENCES[0]}) + "\n")
    assert main(["predict", "--model", str(folders["crf"]), "--input", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["entities.jsonl", "predictions.conll"]


def test_predictions_conll_keeps_a_word_that_holds_a_space_in_one_column(folders, tmp_path, capsys):
    """A JSON (or TAB-separated) word may hold a space: "New York" made a space-separated line of 5 fields."""
    (tmp_path / "in.jsonl").write_text(json.dumps({"tokens": ["Peter", "visited", "New York"]}) + "\n")
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "out")]) == 0
    rows = [line.split("\t") for line in (tmp_path / "out" / "predictions.conll").read_text().splitlines() if line]
    assert [row[0] for row in rows] == ["Peter", "visited", "New York"] and {len(row) for row in rows} == {3}


def batch_of(model, sentences):
    """Emissions of one-window sentences, computed here through the tagger's own layers."""
    from ensemble_distill.tasks.ner import tagger_emissions, window_batch

    split = model.split(sentences)
    assert len(split.windows) == len(sentences)
    batch = window_batch(split, np.arange(len(sentences)), model.tokenizer.pad_token_id)
    with torch.no_grad():
        return tagger_emissions(model.tagger, batch), batch["word_mask"]


def test_confidences_are_spans_py_exact_span_probabilities(folders, tmp_path):
    """An IID model: the IID formula on its distributions; a CRF and IID ensemble: the mean of the CRF's exact
    span marginal and the IID member's formula (spans.tagger_span_probabilities on the same emissions)."""
    span_labels = SpanLabels.from_names(LABELS)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"tokens": s}) + "\n" for s in SENTENCES))
    for names in (["iid"], ["crf", "iid2"], ["crf"]):
        models = [load_model(folders[n]) for n in names]
        out = tmp_path / "-".join(names)
        predict(models, tmp_path / "in.jsonl", out)
        emissions, mask = zip(*(batch_of(m, SENTENCES) for m in models))
        with torch.no_grad():
            mean = sum(m.tagger.distributions(e, mask[0]) for m, e in zip(models, emissions)) / len(models)
        flat = mean[mask[0]].numpy()
        offsets = np.concatenate([[0], np.cumsum(mask[0].sum(1).numpy())])
        if names == ["crf"]:  # a single CRF's labels are its best path
            with torch.no_grad():
                best = models[0].tagger.crf.viterbi(emissions[0], mask[0])[mask[0]].numpy()
        else:
            best = predicted_labels(flat, LABELS)
        spans = decode_spans(best, offsets, span_labels)
        assert len(spans) > 0
        with torch.no_grad():
            expected = tagger_span_probabilities([m.tagger for m in models], list(emissions), mask[0], spans,
                                                 span_labels)
        if names == ["iid"]:
            np.testing.assert_allclose(expected, iid_span_probabilities(flat, offsets, spans, span_labels))
        got = [(s["sentence"], e["start"], e["end"], e["type"], e["confidence"])
               for s in entities(out) for e in s["entities"]]
        assert [g[:4] for g in got] == [(int(s), int(a), int(b), span_labels.types[t])
                                        for s, a, b, t in zip(spans.sentence, spans.start, spans.end, spans.type)]
        np.testing.assert_allclose([g[4] for g in got], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sentences, error, message", [
    (["Peter visited Britain"], TypeError, "sentence 0 is a string, not a list of words"),
    ("Peter", TypeError, "must be a list of sentences"),
    ([["Peter", 3]], TypeError, "sentence 0, word 1 is 3, not a string"),
    ([["Peter"], ["visited", " "]], ValueError, "sentence 1, word 1 is blank"),
])
def test_distributions_from_python_refuse_what_is_not_lists_of_words(folders, sentences, error, message):
    """A sentence given as one string was tagged character by character (11 'words' for "Hello world")."""
    model = load_model(folders["iid"])
    with pytest.raises(error, match=message):
        model.distributions(sentences)
    assert model.distributions([]) == []
    (probs,) = model.distributions((("Peter", "visited"),))  # tuples are lists of words too
    assert probs.shape == (2, len(model.labels))


def test_long_sentences_iid_confidences_are_exact_on_the_merged_distributions(folders):
    model = load_model(folders["iid"])
    long = [w for s in SENTENCES for w in s] * 3  # 87 words: several windows of the 64-position encoder
    assert len(model.split([long]).windows) > 1
    tagged = tag([model], [long])
    (probs,) = model.distributions([long])
    spans = decode_spans(predicted_labels(probs, LABELS), [0, len(long)], SpanLabels.from_names(LABELS))
    np.testing.assert_allclose(tagged.confidence, iid_span_probabilities(probs, [0, len(long)], spans,
                                                                         SpanLabels.from_names(LABELS)), rtol=1e-6)


def by_hand(confidence, correct, n_gold, q):
    """The smallest threshold among the confidences whose kept spans' precision is at least q."""
    for t in sorted(set(confidence)):
        kept = confidence >= t
        if correct[kept].mean() >= q:
            return t, correct[kept].mean(), correct[kept].sum() / n_gold
    return None


def test_target_precision_picks_the_dev_threshold_and_reports_both_operating_points(folders, tmp_path, capsys):
    from seqeval.metrics.sequence_labeling import get_entities

    model = load_model(folders["iid"])
    tagged = tag([model], SENTENCES)
    predicted = [np.asarray(LABELS)[predicted_labels(d, LABELS)].tolist() for d in tagged.distributions]
    spans, confidence = tagged.spans, tagged.confidence
    order = np.argsort(confidence)
    assert len(order) >= 4
    wrong = list(order[:len(order) // 3]) + [order[-1]]  # the least confident third and the most confident one
    gold = [list(p) for p in predicted]
    for i in wrong:
        gold[spans.sentence[i]][spans.start[i]:spans.end[i]] = ["O"] * int(spans.end[i] - spans.start[i])
    dev = tmp_path / "dev.conll"
    dev.write_text("".join("".join(f"{w} {t}\n" for w, t in zip(s, g)) + "\n" for s, g in zip(SENTENCES, gold)))
    gold_spans = {(s, a, b + 1, k) for s, g in enumerate(gold) for k, a, b in get_entities(g)}
    correct = np.array([(s, a, b, SpanLabels.from_names(LABELS).types[t]) in gold_spans
                        for s, a, b, t in zip(spans.sentence, spans.start, spans.end, spans.type)])
    q = correct.sum() / (correct.sum() + 1) - 1e-9  # reached once the least confident third is dropped
    threshold, precision, recall = by_hand(confidence, correct, len(gold_spans), q)
    assert confidence.min() < threshold

    out = tmp_path / "out"
    layout = ["--tag-col", "-1", "--scheme", "iob1"]  # the model's own tags may open a span with I-
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(dev), *layout, "--dev", str(dev),
                 "--target-precision", str(q), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "threshold.json").read_text())
    assert report["threshold"] == pytest.approx(threshold) and report["temperature"] == 1.0  # raw confidences
    assert report["decode"] == "argmax"  # the labels whose spans the threshold was picked on
    for key in ("dev_operating_point", "input_operating_point"):  # the input is the dev file here
        assert report[key]["precision"] == pytest.approx(precision)
        assert report[key]["recall"] == pytest.approx(recall)
    assert f"threshold {threshold:.4f}" in printed and f"precision {precision:.4f}" in printed
    kept = [e["confidence"] for s in entities(out) for e in s["entities"]]
    assert len(kept) == (confidence >= threshold).sum() and min(kept) >= threshold

    # Plain text and jsonl tagged with the dev file's threshold: the columns are dev's, and the input keeps the
    # format its name says (a gold column given for dev does not make it CoNLL).
    text, lines = tmp_path / "news.txt", tmp_path / "news.jsonl"
    text.write_text("".join(" ".join(s) + "\n" for s in SENTENCES))
    lines.write_text("".join(json.dumps({"tokens": s}) + "\n" for s in SENTENCES))
    for given, extra in ((text, ["--format", "text"]), (text, []), (lines, [])):
        assert main(["predict", "--model", str(folders["iid"]), "--input", str(given), *extra, *layout,
                     "--dev", str(dev), "--target-precision", str(q), "--out", str(tmp_path / "t")]) == 0
        got = [{**s, "entities": [{k: v for k, v in e.items() if k not in ("char_start", "char_end")}
                                  for e in s["entities"]]} for s in entities(tmp_path / "t")]  # text input's
        assert got == [{**e, "line": i + 1} for i, e in enumerate(entities(out))]
        assert "input_operating_point" not in json.loads((tmp_path / "t" / "threshold.json").read_text())
    capsys.readouterr()
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(text), *layout, "--dev", str(dev),
                 "--target-precision", str(q), "--min-confidence", "0.5", "--out", str(tmp_path / "both")]) == 2
    assert "--min-confidence 0.5 and --target-precision" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(dev), *layout,
                 "--min-confidence", "0.5", "--out", str(tmp_path / "m")]) == 0
    assert sum(len(s["entities"]) for s in entities(tmp_path / "m")) == (confidence >= 0.5).sum()

    capsys.readouterr()
    always_wrong = tmp_path / "wrong.conll"  # gold without entities: no threshold reaches any precision
    always_wrong.write_text("".join("".join(f"{w} O\n" for w in s) + "\n" for s in SENTENCES))
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(dev), "--dev", str(always_wrong),
                 *layout, "--target-precision", "0.5", "--out", str(tmp_path / "u")]) == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # beside a warning
    assert err.startswith(f"ensemble-distill: error: {always_wrong}: no span-confidence threshold reaches precision "
                          "0.5")
    assert not (tmp_path / "u" / "entities.jsonl").exists()


@pytest.mark.parametrize("argv, message", [
    (["--format", "jsonl"], ':2: not a JSON object with "tokens"'),
    (["--format", "jsonl", "--tag-col", "-1"], "--tag-col and --token-col are for --format conll"),
    (["--target-precision", "0.9"], "--target-precision and --dev go together"),
    (["--dev", "x", "--target-precision", "0.9", "--format", "conll"], "give --tag-col"),
])
def test_bad_input_and_options_are_one_line(folders, tmp_path, capsys, argv, message):
    path = tmp_path / "in.jsonl"
    path.write_text('{"tokens": ["Peter"]}\n["Paris"]\n')
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(path), *argv,
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


GOLD = ["--tag-col", "-1"]


@pytest.mark.parametrize("content, argv, message", [
    ("Peter B-PER\n", [*GOLD, "--token-prefix", "[("], "--token-prefix: '[(' is not a regular expression"),
    ("Peter\n", ["--token-prefix", "[("], "--token-prefix: '[(' is not a regular expression"),  # no gold
    ("en:Peter B-PER\nde:visits O\n", [*GOLD, "--token-prefix", "en:"],
     ":2: token 'de:visits' does not start with --token-prefix 'en:'"),
    ("Peter B-PER\n", ["--tag-col", "3"], ":1: --tag-col 3 is outside the line's 2 columns"),
    ("Peter O B-PER\n", [*GOLD, "--token-col", "-4"], ":1: --token-col -4 is outside the line's 3 columns"),
    ("Peter O\nvisits I-LOC\n", [*GOLD, "--scheme", "iob2"], "invalid IOB2: 'I-LOC' after 'O' (an IOB2 span starts "
                                                            "with B-); --scheme iob1 reads it"),
    ("# a comment\nPeter B-PER\n", [*GOLD, "--token-col", "0", "--comment-prefix", ""],
     "line 1 starts with '#': if it is a comment line, --comment-prefix '#' skips comments"),
    ("Peter B-PER\n", [*GOLD, "--encoding", "no-such-codec"], "--encoding: 'no-such-codec'"),
])
def test_a_bad_reader_flag_is_named_as_typed_not_as_its_config_key(folders, tmp_path, capsys, content, argv,
                                                                     message):
    """--token-prefix '[(' was reported as data.token_prefix, a key of a config predict does not read."""
    path = tmp_path / "in.conll"
    path.write_text(content)
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(path), *argv,
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err and "data." not in err, err
    assert not (tmp_path / "out").exists()


def test_an_iob1_tag_of_an_unknown_type_is_quoted_as_the_file_writes_it(folders, tmp_path, capsys):
    """The message said 'B-FOO' (the tag converted to IOB2) where the file says I-FOO."""
    path = tmp_path / "iob1.conll"
    path.write_text("Peter I-PER\nBlackburn I-PER\nvisits O\nFoo I-FOO\nBar I-FOO\n")
    argv = ["predict", "--model", str(folders["iid"]), "--input", str(path), "--tag-col", "-1", "--scheme", "iob1"]
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    assert capsys.readouterr().err == (f"ensemble-distill: error: {path}:4: tag 'I-FOO' never occurs in the training "
                                       f"data (labels: {' '.join(LABELS)}); --unknown-tag O maps such tags to O, "
                                       "or, if this column is not the gold tags, --tag-col picks the column that is\n")
    with pytest.warns(UserWarning, match="2 tags never seen in training were mapped to O: I-FOO x2"):
        assert main([*argv, "--unknown-tag", "O", "--out", str(tmp_path / "mapped")]) == 0
    written = [line.split()[1] for line in (tmp_path / "mapped" / "predictions.conll").read_text().splitlines()
               if line]
    assert written == ["B-PER", "I-PER", "O", "B-FOO", "I-FOO"]  # the gold column is IOB2, as the file says


def conll_spans(out, column=-2):
    """{(sentence, type, start, end)} of predictions.conll's predicted column, by seqeval's strict IOB2 reading
    (which refuses nothing here: the column must be valid IOB2) and by its lenient (conlleval) reading."""
    from seqeval.metrics.sequence_labeling import get_entities
    from seqeval.scheme import IOB2, Entities

    sentences = [[line.split()[column] for line in block.splitlines()]
                 for block in (out / "predictions.conll").read_text().strip("\n").split("\n\n")]
    strict = {(s, kind, a, b) for s, tags in enumerate(sentences)
              for _, kind, a, b in (e.to_tuple() for e in Entities([tags], IOB2).entities[0])}
    lenient = {(s, kind, a, b + 1) for s, tags in enumerate(sentences) for kind, a, b in get_entities(tags)}
    return sentences, strict, lenient


def test_predictions_conll_is_valid_iob2_with_the_spans_of_entities_jsonl(tmp_path, monkeypatch):
    """Per-word argmax O I-PER I-PER O was written as is; the file says IOB2, so it is written O B-PER I-PER O,
    the spans entities.jsonl gives; the probabilities stay those of the model's labels, the .npz its
    distributions."""
    from types import SimpleNamespace

    from ensemble_distill import tag_text

    p = {"O": [0.7, 0.1, 0.05, 0.05, 0.1], "I-PER": [0.2, 0.05, 0.05, 0.1, 0.6], "I-LOC": [0.1, 0.1, 0.7, 0.05, 0.05]}
    rows = [["O", "I-PER", "I-PER", "O"], ["I-LOC", "I-PER"]]  # the second: I-LOC opens, I-PER after LOC opens
    distributions = [np.array([p[name] for name in names], dtype=np.float32) for names in rows]
    labels = SpanLabels.from_names(LABELS)
    offsets = np.array([0, 4, 6])
    predicted = np.split(predicted_labels(np.concatenate(distributions), LABELS), offsets[1:-1])
    spans = decode_spans(np.concatenate(predicted), offsets, labels)
    confidence = iid_span_probabilities(np.concatenate(distributions), offsets, spans, labels)
    monkeypatch.setattr(tag_text, "tag", lambda *_, **__: tag_text.Tagged(LABELS, distributions, predicted, spans,
                                                                          confidence))
    words = [["w1", "w2", "w3", "w4"], ["w5", "w6"]]
    gold = [["O", "B-PER", "I-PER", "O"], ["B-LOC", "B-PER"]]
    path = tmp_path / "in.conll"
    path.write_text("".join("".join(f"{w} {t}\n" for w, t in zip(ws, ts)) + "\n" for ws, ts in zip(words, gold)))
    model = SimpleNamespace(tokenizer=None, labels=LABELS)
    tag_text.predict([model], path, tmp_path / "out", tag_col=-1)

    written, strict, lenient = conll_spans(tmp_path / "out")
    assert written == [["O", "B-PER", "I-PER", "O"], ["B-LOC", "B-PER"]]
    for tags in written:
        validate_iob2(tags)
    probs = [line.split()[-1] for line in (tmp_path / "out" / "predictions.conll").read_text().splitlines() if line]
    assert probs == ["0.7000", "0.6000", "0.6000", "0.7000", "0.7000", "0.6000"]  # p(O), p(I-PER), ..., p(I-PER)
    from_jsonl = {(s["sentence"], e["type"], e["start"], e["end"]) for s in entities(tmp_path / "out")
                  for e in s["entities"]}
    assert from_jsonl == strict == lenient == {(0, "PER", 1, 3), (1, "LOC", 0, 1), (1, "PER", 1, 2)}
    saved = load_predictions(tmp_path / "out" / "predictions.npz")
    np.testing.assert_allclose(saved.probs, np.concatenate(distributions), atol=1e-6)
    assert [LABELS[i] for i in saved.predicted()] == [name for names in rows for name in names]  # raw argmax


def test_the_models_conll_column_is_iob2_with_entities_jsonls_spans(folders, tmp_path, capsys):
    """The same with the random fixture models, which emit I- tags that open spans."""
    (tmp_path / "in.conll").write_text(conll_tokens(SENTENCES))
    repaired = 0
    for name in ("iid", "crf-strong"):
        out = tmp_path / name
        assert main(["predict", "--model", str(folders[name]), "--input", str(tmp_path / "in.conll"),
                     "--out", str(out)]) == 0
        written, strict, lenient = conll_spans(out, column=1)
        for tags in written:
            validate_iob2(tags)
        from_jsonl = {(s["sentence"], e["type"], e["start"], e["end"]) for s in entities(out) for e in s["entities"]}
        assert from_jsonl == strict == lenient
        raw = tag([load_model(folders[name])], SENTENCES).predicted
        repaired += sum(LABELS[i] != w for r, ws in zip(raw, written) for i, w in zip(r, ws))
    capsys.readouterr()
    assert repaired > 0, "the fixture models must emit an I- tag that opens a span"


def test_decode_iob2_tags_with_the_best_valid_path_of_the_distributions(folders, tmp_path, capsys):
    """predict --decode iob2: the labels are decoding.iob2_labels of the model's distributions (not the argmax,
    which puts I- tags after O here), stored in predictions.npz for evaluate, written as they are to
    predictions.conll, and entities.jsonl has their spans. (A single CRF's: in the test of its best path.)"""
    from ensemble_distill.decoding import iob2_labels

    (tmp_path / "in.conll").write_text("".join("".join(f"{w} O\n" for w in s) + "\n" for s in SENTENCES))
    out = tmp_path / "iid"
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(tmp_path / "in.conll"), "--tag-col", "-1",
                 "--out", str(out), "--decode", "iob2"]) == 0
    distributions = np.concatenate(tag([load_model(folders["iid"])], SENTENCES).distributions)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in SENTENCES])])
    expected = iob2_labels(distributions, offsets, LABELS)
    assert (expected != predicted_labels(distributions, LABELS)).any()
    saved = load_predictions(out / "predictions.npz")
    assert saved.pred.tolist() == expected.tolist() and saved.meta["decode"] == "iob2"
    written, strict, lenient = conll_spans(out, column=2)
    assert [w for ws in written for w in ws] == [LABELS[i] for i in expected]
    from_jsonl = {(s["sentence"], e["type"], e["start"], e["end"]) for s in entities(out) for e in s["entities"]}
    assert from_jsonl == strict == lenient
    capsys.readouterr()


def test_a_rerun_into_the_same_folder_leaves_no_output_of_the_earlier_one(folders, tmp_path, recwarn):
    """A predict without gold into a folder where one with gold wrote predictions.npz (and evaluate its -eval
    folder) removes that file, which scored another input, and says so; non-ASCII words are written as such."""
    out = tmp_path / "out"
    (tmp_path / "gold.conll").write_text("".join("".join(f"{w} O\n" for w in s) + "\n" for s in SENTENCES))
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(tmp_path / "gold.conll"), "--tag-col", "-1",
                 "--out", str(out)]) == 0
    (out / "predictions-eval").mkdir()
    (tmp_path / "new.txt").write_text("Zoë Müller-Lüdenscheidt visits Paris .\n")
    assert main(["predict", "--model", str(folders["iid"]), "--input", str(tmp_path / "new.txt"),
                 "--out", str(out)]) == 0
    said = " | ".join(str(w.message) for w in recwarn)
    assert not (out / "predictions.npz").exists() and f"{out}: removed predictions.npz of an earlier predict" in said
    assert "predictions-eval scores an earlier predictions.npz" in said
    assert sorted(p.name for p in out.iterdir()) == ["entities.jsonl", "predictions-eval", "predictions.conll"]
    assert '"tokens": ["Zoë", "Müller-Lüdenscheidt"' in (out / "entities.jsonl").read_text(encoding="utf-8")


def test_a_crf_span_inside_a_window_gets_that_windows_exact_marginal(folders):
    """A CRF reads a long sentence window by window: a span owned by the first window, with the word after it in
    that window too, has the span marginal of the CRF over that window's words alone (the same encoder input)."""
    model = load_model(folders["crf"])
    long = [w for s in SENTENCES for w in s] * 3
    first = model.split([long]).windows[0]
    last = first.first_word + len(first.word_starts)
    whole = tag([model], [long])
    alone = tag([model], [long[:last]])
    keys = {(int(a), int(b), int(t)): c for a, b, t, c in zip(alone.spans.start, alone.spans.end, alone.spans.type,
                                                             alone.confidence)}
    inside = [(int(a), int(b), int(t), c) for a, b, t, c in zip(whole.spans.start, whole.spans.end, whole.spans.type,
                                                               whole.confidence) if b < first.own_end]
    matched = [(c, keys[a, b, t]) for a, b, t, c in inside if (a, b, t) in keys]
    assert matched
    np.testing.assert_allclose(*zip(*matched), rtol=1e-6)
    assert ((whole.confidence >= 0) & (whole.confidence <= 1)).all()


def best_path_by_enumeration(crf, emissions, valid_only: bool = False) -> np.ndarray:
    """The highest-scoring label sequence of one sentence, every sequence scored by hand: start + emissions +
    transitions + end (the CRF's definition, models/crf.py), the best of all L^n (`valid_only`: of those that
    are valid IOB2, validate_iob2)."""
    transitions, start, end = (t.detach().double().numpy() for t in crf._scores())
    e = emissions.double().numpy()
    n, n_labels = e.shape
    paths = np.array(np.meshgrid(*[np.arange(n_labels)] * n, indexing="ij")).reshape(n, -1).T  # [L^n, n]
    score = start[paths[:, 0]] + end[paths[:, -1]] + e[np.arange(n), paths].sum(1)
    score += transitions[paths[:, :-1], paths[:, 1:]].sum(1)
    if valid_only:
        score[[not is_valid_iob2([LABELS[i] for i in path]) for path in paths]] = -np.inf
    return paths[score.argmax()]


def is_valid_iob2(tags) -> bool:
    try:
        validate_iob2(tags)
    except TagError:
        return False
    return True


def test_a_single_crf_tags_with_its_best_path_and_an_ensemble_with_its_marginals(folders, tmp_path):
    """A single CRF's predicted labels (predictions.conll, entities, predictions.npz's `pred`) are its best path,
    found here by scoring every label sequence; its printed probabilities stay its marginals. The same CRF in an
    ensemble tags with the argmax of the mean marginals (paper §3.1, as evaluation scores them)."""
    short = [SENTENCES[0], SENTENCES[3]]  # 7 and 4 words: 5^7 sequences enumerated
    model = load_model(folders["crf-strong"])
    emissions, mask = batch_of(model, short)
    best = [best_path_by_enumeration(model.tagger.crf, emissions[i, : len(words)]) for i, words in enumerate(short)]
    with torch.no_grad():
        marginals = model.tagger.distributions(emissions, mask)
    argmax = [predicted_labels(marginals[i, : len(w)].numpy(), LABELS) for i, w in enumerate(short)]
    assert any((b != a).any() for b, a in zip(best, argmax)), "the fixture must tell the two rules apart"

    gold = [["O"] * len(words) for words in short]
    (tmp_path / "in.conll").write_text("".join("".join(f"{w} {t}\n" for w, t in zip(words, tags)) + "\n"
                                               for words, tags in zip(short, gold)))
    predict([model], tmp_path / "in.conll", tmp_path / "alone", tag_col=1)
    rows = [line.split() for line in (tmp_path / "alone" / "predictions.conll").read_text().splitlines() if line]
    # the best path as valid IOB2 (an I-X opening a span written B-X: the reader's IOB1 conversion), its marginals
    assert [r[2] for r in rows] == [tag for path in best for tag in iob1_to_iob2([LABELS[i] for i in path])]
    flat_marginals = np.concatenate([m.numpy()[: len(w)] for m, w in zip(marginals, short)])
    np.testing.assert_allclose([float(r[3]) for r in rows],
                               flat_marginals[np.arange(len(rows)), np.concatenate(best)], atol=1e-4)
    span_labels = SpanLabels.from_names(LABELS)
    offsets = np.array([0, len(short[0]), len(short[0]) + len(short[1])])
    spans = decode_spans(np.concatenate(best), offsets, span_labels)
    assert [(e["start"], e["end"], e["type"]) for s in entities(tmp_path / "alone") for e in s["entities"]] == [
        (int(a), int(b), span_labels.types[t]) for a, b, t in zip(spans.start, spans.end, spans.type)]
    with np.load(tmp_path / "alone" / "predictions.npz") as saved:
        np.testing.assert_array_equal(saved["pred"], np.concatenate(best))
    # --decode iob2: the best path among the valid IOB2 ones under the CRF's own scores
    valid = [best_path_by_enumeration(model.tagger.crf, emissions[i, : len(w)], True) for i, w in enumerate(short)]
    assert not all(is_valid_iob2([LABELS[i] for i in path]) for path in best), "the fixture must need the rule"
    predict([model], tmp_path / "in.conll", tmp_path / "iob2", tag_col=1, decode="iob2")
    with np.load(tmp_path / "iob2" / "predictions.npz") as saved:
        np.testing.assert_array_equal(saved["pred"], np.concatenate(valid))

    tagged = tag([model, model], short)  # an ensemble, even of one CRF twice, tags with its mean marginals
    assert not tagged.viterbi
    for got, expected in zip(tagged.predicted, argmax):
        np.testing.assert_array_equal(got, expected)



def test_a_temperature_scales_the_distributions_and_the_span_confidences_over_them(folders, tmp_path, capsys):
    """IID: softmax(logits / T) from the model's own emissions; an ensemble: its mean q scaled to q^(1/T)
    renormalised (evaluation's TS); the confidences: the IID product formula over the scaled distributions; a
    single CRF is refused, and so is a temperature that is not a finite number > 0."""
    span_labels, t = SpanLabels.from_names(LABELS), 2.5
    gold = tmp_path / "gold.conll"  # with gold tags predict writes predictions.npz
    tags = ["B-PER", "B-LOC"] + ["O"] * 9
    gold.write_text("".join("".join(f"{w} {g}\n" for w, g in zip(s, tags)) + "\n" for s in SENTENCES))
    for names in (["iid"], ["iid", "crf"]):
        models = [load_model(folders[n]) for n in names]
        emissions, mask = zip(*(batch_of(m, SENTENCES) for m in models))
        with torch.no_grad():
            if names == ["iid"]:
                expected = (emissions[0] / t).softmax(-1)[mask[0]].double().numpy()
            else:
                mean = sum(m.tagger.distributions(e, mask[0]) for m, e in zip(models, emissions)) / len(models)
                expected = mean[mask[0]].double().numpy() ** (1 / t)
                expected /= expected.sum(1, keepdims=True)
        tagged = tag(models, SENTENCES, temperature=t)
        np.testing.assert_allclose(np.concatenate(tagged.distributions), expected, atol=2e-6)
        raw = tag(models, SENTENCES)
        assert (np.concatenate(tagged.predicted) == np.concatenate(raw.predicted)).all()  # the argmax is kept
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in SENTENCES])])
        assert len(tagged.spans) > 0
        np.testing.assert_allclose(tagged.confidence, iid_span_probabilities(expected, offsets, tagged.spans,
                                                                             span_labels), rtol=1e-5)
        assert not np.allclose(tagged.confidence, raw.confidence, rtol=1e-3)
        out = tmp_path / "-".join(names)
        predict(models, gold, out, temperature=t, tag_col=-1)
        preds = load_predictions(out / "predictions.npz")
        np.testing.assert_allclose(preds.probs, expected, atol=2e-6)
        assert preds.meta["temperature"] == t
        confidences = [e["confidence"] for s in entities(out) for e in s["entities"]]
        np.testing.assert_allclose(confidences, tagged.confidence, rtol=1e-6)

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"tokens": SENTENCES[0]}) + "\n")
    base = ["predict", "--input", str(jsonl), "--out", str(tmp_path / "refused")]
    for argv, problem in (([*base, "--model", str(folders["crf"]), "--temperature", "1.5"], "a CRF model is not "
                                                                                               "temperature-scaled"),
                          *(([*base, "--model", str(folders["iid"]), "--temperature", v], "must be a finite number")
                            for v in ("0", "-1", "nan", "inf")),
                          ([*base, "--model", str(folders["iid"]), "--temperature", "2", "--calibrated"],
                           "not allowed with argument")):
        try:
            status = main(argv)
        except SystemExit as usage:  # argparse's refusals
            status = usage.code
        assert status == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and problem in err, err
    assert not (tmp_path / "refused" / "entities.jsonl").exists()


def test_gold_tags_the_model_lacks_are_refused_naming_the_option_or_mapped_to_o(folders, tmp_path, capsys):
    """WNUT-17's B-location is no tag of a CoNLL model: refused by default naming the file, the line and
    --unknown-tag; --unknown-tag O maps it (and I-location) to O, as data.unknown_tag = "O" does in training, in
    predictions.npz's gold and for the --dev threshold, with one warning."""
    gold = [["B-PER", "I-PER", "O", "B-location", "O", "B-location", "I-location"], *[["O"] * len(s)
                                                                                      for s in SENTENCES[1:]]]
    wnut = tmp_path / "wnut.conll"
    wnut.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(s, g)) + "\n" for s, g in zip(SENTENCES, gold)))
    argv = ["predict", "--model", str(folders["iid"]), "--input", str(wnut), "--tag-col", "-1"]
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert err == (f"ensemble-distill: error: {wnut}:4: tag 'B-location' never occurs in the training data (labels: "
                   f"{' '.join(LABELS)}); --unknown-tag O maps such tags to O, or, if this column is not the gold "
                   "tags, --tag-col picks the column that is\n"), err
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "mapped"
    with pytest.warns(UserWarning, match="3 tags never seen in training were mapped to O: B-location x2, "
                                         "I-location x1"):
        assert main([*argv, "--unknown-tag", "O", "--out", str(out)]) == 0
    expected = [LABELS.index(t) if t in LABELS else 0 for g in gold for t in g]  # O is label 0
    np.testing.assert_array_equal(load_predictions(out / "predictions.npz").gold, expected)
    text = tmp_path / "news.txt"  # the --dev file's gold is read the same way, before anything is tagged
    text.write_text("".join(" ".join(s) + "\n" for s in SENTENCES))
    with_dev = ["predict", "--model", str(folders["iid"]), "--input", str(text), "--format", "text", "--tag-col",
                "-1", "--dev", str(wnut), "--target-precision", "0.01"]
    assert main([*with_dev, "--out", str(tmp_path / "dev-refused")]) == 2
    assert f"{wnut}:4: tag 'B-location' never occurs" in capsys.readouterr().err
    assert not (tmp_path / "dev-refused").exists()
    with pytest.warns(UserWarning, match="mapped to O"):
        status = main([*with_dev, "--unknown-tag", "O", "--out", str(tmp_path / "dev")])
    err = capsys.readouterr().err
    assert status == 0 or "no span-confidence threshold reaches precision 0.01" in err, err
    with pytest.raises(SystemExit):  # the setting's own names only
        main([*argv, "--unknown-tag", "o", "--out", str(tmp_path / "x")])
    assert "argument --unknown-tag: must be one of error, O, got 'o'" in capsys.readouterr().err
