"""The temperatures evaluation fitted, kept where `predict --calibrated` and `export --calibrated` find them.

Evaluating a run (evaluation.py) fits each system's T on the dev split (paper §6.2) and records it:

    MODEL/temperature.json                  a single model's (member, individual, student): travels with the folder
    RUN/eval/temperatures/ensemble-<k>.json  a nested ensemble's (it has no folder of its own)

each {"temperature": T, "system", "fitted_on": "dev", "run", "models": [{"folder", "sha256"}]}, sha256 being the
digest of each model's weights (model.safetensors) the T was fitted for: a T is read back only for those weights,
so a retrained or replaced model is never deployed with another model's T.

    temperature = fitted_temperature([folder])                    # a model folder
    temperature = fitted_temperature(member_folders, run_dir, "ensemble-3")
"""

import math
from pathlib import Path

from .errors import UserError
from .io_utils import atomic_write_json, read_json, sha256_file
from .runs import RESULT, WEIGHTS

TEMPERATURE_FILE = "temperature.json"


def weights_digest(folder) -> str:
    """The sha256 of a finished model folder's model.safetensors: the one result.json records, else computed."""
    folder = Path(folder)
    recorded = read_json(folder / RESULT, f"delete {folder} and rerun the command that trains it")
    digest = recorded.get("sha256", {}).get(WEIGHTS) if isinstance(recorded, dict) else None
    return digest or sha256_file(folder / WEIGHTS)


def temperature_path(folders: list, run_dir=None, system: str | None = None) -> Path:
    """Where the T of the system of `folders` is kept: the folder's temperature.json for one model, else
    RUN/eval/temperatures/<system>.json."""
    if len(folders) == 1:
        return Path(folders[0]) / TEMPERATURE_FILE
    return Path(run_dir) / "eval" / "temperatures" / f"{system}.json"


def record_temperature(temperature: float, folders: list, run_dir, system: str) -> None:
    """Record the dev-fitted T of `system` (the mean of the models in `folders`, of the run `run_dir`), atomically
    (module doc)."""
    atomic_write_json(temperature_path(folders, run_dir, system), {
        "temperature": temperature, "system": system, "fitted_on": "dev", "run": str(run_dir),
        "models": [{"folder": Path(f).name, "sha256": weights_digest(f)} for f in folders]})


def fitted_temperature(folders: list, run_dir=None, system: str | None = None) -> float:
    """The T evaluation fitted on dev for the system of `folders` (one model folder, or an ensemble's members, the
    ensemble named `system` in the run `run_dir`). Raises UserError when none was recorded, or when it was
    fitted for other weights than the folders hold now: run `evaluate --run RUN` (again)."""
    path = temperature_path(folders, run_dir, system)
    run = run_dir if run_dir is not None else _run_of(folders[0])
    evaluate = f"run `ensemble-distill evaluate --run {run}` first"
    if not path.is_file():
        what = f"{folders[0]}: a model" if len(folders) == 1 else f"{run_dir}: its {system}"
        raise UserError(f"--calibrated: {what} never evaluated (no {path.name}, the temperature evaluation fits on "
                        f"dev); {evaluate}, or give the temperature yourself: --temperature T")
    record = read_json(path, evaluate)
    try:
        temperature, models = float(record["temperature"]), record["models"]
        recorded = [m["sha256"] for m in models]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: malformed (no temperature and models' sha256); {evaluate}") from None
    if recorded != [weights_digest(f) for f in folders] or not 0 < temperature < math.inf:
        raise UserError(f"{path}: its temperature was fitted for other weights than {', '.join(map(str, folders))} "
                        f"hold now; {evaluate} again")
    return temperature


def _run_of(folder) -> str:
    """RUN of RUN/members/member-<i> (individuals/, students/), else a placeholder: a folder moved out of its run."""
    folder = Path(folder)
    return str(folder.parent.parent) if folder.parent.name in ("members", "individuals", "students") else "RUN"
