"""The tasks: `TASKS` maps a config's `task` to the module whose `TASK` implements tasks/base.py's protocol.

    task = get_task("ner")                 # tasks.ner.TASK
    model = load_model("runs/x/students/student-3")     # any member, individual or student folder

Modules are named, not imported, here: translation never loads the NER stack (transformers, the encoders) and
tagging never loads sentencepiece.
"""

import importlib

from ..errors import UserError
from ..runs import read_model_spec

TASKS = {"ner": "ensemble_distill.tasks.ner", "nmt": "ensemble_distill.tasks.nmt"}


def get_task(name: str):
    """The Task (tasks/base.py) of `name`. Raises UserError for a name not in TASKS."""
    if name not in TASKS:
        raise UserError(f"task {name!r}: known tasks are {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).TASK


def load_model(folder, device: str = "cpu"):
    """The model of a member, individual or student folder, rebuilt from the folder alone (runs.py: model.json,
    model.safetensors and, for translation, vocab.model): tasks.ner.TaggerFolder or tasks.nmt.TranslationModelFolder.
    Raises UserError when the folder is not a finished model folder or its files do not fit together, or when
    `device` is a GPU that torch does not see here."""
    from ..config import device_problem

    if problem := device_problem(device):
        raise UserError(f"load_model: device {problem}")
    spec = read_model_spec(folder)
    return get_task(spec["task"]).load_model(folder, spec, device)
