"""Result tables shared by the NER and translation experiments: groups of models as mean ± standard error,
single systems as value [95% CI]."""

import numpy as np


def mean_and_se(scores: list[dict], metrics) -> dict:
    """{metric: {value, se}} over several models' metric dicts (each {metric: {value, ...}})."""
    out = {}
    for m in metrics:
        values = np.array([s[m]["value"] for s in scores])
        se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
        out[m] = {"value": float(values.mean()), "se": float(se)}
    return out


def cell(stat: dict, scale: float = 100) -> str:
    if "se" in stat:
        return f"{scale * stat['value']:.2f} ± {scale * stat['se']:.2f}"
    return f"{scale * stat['value']:.2f} [{scale * stat['ci_low']:.2f}, {scale * stat['ci_high']:.2f}]"
