"""`distill-nmt` from a compact (log_uint8) teacher store, end to end on a tiny model: members trained by the CLI
with distill.probs_dtype = "log_uint8", the store memoized in that layout, a student trained from it."""

import json

import numpy as np
import torch
import torch.nn.functional as F
from test_tasks_nmt import toy_config, write_copy_task

from ensemble_distill.cli import main
from ensemble_distill.config import to_toml
from ensemble_distill.data.vocab import PAD_ID
from ensemble_distill.ensemble import open_run
from ensemble_distill.evaluation import with_layout
from ensemble_distill.models.translation import collate
from ensemble_distill.teacher_store import TeacherStore


def test_distill_nmt_trains_a_student_from_a_log_uint8_store(tmp_path):
    cfg = toy_config(write_copy_task(tmp_path / "copy"), max_rounds=2)
    cfg.distill.probs_dtype = "log_uint8"
    (tmp_path / "config.toml").write_text(to_toml(cfg))
    run_dir = tmp_path / "run"
    assert main(["train-nmt", "--config", str(tmp_path / "config.toml"), "--out", str(run_dir)]) == 0
    assert main(["distill-nmt", "--run", str(run_dir)]) == 0

    run = open_run(run_dir, splits=("train",), progress=False)
    task = run.task
    expect = dict(expect_fingerprint=task.dataset_fingerprint(run.data), expect_vocab=task.output_names(run.data))
    store = TeacherStore.open(run_dir / "teachers" / "ensemble-2-top4-log_uint8", **expect)
    assert store.manifest["dtypes"]["probs"] == "log_uint8" and store.manifest["dtypes"]["ids"] == "packed6"
    # The stored entries are the ensemble's top 4, within log_uint8's documented relative error.
    pairs = run.data.splits["train"].pairs[:8]
    batch = collate(pairs)
    real = batch.tgt_out != PAD_ID
    with torch.no_grad():
        ensemble = torch.stack([F.softmax(m(batch.src, batch.tgt_in), -1) for m in run.members(2)]).mean(0)
    top = ensemble[real].topk(4, -1)
    stored = store.batch(np.arange(8))
    assert torch.equal(stored.ids[real], top.indices)
    assert ((stored.probs[real] / top.values - 1).abs() <= 3.21e-2).all()

    student_dir = run_dir / "students" / "student-2-top4-log_uint8"
    log = [json.loads(line) for line in open(student_dir / "log.jsonl")]
    assert log[-1]["train_loss"] < 0.75 * log[0]["train_loss"]  # two rounds of 35 updates
    assert log[-1]["held_out_score"] > log[0]["held_out_score"]
    assert json.loads((student_dir / "teacher.json").read_text())["bytes_per_token"] == store.bytes_per_token()


    # The same teacher in the float16 layout is another store beside it, not the log_uint8 one reopened.
    assert main(["memoize", "--run", str(run_dir), "--set", 'distill.probs_dtype="float16"']) == 0
    for name, dtype in (("ensemble-2-top4", "float16"), ("ensemble-2-top4-log_uint8", "log_uint8")):
        assert TeacherStore.open(run_dir / "teachers" / name, **expect).manifest["dtypes"]["probs"] == dtype

    # Students of the two layouts side by side: the truncation table tells them apart by layout.
    assert main(["distill", "--run", str(run_dir), "--set", 'distill.probs_dtype="float16"']) == 0
    assert main(["evaluate", "--run", str(run_dir)]) == 0
    table = json.loads((run_dir / "eval" / "test" / "truncation.json").read_text())
    assert {r["student"]: r["truncation"] for r in table} == {"student-2-top4": "V' = 4",
                                                              "student-2-top4-log_uint8": "V' = 4, log_uint8"}
    # A student recorded before teacher.json kept the layout takes it from its store's manifest.
    older = json.loads((student_dir / "teacher.json").read_text())
    del older["probs_dtype"]
    assert with_layout(older)["probs_dtype"] == "log_uint8"
    assert with_layout({**older, "store": str(tmp_path / "gone")})["probs_dtype"] == "unrecorded"
