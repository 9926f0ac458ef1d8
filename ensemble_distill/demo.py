"""`make demo`: the NER pipeline end to end on a small CoNLL-2003 setting, minutes on a CPU.

    print(demo("../shared/data", "runs/demo"))

Per head (IID, CRF): train a small ensemble, evaluate it on test, memoise it and distil it into an IID student
(trained like the members), which joins the table.
"""

import os
from pathlib import Path

from .config import Distillation, DistillConfig, TaggingConfig, load_config, trained_like
from .distill.memoize import memoize
from .distill.student import distill_from_store
from .ensemble import train_members
from .errors import UserError
from .evaluation import evaluate_run
from .tables import format_rows

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.toml"  # shipped with the package


def demo(data_root, out_root, config_path=DEMO_CONFIG, heads=("iid", "crf"), n_boot: int = 200,
         progress: bool = True, overrides=()) -> str:
    """Train, evaluate and tabulate a small ensemble per head, then memoise it and distil it into an IID student
    (trained like the members) that joins the table; data paths in the config are under `data_root`. Raises
    UserError naming --data when a data file is not there, before anything is written."""
    cfg = load_config(config_path, TaggingConfig, overrides, resolve_paths=False)  # data paths are under data_root
    for name in ("train", "dev", "test"):  # normalised (abspath), as load_config records paths: no "clone/../"
        path = os.path.abspath(Path(data_root) / getattr(cfg.data, name))
        if not os.path.isfile(path):  # before any folder is made; the user gave --data, not data.<name>
            raise UserError(f"--data {data_root}: {path}: no such file (the demo reads CoNLL-2003 from "
                            f"{Path(getattr(cfg.data, name)).parent}/ there, as ../shared/data holds it)")
        setattr(cfg.data, name, path)
    cfg.encoder.cache_dir = os.path.abspath(Path(out_root) / "cache")
    tables, data = [], None
    for head in heads:
        cfg.model.head = head
        run = train_members(cfg, Path(out_root) / head, progress=progress, data=data)
        data = run.data  # the heads share data and frozen states
        rows = evaluate_run(run, "test", n_boot, progress)
        store = memoize(run, store_dir=Path(out_root) / f"{head}-teacher", progress=progress)
        student = DistillConfig(Distillation(ensemble_run=str(run.run_dir)), trained_like(cfg.train))
        rows += distill_from_store(store.path, student, Path(out_root) / f"{head}-student", n_boot, progress, run)
        tables.append(format_rows(rows, run.task.columns, title=f"demo {head}, test"))
    return "\n".join(tables)
