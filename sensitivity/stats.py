"""Mean, standard error and Student-t 95% confidence interval of Monte-Carlo samples."""

from __future__ import annotations

import math
from typing import Sequence

from scipy.stats import t as student_t


def summarize(samples: Sequence[float]) -> dict[str, float | int | bool]:
    """``mean``, ``std``, ``ci95`` (half-width, t quantile: honest at 8 samples), ``rse`` = sem/|mean|.

    ``rse`` is 0 when every sample is identical (an exact value, e.g. a layer the loss does not use) and
    infinite when the mean is 0 but samples differ. ``negative`` flags a negative mean: reported as is.
    """
    n = len(samples)
    if n == 0:
        return {"mean": 0.0, "std": 0.0, "sem": 0.0, "ci95": 0.0, "rse": math.inf, "n": 0, "negative": False}
    mean = math.fsum(samples) / n
    var = math.fsum((x - mean) ** 2 for x in samples) / (n - 1) if n > 1 else math.inf
    std = math.sqrt(var)
    sem = std / math.sqrt(n)
    ci = float(student_t.ppf(0.975, n - 1)) * sem if n > 1 else math.inf
    if std == 0.0:
        rse = 0.0
    elif mean == 0.0:
        rse = math.inf
    else:
        rse = sem / abs(mean)
    return {"mean": mean, "std": std, "sem": sem, "ci95": ci, "rse": rse, "n": n, "negative": mean < 0}
