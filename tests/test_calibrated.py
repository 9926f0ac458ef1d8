"""predict and export --calibrated (calibrated.py) on a tiny IID run trained and evaluated through the CLI: the T
each reads is the one evaluation fitted on dev, and the probabilities are those of evaluation's "+ TS" rows."""

import json
import shutil

import numpy as np
import pytest
import torch
from test_evaluation import write_config

from ensemble_distill.cli import main
from ensemble_distill.io_utils import sha256_file
from ensemble_distill.predictions import load_predictions


@pytest.fixture(scope="module")
def evaluated_run(tiny_encoder, tmp_path_factory):
    """An IID run of two members (its ensemble of 2), trained and evaluated on test (T fitted on dev)."""
    from conftest import CONLL_SENTENCES, write_conll

    root = tmp_path_factory.mktemp("calibrated")
    files = (write_conll(root / "train.txt", CONLL_SENTENCES, repeat=5), write_conll(root / "dev.txt",
             CONLL_SENTENCES[:4]), write_conll(root / "test.txt", CONLL_SENTENCES[4:]))
    config = write_config(root / "c.toml", tiny_encoder, files, root)
    text = config.read_text().replace('head = "crf"', 'head = "iid"').replace("members = 3", "members = 2")
    config.write_text(text.replace("subset_sizes = [2, 3]", "subset_sizes = [2]").replace("individuals = 2",
                                                                                          "individuals = 0"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENSEMBLE_DISTILL_CACHE", str(root / "cache"))
        assert main(["train-ensemble", "--config", str(config), "--out", str(root / "run"), "--n-boot", "5"]) == 0
    return root / "run", files[2]


def predicted(run_or_model, flag, test, out, *extra):
    assert main(["predict", flag, str(run_or_model), "--input", str(test), "--token-col", "0", "--tag-col", "-1",
                 "--out", str(out), *extra]) == 0
    return load_predictions(out / "predictions.npz")


def test_calibrated_predict_and_export_read_the_temperature_evaluation_fitted(evaluated_run, tmp_path, capsys):
    run, test = evaluated_run
    rows = {r["name"]: r for r in json.loads((run / "eval/test/results.json").read_text())}
    for system, flag, source in (("member-1", "--model", run / "members/member-1"), ("ensemble-2", "--run", run)):
        scaled = load_predictions(run / f"eval/test/{system}-ts/predictions.npz")
        t = scaled.meta["temperature"]
        assert t != pytest.approx(1.0, abs=1e-3) and t == json.loads(
            (run / ("members/member-1/temperature.json" if flag == "--model" else
                    "eval/temperatures/ensemble-2.json")).read_text())["temperature"]
        got = predicted(source, flag, test, tmp_path / system, "--calibrated")
        assert got.meta["temperature"] == t
        np.testing.assert_allclose(got.probs, scaled.probs, atol=1e-5)
        raw = predicted(source, flag, test, tmp_path / f"{system}-raw")
        np.testing.assert_allclose(raw.probs, load_predictions(run / f"eval/test/{system}/predictions.npz").probs,
                                   atol=1e-5)
        assert np.abs(got.probs - raw.probs).max() > 1e-3
    assert rows["ensemble-2-ts"]["temperature"] == load_predictions(
        run / "eval/test/ensemble-2-ts/predictions.npz").meta["temperature"]

    # a model folder moved out of its run takes its temperature.json along; without it, or with other weights,
    # --calibrated is refused in one line naming what to run
    moved = tmp_path / "elsewhere" / "member-1"
    shutil.copytree(run / "members/member-1", moved)
    np.testing.assert_allclose(predicted(moved, "--model", test, tmp_path / "moved", "--calibrated").probs,
                               load_predictions(run / "eval/test/member-1-ts/predictions.npz").probs, atol=1e-5)
    record = json.loads((moved / "temperature.json").read_text())
    assert record["fitted_on"] == "dev" and record["system"] == "member-1"
    record["models"][0]["sha256"] = "0" * 64
    (moved / "temperature.json").write_text(json.dumps(record))
    (tmp_path / "never").mkdir()
    for folder in (moved, tmp_path / "never" / "member-1"):
        if folder != moved:
            shutil.copytree(run / "members/member-1", folder, ignore=shutil.ignore_patterns("temperature.json"))
        argv = ["predict", "--model", str(folder), "--input", str(test), "--token-col", "0", "--out",
                str(tmp_path / "refused"), "--calibrated"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "ensemble-distill evaluate --run" in err, err
        # a folder never evaluated (handed over alone) is also told it can take a T given by hand
        assert err.endswith("--temperature T") == (folder != moved), err
        assert main(["export", "--model", str(folder), "--format", "hf", "--out", str(tmp_path / "refused-hf"),
                     "--calibrated"]) == 2
        assert "ensemble-distill evaluate --run" in capsys.readouterr().err
    assert main(["export", "--model", str(run / "members/member-1"), "--format", "ctranslate2", "--out",
                 str(tmp_path / "refused-ct2"), "--temperature", "2"]) == 2
    assert "--temperature: only for --format hf" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("refused", "refused-hf", "refused-ct2"))

    # export --calibrated folds the same T into the classifier: the exported model's softmax at each word's first
    # subword is predict --calibrated's distribution
    from transformers import AutoModelForTokenClassification

    from ensemble_distill.data.subwords import collate, encode_sentences
    from ensemble_distill.tasks import load_model

    assert main(["export", "--model", str(run / "members/member-1"), "--format", "hf", "--out", str(tmp_path / "hf"),
                 "--calibrated"]) == 0
    hf = AutoModelForTokenClassification.from_pretrained(tmp_path / "hf").eval()
    model = load_model(run / "members/member-1")
    # config.json says which weights and which T, so a calibrated export is told from a raw one
    assert hf.config.ensemble_distill == {"model": str((run / "members/member-1").resolve()),
                                          "weights_sha256": sha256_file(run / "members/member-1/model.safetensors"),
                                          "temperature": json.loads(
                                              (run / "members/member-1/temperature.json").read_text())["temperature"]}
    sentences = [[line.split()[0] for line in block.splitlines()] for block in
                 test.read_text().split("\n\n")[1:] if block.strip()]
    windows = encode_sentences(model.tokenizer, sentences, model.max_length)
    batch = collate(windows, model.tokenizer.pad_token_id)
    with torch.no_grad():
        probs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.softmax(-1)
    exported = np.concatenate([probs[i, w.word_starts].numpy() for i, w in enumerate(windows)])
    np.testing.assert_allclose(exported, load_predictions(tmp_path / "member-1/predictions.npz").probs, atol=1e-5)
