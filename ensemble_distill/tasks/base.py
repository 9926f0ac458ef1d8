"""The Task protocol: what a task (NER, translation) gives the shared stages and the command line
(ensemble.train_members, evaluation.py, distill/memoize.py, distill/student.py, pipeline.py, tasks.load_model):
data, seeds, models and their folders, member plans and fitting one model, distributions, students' settings and
losses, fingerprints, prediction.

A task is a plain object in `tasks.TASKS`, chosen by the config's `task = "ner" | "nmt"`. A third task with the
same shape of data (another tagging corpus and label set, e.g. WNUT-17; another language pair) is a config, not
a new Task: label sets, vocabularies and file layouts are data.

Shapes: a model's distributions are per sentence, float32 [positions, V]: NER positions are words and V the
labels (CRF: marginals); translation positions are the target subwords plus EOS under teacher forcing and V the
vocabulary. An ensemble is a list of models; its distribution is the mean of its members' probabilities.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Task(Protocol):
    name: str  # "ner" | "nmt": the config's `task`
    config_class: type  # the config dataclass of this task (config.TASK_CONFIGS[name])
    score_name: str  # what result.json's best_score is: "span_f1" (NER) or "neg_dev_nll" (NMT)
    run_overridable: tuple[str, ...]  # --set prefixes a trained run may change (ensemble.open_run)
    columns: tuple  # tables.Column of the metrics its tables show (NER: F1, BS+, BS-, B-BS, B-ECE; NMT: BLEU, ...)

    def load_data(self, cfg, run_dir: Path, splits: tuple[str, ...], progress: bool = True) -> Any:
        """Read and prepare `splits` of the config's files (NER: windows and frozen states; NMT: the run's
        vocabulary, trained on first use, and encoded pairs). Raises UserError naming the file and line."""

    def check_runnable(self, cfg, source: str = "config"):
        """`cfg` (a run's config, or a student's: `student_config`), once this machine can run it: refuses, before
        a command reads data or writes anything, train.device = "cuda" where torch sees no GPU
        (config.require_device) and (NER) more encoder.finetune_layers than the encoder has. Raises UserError
        "SOURCE: 'key' ..." naming the setting."""

    def member_seed(self, cfg, index: int, role: str = "member") -> int:
        """The seed of member (or individual) `index`: initialisation, dropout and data order."""

    def new_model(self, cfg, data, seed: int):
        """A fresh model (torch.nn.Module) initialised from `seed` (the global torch RNG is seeded)."""

    def model_spec(self, cfg, data, role: str, seed: int, **extra) -> dict:
        """What model.json records (runs.py): enough for `load_model` to rebuild the model from its folder alone."""

    def load_model(self, folder: Path, spec: dict, device: str = "cpu"):
        """The model of a model folder, in eval mode, with what inference needs (tokenizer and labels, or the
        vocabulary). Raises UserError when the folder's files or the encoder it names are missing or differ."""

    def weights(self, folder: Path) -> Path:
        """The weights file of a run's model folder: what `load_run_model` loads and teacher stores name (sha256)
        (NER: best.pt, or model.pt for an SWA average; translation: model.pt, the checkpoint average)."""

    def load_run_model(self, cfg, data, folder: Path):
        """The model (torch.nn.Module, eval mode, on cfg.train.device) of a finished model folder of the run whose
        config and data these are, built on what the data already holds (NER: the encoder's top layers), its
        weights (`weights`) checked against result.json (runs.load_state).
        Raises UserError when its files are damaged or do not fit the run (other labels), or for a CUDA device
        torch cannot see."""

    def distributions(self, models: list, data, split: str) -> list[np.ndarray]:
        """Per sentence of `split`, the ensemble's float32 [positions, V] distributions (see the module doc)."""

    # Evaluation (evaluation.py) and memoizing (distill/memoize.py): distributions in chunks, predictions files.
    def member_probs(self, models: list, cfg, data, split: str) -> Iterator[tuple[np.ndarray, np.ndarray, list]]:
        """Each model's distributions over `split` in chunks of consecutive sentences, in split order: per chunk
        float32 [M, P, V] probabilities (M models, P positions), int64 [P] gold ids, and per model its own
        predicted labels, int64 [P] (a CRF tagger's Viterbi path), or None when they are the argmax of its
        probabilities. NER: one chunk."""

    def n_positions(self, data, split: str) -> int:
        """The number of positions `member_probs` yields over `split` (the sum of its P)."""

    def temperature_positions(self, cfg) -> int:
        """How many dev positions a temperature is fitted on (a seeded sample); 0: all of them."""

    def teacher_probs(self, models: list, cfg, data, sentences) -> list:
        """Per training sentence of `sentences` (ids), the models' mean distribution, float32 [positions, V] (numpy
        or torch, on the models' device): what distill/memoize.py stores."""

    # Whether memoize keeps each member's teacher_probs over the training split (distill/member_cache.py), so that
    # a run's nested ensembles run each member once: NER's [words, labels] are small, translation's next-token
    # distributions over its vocabulary are not.
    caches_member_probs: bool

    def sentence_positions(self, data, split: str) -> np.ndarray:
        """int64 [sentences of `split`]: each sentence's positions (NER: words; translation: target subwords + EOS),
        the rows of its teacher_probs and of its entry in a teacher store."""

    def output_names(self, data) -> list[str]:
        """The names of the V outputs: label names (NER) or subword pieces (translation), a store's vocabulary."""

    def batch_sentences(self, cfg) -> int:
        """Sentences per teacher batch when memoizing."""

    def teacher_settings(self, cfg, members: int | None = None, top_k: int | None = None,
                         epsilon: float | None = None, samples: int | None = None) -> tuple:
        """The teacher's ensemble size (None: the largest configured) and distill.memoize.Truncation from what the
        command gave and the config's defaults. Raises UserError for a value outside its range, or a setting the
        task has not (NER keeps every label: no top_k, epsilon or samples)."""

    # Students (distill/student.py): the stage calls student_settings, student_config, student_seed, new_model,
    # student_loss, fit_student in this order; `settings` is a config with [distill] (loss) and [train] sections.
    def student_settings(self, run_dir: Path, members: int | None = None, config=None, overrides=(),
                         device: str | None = None) -> tuple:
        """Split a `distill` command's options between the student and the run: (settings, the run's overrides,
        the run's device). NER: settings a DistillConfig (the file `config` or the defaults, with `overrides`, its
        teacher the ensemble of `members` of `run_dir`), the run opened as trained; translation: settings None
        (the run's own config, opened with `overrides` and `device`), or with train.* overrides but train.device
        the run's config with those (tasks.nmt.student_overrides). Raises UserError for an option the task has
        not (NER: device; translation: config) and for a bad config file or override."""

    def student_config(self, cfg, settings):
        """The config the student's model and data are built from, given the run's `cfg` (NER: the run's with an
        IID head and the settings' [train]; translation: the run's, with the settings' [train] if it has its own)."""

    def student_seed(self, cfg, settings) -> int:
        """The student's seed (initialisation, dropout, data order): NER train.seed of the settings, translation
        member_seed of index 100 (after any member's) under the settings' train.seed."""

    def student_loss(self, store, settings, data):
        """loss_fn(model, batch) -> (scalar mean loss, int units it is a mean over): (1 - beta) NLL + beta KD
        (distill.losses.distillation_loss, settings.distill) against the batch's entries of teacher_store.TeacherStore
        `store`, per NER word (a window's word j is its sentence's word first_word + j) or per target token."""

    def fit_student(self, model, cfg, data, loss_fn, seed: int, folder: Path, progress: bool = True,
                    **spec_extra) -> dict:
        """Train (resuming in `folder`) the student `model` with `loss_fn`, early-stopping as the task's students
        do (NER: span F1 of the training tenth no member early-stopped on; translation: dev NLL, then checkpoint
        averaging), then write its model folder (model.json with `spec_extra`, e.g. its teacher) and, last,
        result.json; returns what result.json holds."""

    def sweep_truncations(self, cfg, top_ks: list[int] | None = None, epsilons: list[float] | None = None,
                          samples: list[int] | None = None, source: str = "config") -> list[tuple]:
        """(top_k, epsilon, samples) of each teacher store a truncation sweep distils from (Task.teacher_settings'
        arguments), defaults from the config. Raises UserError for a setting out of range, or a task with nothing
        to sweep (NER keeps every label), naming `source` (the run folder)."""

    def hypotheses(self, models: list, cfg, data, split: str, progress: bool = False) -> list[str] | None:
        """The ensemble's decoded outputs of each sentence of `split` (translation: beam search with the models'
        mean inside the beam), or None when the distributions are the output (tagging)."""

    def compact(self, probs: np.ndarray, gold: np.ndarray, labels: np.ndarray | None = None) -> Any:
        """What a predictions file keeps of a chunk's float32 [P, V] distributions, int [P] gold ids and the
        system's own predicted labels (int [P] or None; member_probs) (NER: the dense probabilities and the
        labels; translation: top-5, gold probability, sum of squares, gold)."""

    def predictions(self, pieces: list, data, split: str, hypotheses: list[str] | None, meta: dict):
        """predictions.Predictions of `split` from the `compact` pieces of its chunks in order, with gold (tags or
        references), `hypotheses` and `meta`. Raises UserError when the pieces do not cover the split."""

    def dataset_fingerprint(self, data, split: str = "train") -> str:
        """A split's fingerprint (teacher_store.fingerprint_dataset of its tokenised data): a teacher store is keyed
        to the training split's, and run.json records those of the splits members train and early-stop on."""

    # Training a run's members: ensemble.train_members calls these in this order.
    must_match: dict  # run.json facts a resumed run must keep (NER: its label set), runs.record_run's

    def training_data(self, cfg, run_dir: Path, progress: bool = True) -> Any:
        """The data the members train and early-stop on (`load_data` of every split the training needs)."""

    def check_data(self, cfg, data) -> None:
        """Raises UserError naming the file when the data cannot train this ensemble (NER: fewer sentences than
        the ten tenths); called before anything binds the run folder to the config."""

    def run_facts(self, cfg, data) -> dict:
        """What run.json records beside the versions: seeds and facts of the data (label set, vocabulary size)."""

    def member_plans(self, cfg, data) -> list:
        """ensemble.MemberPlan of each model of the run, in training order (NER: members on nine tenths less their
        own, then individuals on everything; translation: members on everything, by seed)."""

    def fit(self, model, cfg, data, plan, folder: Path, progress: bool = True) -> dict:
        """Train `model` as `plan` says into `folder` (resuming there: training.train), then write its model
        folder (runs.save_model) and, last, result.json (runs.write_result); returns what result.json holds."""

    def fit_snapshots(self, cfg, data, run_dir: Path, progress: bool = True) -> list[dict]:
        """Train a snapshot ensemble (`ensemble.kind = "snapshots"`): one training, member 0's warm-started, whose
        cycles' snapshots are RUN/members/member-<i> (ensemble.py's layout; tasks/nmt.py and tasks/ner.py
        train_snapshots); returns their result.json records."""

    def predict(self, model, input_path: Path, out_dir: Path, **reader) -> list[Path]:
        """Run a loaded model (`load_model`) on a file: tags or translations, with gold (tags, references) when
        the reader settings say where they are, which adds predictions.npz for `evaluate`. Returns the files."""
