"""`reproduce --scale smoke` end to end on fixture files laid out like ../shared/data: the files it writes, a rerun
that retrains nothing, --dry-run, --only, the numbers in its tables, and its HTML page in headless Chromium."""

import csv
import gzip
import json
import re
import shutil
import socket
import subprocess
import threading
import tomllib
from contextlib import ExitStack
from types import SimpleNamespace

import numpy as np
import pytest
from test_runs import held_by_another_process
from test_tasks_nmt import write_copy_task

from ensemble_distill.calibration.comparison import compare
from ensemble_distill.cli import main
from ensemble_distill.errors import UserError
from ensemble_distill.paper_report import significance_floor
from ensemble_distill.reproduce import FEATURES, POLL_SECONDS, build_plan, missing_features, timed, write_wnut17
from ensemble_distill.tables import duration

from conftest import CONLL_SENTENCES, write_conll

# WNUT-17 test sentences (token TAB tag, IOB2), their types within what the CoNLL fixture's labels can hold after
# the mapping: person (B, I) -> PER, location -> LOC, corporation, group (B, I) -> ORG, product -> MISC.
WNUT = [[("Peter", "B-person"), ("Blackburn", "I-person"), ("visited", "O"), ("Britain", "B-location")],
        [("The", "O"), ("European", "B-group"), ("Union", "I-group"), ("likes", "O"), ("EU-wide", "B-product")],
        [("Fischler", "B-person"), ("left", "O"), ("Germany", "B-corporation"), ("today", "O")]]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Tiny files in ../shared/data's layout: CoNLL-2003, Europarl (5 TAB columns), WNUT-17, Multi30k (gzip)."""
    root = tmp_path_factory.mktemp("data")
    (root / "conll2003-en").mkdir()
    write_conll(root / "conll2003-en" / "eng.train", CONLL_SENTENCES, repeat=5)
    write_conll(root / "conll2003-en" / "eng.testa", CONLL_SENTENCES[:4])
    write_conll(root / "conll2003-en" / "eng.testb", CONLL_SENTENCES[4:])
    (root / "europarl-ner-de").mkdir()
    for name, sentences, repeat in (("train", CONLL_SENTENCES, 5), ("dev", CONLL_SENTENCES[:4], 1),
                                    ("test", CONLL_SENTENCES[4:], 1)):
        blocks = ["\n".join(f"{p.split(' ')[0]}\t{p.split(' ')[0].lower()}\tNN\tI-NC\t{p.split(' ')[1]}"
                            for p in s.split("|")) for s in sentences * repeat]
        (root / "europarl-ner-de" / f"{name}.tsv").write_text("\n\n".join(blocks) + "\n")
    (root / "wnut17").mkdir()
    (root / "wnut17" / "emerging.test.annotated").write_text(
        "\n\n".join("\n".join(f"{t}\t{g}" for t, g in s) for s in WNUT) + "\n")
    copy = write_copy_task(root / "copy")
    (root / "multi30k-de-en").mkdir()
    for split, stem in (("train", "train"), ("dev", "val"), ("test", "test_2016_flickr")):
        for side, lang in (("src", "de"), ("tgt", "en")):
            with gzip.open(root / "multi30k-de-en" / f"{stem}.{lang}.gz", "wt") as f:
                f.write((copy / f"{split}.{side}").read_text())
    return root


@pytest.fixture(scope="module")
def report(data_root, tiny_encoder, tmp_path_factory):
    """The smoke scale run once over the fixtures: (its output folder, the --data/--set arguments, stdout)."""
    out = tmp_path_factory.mktemp("report") / "smoke"
    args = ["--scale", "smoke", "--data", str(data_root), "--set", f"encoder.name={tiny_encoder}",
            "--set", f"encoder.cache_dir={out.parent / 'cache'}", "--set", "data.vocab_size=48"]
    return out, args


def run(capsys, report, *extra):
    out, args = report
    code = main(["reproduce", *args, "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def model_times(out):
    return {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/*/model.safetensors")}


def test_smoke_end_to_end_then_a_rerun_reuses_everything(report, capsys):
    out = report[0]
    code, text, _ = run(capsys, report, "--dry-run")
    assert code == 0 and not (out / "runs").exists()  # a dry run runs nothing
    lines = text.splitlines()
    assert any(line.startswith("table4:") and line.endswith("[to do]") for line in lines)
    assert any(line.startswith("table5:") and line.endswith("[to do]") for line in lines)
    assert any(line.startswith("table1:") and line.endswith("[to do]") for line in lines)
    assert "todo  train ner-en-iid" in text and "estimated time left" in text

    code, text, err = run(capsys, report)
    assert code == 0, err
    steps = int(re.search(r"(\d+) of (\d+) steps run", text).group(2))
    assert f"{steps} of {steps} steps run" in text
    done = [e.name for e in build_plan("smoke", out).experiments if not missing_features(e.needs)]
    for name in done:
        kind = "figures" if name.startswith("figure") else "tables"
        suffixes = (".png",) if kind == "figures" else (".md", ".csv")
        assert all((out / kind / f"{name}{s}").is_file() for s in suffixes), name
    page = (out / "index.html").read_text()
    assert page.count("<img ") == 3 and "not run" not in page and "usual single model" in page
    assert re.search(r"<td>\d+ s</td>", page) and " min</td>" not in page  # smoke steps take seconds
    assert not (out / "timings.json.lock").exists()  # the lock is on OUT itself

    before = model_times(out)
    code, text, _ = run(capsys, report)
    assert code == 0 and f"0 of {steps} steps run" in text
    assert model_times(out) == before and len(before) > 30  # nothing retrained
    code, text, _ = run(capsys, report, "--dry-run")
    assert "todo" not in text and "[to do]" not in text
    assert re.search(r"done  train ner-en-iid  took \d", text)


def test_tables_hold_the_runs_numbers_and_the_bootstrap_marks(report):
    out = report[0]
    rows = list(csv.reader((out / "tables" / "table1.csv").open()))
    header = rows[0]
    values = [dict(zip(header, r)) for r in rows[1:rows.index([])]]
    ev = out / "runs" / "ner-en-crf" / "eval" / "test"

    def value(system, metric, setting="English, CRF"):
        (row,) = [r for r in values if r["setting"] == setting and r["system"] == system and r["metric"] == metric]
        return row

    metrics = [json.loads((ev / f"individual-{i}" / "metrics.json").read_text())["metrics"]["b_ece"]["value"]
               for i in range(2)]
    row = value("individuals (2, mean ± s.e.)", "b_ece")
    assert float(row["value"]) == pytest.approx(np.mean(metrics))
    assert float(row["se"]) == pytest.approx(np.std(metrics, ddof=1) / np.sqrt(2))
    ensemble = json.loads((ev / "ensemble-3" / "metrics.json").read_text())["metrics"]["f1_conlleval"]
    assert float(value("ensemble of 3", "f1_conlleval")["value"]) == pytest.approx(ensemble["value"])

    # The student's comparisons are calibration.compare's, and its marks say which are significant.
    comparisons = [dict(zip(rows[rows.index([]) + 1], r)) for r in rows[rows.index([]) + 2:]]
    student = "IID student of the ensemble of 3"
    mine = [c for c in comparisons if c["setting"] == "English, CRF" and c["system"] == student]
    assert [c["versus"] for c in mine] == (["single (ner-en-crf individual-0)"] * 2
                                           + ["teacher (ner-en-crf ensemble-3)"] * 2)
    expected = compare(ev / "student-3" / "predictions.npz", ev / "ensemble-3" / "predictions.npz",
                       ["f1_conlleval", "b_ece"], n_boot=20, progress=False)
    for got, want in zip(mine[2:], expected):
        assert float(got["p_value"]) == pytest.approx(want["p_value"])
        assert float(got["difference"]) == pytest.approx(want["difference"])
        assert ("†" in value(student, want["metric"])["significant_vs"]) == want["significant"]
    table1 = (out / "tables" / "table1.md").read_text()
    assert student in table1 and "| B-ECE* |" in table1 and "| F1 |" in table1  # only ECE-type columns marked
    caption = table1.splitlines()[-1]
    assert "* bias-corrected: an ECE measured on a sample reads high" in caption
    assert "F1 is conlleval's" in caption and "scored on its dataset's test split" in caption
    assert "Members train on 9/10 of the training data, early-stopping on the other tenth" in caption  # the default
    assert ("¶ marks a value that differs significantly from the run's single model (individual-0, or member-0); "
            "† from the student's teacher ensemble: paired sentence bootstrap") in caption
    assert "scored on its dataset's dev split" in (out / "tables" / "table8.md").read_text().splitlines()[-1]

    table3 = (out / "tables" / "table3.csv").read_text()
    assert "V' = 4" in table3 and "V' = 8" in table3 and "adaptive 1 - 0.1 (at most 8)" in table3
    shift = (out / "tables" / "domain-shift.md").read_text()
    assert "| English, IID | student-3 |" in shift and "corporation and group → ORG" in shift
    # and out of domain what a user would pick instead: the usual models, and the students trained as them
    for row in ("| English, IID | student-3-as-baseline |", "| English, CRF | student-3-as-baseline-long |",
                "| English, usual single model | individual-0 |",
                "| English, usual single model, twice the epochs | individual-0 |"):
        assert row in shift, row


def test_table5_sets_raw_and_temperature_scaled_side_by_side_with_marks(report):
    out = report[0]
    rows = list(csv.reader((out / "tables" / "table5.csv").open()))
    header, blank = rows[0], rows.index([])
    values = {(r[0], r[1], r[2]): dict(zip(header, r)) for r in rows[1:blank]}
    ev = out / "runs" / "ner-en-iid" / "eval" / "test"

    def record(name):
        return json.loads((ev / name / "metrics.json").read_text())

    # A student of the raw ensemble and one of the temperature-scaled ensemble, each raw and scaled on test.
    for label, name in (("IID student of the ensemble of 3", "student-3"),
                        ("IID student of the TS ensemble of 3", "student-ts-3")):
        raw, scaled = record(name), record(f"{name}-ts")
        got = {m: float(values["English, IID", label, m]["value"]) for m in ("b_ece", "b_ece_ts", "temperature")}
        assert got["b_ece"] == pytest.approx(raw["metrics"]["b_ece"]["value"])
        assert got["b_ece_ts"] == pytest.approx(scaled["metrics"]["b_ece"]["value"])
        assert got["temperature"] == pytest.approx(scaled["predictions_meta"]["temperature"])
    # The individuals' T is the mean of theirs; the usual single model has its own row.
    ts = [record(f"individual-{i}-ts")["predictions_meta"]["temperature"] for i in range(2)]
    assert float(values["English, IID", "individuals (2, mean ± s.e.)", "temperature"]["value"]) == pytest.approx(
        np.mean(ts))
    assert ("English, usual single model", "usual single model", "b_ece_ts") in values
    assert any(key[0] == "German, IID" for key in values)

    # TS columns compare the scaled student with the scaled systems (calibration.compare of the -ts files).
    comparisons = [dict(zip(rows[blank + 1], r)) for r in rows[blank + 2:]]
    mine = {(c["versus"], c["metric"]): c for c in comparisons
            if c["setting"] == "English, IID" and c["system"] == "IID student of the TS ensemble of 3"}
    versus = ("single (ner-en-iid individual-0)", "teacher (ner-en-iid ensemble-3-ts)",
              "usual (ner-en-baseline individual-0)")
    assert set(mine) == {(v, m) for v in versus for m in ("f1_conlleval", "b_ece")} | {
        (v, "b_ece_ts") for v in ("single (ner-en-iid individual-0-ts)", "teacher (ner-en-iid ensemble-3-ts)",
                                  "usual (ner-en-baseline individual-0-ts)")}
    want = compare(ev / "student-ts-3-ts" / "predictions.npz", ev / "ensemble-3-ts" / "predictions.npz", ["b_ece"],
                   n_boot=20, progress=False)[0]
    got = mine["teacher (ner-en-iid ensemble-3-ts)", "b_ece_ts"]
    assert float(got["difference"]) == pytest.approx(want["difference"])
    assert float(got["p_value"]) == pytest.approx(want["p_value"])
    marks = values["English, IID", "IID student of the TS ensemble of 3", "b_ece_ts"]["significant_vs"]
    assert ("†" in marks) == want["significant"]
    text = (out / "tables" / "table5.md").read_text()
    assert "| B-ECE* | B-ECE TS* |" in text and "Europarl German" in text.splitlines()[0]
    assert "‡ from the usual single model (configs/conll-baseline.toml)" in text.splitlines()[-1]


def table4(out) -> tuple[dict, list[dict]]:
    """table4.csv's values {(setting, system, metric): its row} and its comparison rows."""
    rows = list(csv.reader((out / "tables" / "table4.csv").open()))
    header, blank = rows[0], rows.index([])
    return ({(r[0], r[1], r[2]): dict(zip(header, r)) for r in rows[1:blank]},
            [dict(zip(rows[blank + 1], r)) for r in rows[blank + 2:]])


def test_table7_has_label_smoothed_students_of_the_ensembles_without_and_with_it(report):
    """The paper's Table 7: members with α = 0.1, and "LS Distilled" students of both runs' ensembles, each system
    of the smoothed run compared with the same system of the run without (◇)."""
    from ensemble_distill.config import DistillConfig, load_config

    out = report[0]
    rows = list(csv.reader((out / "tables" / "table7.csv").open()))
    blank = rows.index([])
    systems = {(r[0], r[1]) for r in rows[1:blank]}
    student = "IID student of the ensemble of 3, label smoothing 0.1"
    assert {("German, IID", student), ("German, IID, label smoothing 0.1", student),
            ("German, IID", "IID student of the ensemble of 3")} <= systems
    assert ("German, IID, label smoothing 0.1", "IID student of the ensemble of 3") not in systems
    for run, members in (("ner-de-iid", 0.0), ("ner-de-iid-ls", 0.1)):
        assert load_config(out / "runs" / run / "config.toml").train.label_smoothing == members
        settings = load_config(out / "runs" / run / "students" / "student-3-ls0.1" / "config.toml", DistillConfig)
        assert settings.distill.label_smoothing == 0.1 and settings.distill.ensemble_run.endswith(run)
    comparisons = [dict(zip(rows[blank + 1], r)) for r in rows[blank + 2:]]
    versus = {(c["system"], c["versus"]) for c in comparisons if c["versus"].startswith("unsmoothed")}
    assert versus == {("ensemble of 2", "unsmoothed (ner-de-iid ensemble-2)"),
                      ("ensemble of 3", "unsmoothed (ner-de-iid ensemble-3)"),
                      ("IID student of the ensemble of 2, label smoothing 0.1",
                       "unsmoothed (ner-de-iid student-2-ls0.1)"),
                      (student, "unsmoothed (ner-de-iid student-3-ls0.1)")}
    caption = (out / "tables" / "table7.md").read_text().splitlines()[-1]
    assert "◇ from the same system of the run without label smoothing" in caption


def test_table4_compares_the_snapshot_ensemble_with_the_seed_ensemble(report):
    out = report[0]
    values, comparisons = table4(out)
    snapshots, seeds = (out / "runs" / f"nmt-de-en-{kind}" / "eval" / "test" for kind in ("snapshots", "seeds"))
    for setting, ev in (("de→en, snapshot ensemble (SGDR)", snapshots),
                        ("de→en, seed ensemble, same budget per member", seeds)):
        bleu = json.loads((ev / "ensemble-2" / "metrics.json").read_text())["metrics"]["bleu"]["value"]
        assert float(values[setting, "ensemble of 2", "bleu"]["value"]) == pytest.approx(bleu)
    # The snapshots are the cycles of one training (result.json says which), the seeds trained apart.
    members = [json.loads((out / "runs" / "nmt-de-en-snapshots" / "members" / f"member-{i}" / "result.json")
                          .read_text()) for i in range(2)]
    assert [m["snapshot"] for m in members] == [1, 2]
    (got,) = [c for c in comparisons if c["versus"] == "seeds (nmt-de-en-seeds ensemble-2)" and c["metric"] == "ece_1"]
    want = compare(snapshots / "ensemble-2" / "predictions.npz", seeds / "ensemble-2" / "predictions.npz",
                   ["bleu", "ece_1"], n_boot=20, progress=False)[1]
    assert float(got["difference"]) == pytest.approx(want["difference"])
    assert float(got["p_value"]) == pytest.approx(want["p_value"])
    marks = values["de→en, snapshot ensemble (SGDR)", "ensemble of 2", "ece_1"]["significant_vs"]
    assert ("§" in marks) == want["significant"]
    # the snapshots are labelled as such, not as individuals
    assert ("de→en, snapshot ensemble (SGDR)", "snapshots (2, mean ± s.e.)", "bleu") in values
    assert ("de→en, seed ensemble, same budget per member", "members (2, mean ± s.e.)", "bleu") in values
    caption = (out / "tables" / "table4.md").read_text().splitlines()[-1]
    assert ("¶ marks a value that differs significantly from the seed run's single model (member-0; NER); § from "
            "the seed ensemble of its size") in caption and "†" not in caption  # only the marks it uses


def test_table4_has_the_ner_attempt_under_its_own_columns(report):
    """configs/conll-snapshots.toml at the smoke scale: 2 snapshots of one epoch after a warm start of one, against
    2 seed members of 3 epochs; the snapshot ensemble compared with the seed ensemble (§) and member-0 (*)."""
    out = report[0]
    values, comparisons = table4(out)
    snapshots, seeds = (out / "runs" / f"ner-en-iid-{kind}" / "eval" / "test" for kind in ("snapshots", "seeds"))
    for setting, folder in (("English, IID, snapshot ensemble (SGDR)", snapshots),
                            ("English, IID, seed ensemble, same budget per member", seeds)):
        metrics = json.loads((folder / "ensemble-2" / "metrics.json").read_text())["metrics"]
        for metric in ("f1_conlleval", "b_ece"):
            assert float(values[setting, "ensemble of 2", metric]["value"]) == pytest.approx(metrics[metric]["value"])
    assert ("English, IID, snapshot ensemble (SGDR)", "ensemble of 2", "bleu") not in values  # its own columns
    members = [json.loads((out / "runs" / "ner-en-iid-snapshots" / "members" / f"member-{i}" / "result.json")
                          .read_text()) for i in range(2)]
    assert [(m["snapshot"], m["warm_start_epochs"], m["epochs"]) for m in members] == [(1, 1, 2), (2, 1, 3)]
    for versus, other, mark in (("seeds (ner-en-iid-seeds ensemble-2)", seeds / "ensemble-2", "§"),
                                ("single (ner-en-iid-seeds member-0)", seeds / "member-0", "¶")):
        (got,) = [c for c in comparisons if c["versus"] == versus and c["metric"] == "b_ece"]
        want = compare(snapshots / "ensemble-2" / "predictions.npz", other / "predictions.npz",
                       ["f1_conlleval", "b_ece"], n_boot=20, progress=False)[1]
        assert float(got["difference"]) == pytest.approx(want["difference"])
        marks = values["English, IID, snapshot ensemble (SGDR)", "ensemble of 2", "b_ece"]["significant_vs"]
        assert (mark in marks) == want["significant"]
    text = (out / "tables" / "table4.md").read_text()
    assert "| setting | system | BLEU |" in text and "| setting | system | F1 | F1 strict |" in text
    caption = text.splitlines()[-1]
    seed_members = [json.loads((out / "runs" / "ner-en-iid-seeds" / "members" / f"member-{i}" / "result.json")
                               .read_text()) for i in range(2)]
    trained = f"{seed_members[0]['epochs']}, {seed_members[1]['epochs']} epochs (best on their held-out data: " \
              f"{seed_members[0]['best_epoch']}, {seed_members[1]['best_epoch']})"
    assert (f"NER: each seed member trains up to 3 epochs (early stopping, patience 1): the seed members trained "
            f"{trained}; the snapshot trajectory up to 3 epochs: a warm start of up to 1 epoch (member 0's training, "
            "early stopping), then 2 cycles of 1 epoch" in caption)
    assert "Not the paper's: its cycles are 2,000 updates" in caption
    assert "Weight averaging of the seed members: none (the best epoch's weights)" in caption


def test_the_page_renders_in_chromium_with_every_image(report):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: `make setup` installs it (apt-get install -y chromium)")
    page = report[0] / "index.html"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images="3"' in dom and 'data-broken="0"' in dom, dom[:300]
    assert dom.count("<table>") >= 7 and "Settings and versions" in dom
    # A missing figure is seen as such.
    (report[0] / "figures" / "figure2.png").rename(report[0] / "figures" / "moved.png")
    try:
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                              "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    finally:
        (report[0] / "figures" / "moved.png").rename(report[0] / "figures" / "figure2.png")
    assert 'data-broken="1"' in dom and 'class="broken"' in dom


def test_only_and_bad_arguments(report, capsys, tmp_path):
    out, args = report
    code, text, _ = run(capsys, report, "--only", "table3,figure1", "--dry-run")
    assert code == 0 and "table3:" in text and "figure1:" in text and "table1:" not in text
    assert "ner-en-iid" not in text  # only the runs those experiments need
    code, _, err = run(capsys, report, "--only", "table9")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--only table9: not an experiment" in err
    for empty in ("", " , "):
        code, _, err = run(capsys, report, "--only", empty)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--only: names no experiment" in err
    assert main(["reproduce", *args, "--out", str(tmp_path / "x"), "--set", "nope.key=1"]) == 2
    assert "--set nope.key=1: no run of the plan has the setting 'nope.key'" in capsys.readouterr().err
    # a key the plan sets per run would make Table 2's CE and LS runs (or Table 6's) alike under their names
    for key, runs in (("train.label_smoothing=0.1", "CE and LS runs"), ("train.average_last=2", "weight averaging"),
                      ('data.train="x"', "each language's files, from --data")):
        assert main(["reproduce", *args, "--out", str(tmp_path / "x"), "--set", key, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"--set {key}: the plan sets" in err and runs in err


def test_the_second_usual_model_keeps_twice_the_epochs_under_a_set(tmp_path):
    from ensemble_distill.reproduce import build_plan

    plan = build_plan("smoke", tmp_path, overrides=["train.max_epochs=3"])
    runs = {s.run.name: s.run for e in plan.experiments for s in e.steps}
    assert plan.config(runs["ner-en-baseline"]).train.max_epochs == 3
    assert plan.config(runs["ner-en-baseline-long"]).train.max_epochs == 6
    assert plan.config(runs["ner-en-baseline-long"]).train.patience == 2


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_steps_time_is_kept_when_it_fails_resumes_or_shares_the_file(tmp_path):
    path, clock = tmp_path / "timings.json", FakeClock()
    path.write_text(json.dumps({"train a": 5.0}))
    with pytest.raises(RuntimeError), timed(path, "train b", every=3600, clock=clock):
        clock.now += 7.0
        # another process finishes its step meanwhile: a write of ours must not undo it
        path.write_text(json.dumps({"train a": 9.0, "train b": 0.0}))
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"train a": 9.0, "train b": 7.0}
    with timed(path, "train b", every=3600, clock=clock):  # the step resumed: its times add up
        clock.now += 2.5
    assert json.loads(path.read_text()) == {"train a": 9.0, "train b": 9.5}
    assert list(tmp_path.iterdir()) == [path]  # no lock file left beside it


def test_a_running_step_writes_its_time_before_it_ends(tmp_path):
    """A step killed by SIGKILL runs no handler: what it spent is on disk already, up to `every` seconds."""
    path, clock = tmp_path / "timings.json", FakeClock()
    with timed(path, "distill x", every=0.01, clock=clock):
        clock.now += 42.0
        for _ in range(1000):  # the heartbeat thread writes within ~0.01 s; poll, no timing asserted
            if path.is_file() and json.loads(path.read_text()).get("distill x") == 42.0:
                break
            threading.Event().wait(0.01)
        assert json.loads(path.read_text()) == {"distill x": 42.0}


def test_wnut17_types_map_onto_conll_types(tmp_path):
    source = tmp_path / "wnut.txt"
    source.write_text("Lady\tB-person\nGaga\tI-person\nsings\tO\n\nApple\tB-corporation\niPhone\tB-product\n"
                      "Boston\tB-location\nfans\tB-group\nStar\tB-creative-work\nWars\tI-creative-work\n")
    lines = write_wnut17(source, tmp_path / "out.txt").read_text().splitlines()
    assert [line.split("\t")[1] if line else "" for line in lines] == [
        "B-PER", "I-PER", "O", "", "B-ORG", "B-MISC", "B-LOC", "B-ORG", "B-MISC", "I-MISC"]
    source.write_text("x\tB-animal\n")
    with pytest.raises(UserError, match=r"wnut.txt:1: type 'animal' is not one of WNUT-17's"):
        write_wnut17(source, tmp_path / "bad.txt")


def test_features_are_named():
    with pytest.raises(ValueError, match="unknown feature 'warp-drive'"):
        missing_features(["warp-drive"])
    assert all(callable(landed) for _, landed in FEATURES.values())


def test_a_student_trained_as_the_usual_single_model(report):
    """The baseline experiment's lever (issue 12, student budget): a student of each English run's largest
    ensemble with the usual single model's training settings and encoder cut, recorded in its folder, in the
    baseline table and, of the IID run, in Table 5 beside the usual single model."""
    out = report[0]
    usual = tomllib.loads((out / "runs" / "ner-en-baseline" / "config.toml").read_text())
    for run in ("ner-en-iid", "ner-en-crf"):
        folder = out / "runs" / run / "students" / "student-3-as-baseline"
        settings = tomllib.loads((folder / "config.toml").read_text())
        assert {k: v for k, v in settings["train"].items() if k != "early_stopping"} == {
            k: v for k, v in usual["train"].items() if k in settings["train"]}
        assert settings["train"]["schedule"] == "linear" and settings["train"]["optimizer"] == "adamw"
        assert settings["train"]["early_stopping"] == "dev"  # and its data: all of train, stopped on dev
        spec = json.loads((folder / "model.json").read_text())
        assert spec["encoder"]["finetune_layers"] == usual["encoder"]["finetune_layers"]
        assert (out / "runs" / run / "eval" / "test" / "student-3-as-baseline" / "metrics.json").is_file()
    label = "IID student of the ensemble of 3, trained as the usual single model"
    baseline = (out / "tables" / "baseline.md").read_text().splitlines()
    assert sum(line.count(f"{label} |") for line in baseline) == 2  # the IID and CRF runs' (a row label ends there)
    assert label in (out / "tables" / "table5.md").read_text()
    # the lever beta: the IID one again on KD alone, its settings as the first's but distill.beta = 1
    beta = out / "runs" / "ner-en-iid" / "students" / "student-3-as-baseline-beta1"
    first = tomllib.loads((beta.parent / "student-3-as-baseline" / "config.toml").read_text())
    settings = tomllib.loads((beta / "config.toml").read_text())
    assert settings["distill"]["beta"] == 1.0 and first["distill"]["beta"] == 5 / 6
    assert {**settings, "distill": {**settings["distill"], "beta": 5 / 6}} == first
    assert sum(f"{label}, β = 1 |" in line for line in baseline) == 1
    # the budget further: the usual model and the CRF ensemble's student both at twice the epochs, patience 2
    long = tomllib.loads((out / "runs" / "ner-en-baseline-long" / "config.toml").read_text())
    assert (long["train"]["max_epochs"], long["train"]["patience"]) == (2 * usual["train"]["max_epochs"], 2)
    student = out / "runs" / "ner-en-crf" / "students" / "student-3-as-baseline-long"
    settings = tomllib.loads((student / "config.toml").read_text())
    assert (settings["train"]["max_epochs"], settings["train"]["patience"]) == (2 * usual["train"]["max_epochs"], 2)
    assert sum(f"{label}, twice the epochs |" in line for line in baseline) == 1
    assert sum(line.startswith("| English, usual single model") for line in baseline) == 2
    # the title says the recipe the usual model ran with (smoke: 1 layer tuned, a sample of the data), and ‡ which
    # usual model a student is compared with
    assert baseline[0].startswith("**The usual single model (tiny-bert") and baseline[0].endswith(
        ", 1 layer tuned, AdamW, linear schedule, 60 training sentences) against the English students and "
        "ensembles, test**")
    assert "‡ from the usual single model it was trained as (the first, for the members' recipe)" in baseline[-1]
    rows = list(csv.reader((out / "tables" / "baseline.csv").open()))
    versus = {r[2] for r in rows[rows.index([]) + 2:]}
    assert versus == {"usual (ner-en-baseline individual-0)", "usual (ner-en-baseline-long individual-0)",
                      "teacher (ner-en-iid ensemble-3)", "teacher (ner-en-crf ensemble-3)"}


def test_smoke_captions_say_that_20_resamples_cannot_reach_p_below_005(report):
    """The smallest bootstrap p is 2/(B + 1) (calibration.bootstrap): 2/21 = 0.095 at the smoke scale's B = 20;
    B = 39 gives 2/40 = 0.05, not below it; B = 40 gives 2/41 = 0.0488."""
    caption = (report[0] / "tables" / "table1.md").read_text().splitlines()[-1]
    assert "With 20 bootstrap resamples the smallest p is 2/21 = 0.095: no difference can reach p < 0.05" in caption
    assert significance_floor(39) and significance_floor(40) == "" and significance_floor(1000) == ""
    assert "smallest p" not in (report[0] / "tables" / "table3.md").read_text()  # no comparisons there
    assert (duration(42), duration(600), duration(7200)) == ("42 s", "10 min", "2.0 h")


def test_a_changed_set_or_data_or_student_config_is_refused_before_anything_runs(report, capsys, data_root):
    out, args = report
    runs = out / "runs"
    for dry in ((), ("--dry-run",)):
        code, _, err = run(capsys, report, "--only", "table6", "--set", "train.lr=0.002", *dry)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert (f"{runs / 'nmt-de-en-ce-noavg'}: was started with another config: 'train.lr' is 0.005 in "
                f"{runs / 'nmt-de-en-ce-noavg' / 'config.toml'}, 0.002 now") in err
    code, _, err = run(capsys, report, "--only", "table6", "--data", str(data_root / "elsewhere"))
    assert code == 2 and "nmt-de-en-ce-noavg: was started with another config: 'data." in err
    # the same files written another way are the same config, and the page prints the path normalised
    code, text, err = run(capsys, report, "--only", "table6", "--data", f"{data_root}/../{data_root.name}")
    assert code == 0 and "0 of 2 steps run" in text, err
    page = (out / "index.html").read_text()
    assert f"--data {data_root} " in page and "/../" not in page

    # a student folder with other settings than its step would give it
    config = runs / "ner-en-iid" / "students" / "student-2" / "config.toml"
    recorded = config.read_text()
    config.write_text(re.sub(r"(?m)^lr = .*$", "lr = 0.123", recorded, count=1))
    try:
        code, _, err = run(capsys, report, "--only", "table1", "--dry-run")
    finally:
        config.write_text(recorded)
    assert code == 2 and f"{config.parent}: was started with another config: 'train.lr' is 0.123" in err


def test_a_stale_evaluation_is_redone_and_the_page_keeps_every_experiment(report, capsys, monkeypatch):
    """A student removed from the CE run makes Figure 1 and Table 2 not done: --only table6 keeps every other
    section on the page and deletes their stale files; --only figure1 distils the student again and then redoes
    the run's evaluation (done when planned, stale once the student exists) in the same call."""
    out = report[0]
    shutil.rmtree(out / "runs" / "nmt-de-en-ce" / "students" / "student-1-top8")
    with monkeypatch.context() as patch:  # --report-only: the page of what is done now, nothing run
        patch.setattr("ensemble_distill.reproduce.do_step", lambda *a, **k: pytest.fail("--report-only ran a step"))
        code, text, err = run(capsys, report, "--report-only")
    n = len(build_plan("smoke", out).experiments)
    assert code == 0 and f"ran nothing (--report-only); {n - 2} of {n} experiments done" in text, err
    page = (out / "index.html").read_text()
    assert page.count("not run yet (steps left: rerun reproduce)") == 2 and "figures/figure1.png" not in page
    code, _, err = run(capsys, report, "--report-only", "--dry-run")
    assert code == 2 and "--dry-run and --report-only: choose one" in err
    code, text, err = run(capsys, report, "--only", "table6")
    assert code == 0 and "0 of 2 steps run" in text, err
    page = (out / "index.html").read_text()
    experiments = build_plan("smoke", out).experiments
    assert page.count("<section id=") == len(experiments) + 1  # every experiment, and the settings
    assert page.count("not run yet") == 2 and "rerun reproduce --only figure1; not selected this time" in page
    assert not (out / "figures" / "figure1.png").exists() and "figures/figure1.png" not in page
    assert not (out / "tables" / "table2.md").exists() and "tables/table2.md" not in page
    assert (out / "tables" / "table1.md").is_file() and "tables/table1.md" in page and page.count("<img ") == 2

    code, text, _ = run(capsys, report, "--only", "figure1", "--dry-run")  # the dry run foresees the stale one
    assert "todo  distill nmt-de-en-ce student-1-top8" in text and "todo  evaluate nmt-de-en-ce test" in text
    with monkeypatch.context() as patch:  # a step that leaves its work undone: said, and exit status 1
        patch.setattr("ensemble_distill.reproduce.do_step", lambda *a, **k: None)
        code, text, err = run(capsys, report, "--only", "figure1")
    assert code == 1 and "still not done: distill nmt-de-en-ce student-1-top8 (rerun reproduce)" in err

    code, text, err = run(capsys, report, "--only", "figure1")
    assert code == 0, err
    assert "[1/2] distill nmt-de-en-ce student-1-top8\n" in text and "[2/2] evaluate nmt-de-en-ce test\n" in text
    assert "2 of 4 steps run" in text
    page = (out / "index.html").read_text()
    assert "not run yet" not in page and page.count("<img ") == 3 and (out / "tables" / "table2.md").is_file()


def test_processes_sharing_out_split_the_runs(report, capsys, monkeypatch):
    """A run folder another process holds is put off: the other runs' steps go first, then this process waits
    (saying so once, naming the folder and the holder) and does the put-off steps once the folder is free."""
    out = report[0]
    ner_student = sorted((out / "runs" / "ner-en-iid" / "students").glob("student-*"))[0]
    shutil.rmtree(ner_student)
    shutil.rmtree(out / "runs" / "nmt-de-en-ce" / "students" / "student-1-top8")
    with ExitStack() as other:
        pid = other.enter_context(held_by_another_process(out / "runs" / "ner-en-iid"))
        waits = []

        def sleep(seconds):  # the other process ends its step while this one waits
            waits.append(seconds)
            other.close()

        monkeypatch.setattr("ensemble_distill.reproduce.time", SimpleNamespace(sleep=sleep))
        code, text, err = run(capsys, report, "--only", "table1,figure1")
    assert code == 0, err
    assert waits == [POLL_SECONDS]
    keys = [line.split("] ", 1)[1] for line in text.splitlines() if line.startswith("[")]
    assert keys[:2] == ["distill nmt-de-en-ce student-1-top8", "evaluate nmt-de-en-ce test"], keys
    assert keys[2] == f"distill ner-en-iid {ner_student.name}" and "evaluate ner-en-iid test" in keys[3:], keys
    waiting = [line for line in text.splitlines() if line.startswith("waiting")]
    assert waiting == [f"waiting for run folders another process holds: {out / 'runs' / 'ner-en-iid'}: in use by "
                       f"process {pid} on {socket.gethostname()} (lock file {out / 'runs' / 'ner-en-iid' / '.lock'});"
                       " wait until it ends, or stop it"]
    assert (ner_student / "result.json").is_file()


def test_a_data_root_without_the_data_is_refused_in_one_line(tmp_path, capsys):
    code = main(["reproduce", "--scale", "smoke", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--dry-run"])
    assert code == 2 and not (tmp_path / "r").exists()
    assert capsys.readouterr().err.strip() == (
        f"ensemble-distill: error: --data {tmp_path}: {tmp_path}/conll2003-en/eng.train: no such file (the data root "
        "holds conll2003-en/, europarl-ner-de/, multi30k-de-en/, wnut17/ as ../shared/data does)")


def test_the_gpu_scale_without_a_gpu_is_refused_before_any_run_folder_is_made(data_root, tmp_path, capsys,
                                                                               monkeypatch):
    """The gpu scale's runs train on "cuda": on a machine without one the first step used to fail after making its
    run folder. Now nothing is written; --dry-run still shows the plan (a CPU machine may read it)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu"
    code = main(["reproduce", "--scale", "gpu", "--data", str(data_root), "--out", str(out), "--only", "table6"])
    assert code == 2 and not (out / "runs").exists()
    assert capsys.readouterr().err.strip() == (
        "ensemble-distill: error: --scale gpu: run nmt-de-en-ce-noavg: 'train.device' is 'cuda' but torch sees no "
        "CUDA GPU here: run this scale on a machine with one, or --set train.device=cpu")
    assert main(["reproduce", "--scale", "gpu", "--data", str(data_root), "--out", str(out), "--only", "table6",
                 "--dry-run"]) == 0
