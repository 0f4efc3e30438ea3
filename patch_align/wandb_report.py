"""`--report-to wandb` of `patch-align analyze` and `patch-align eval`: one wandb run per command.

The run holds the command's numbers as summary values (nested keys joined by ``/``), its figures as
images and its tables as ``wandb.Table``s. Mode, project and entity come from wandb's environment
(``WANDB_MODE=offline`` writes the run under ``OUT/wandb/`` without a network); the run is finished
before the command returns.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPORT_TO = ("none", "wandb")
DEFAULT_PROJECT = "patch-align"


def check_wandb_available(report_to: str) -> None:
    """ValueError when wandb is asked for and not installed (checked before a model loads)."""
    if report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ValueError('--report-to wandb needs wandb: pip install -e ".[train]"')


def flat_numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float | int]:
    """The numbers (not bools) of a nested dict, keyed ``a/b/c``; lists and strings are left out."""
    flat: dict[str, float | int] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_numbers(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = value
    return flat


def report_to_wandb(
    out: Path,
    job_type: str,
    numbers: Mapping[str, float | int],
    figures: Sequence[Path] = (),
    tables: Mapping[str, tuple[list[str], list[list[Any]]]] | None = None,
    config: Mapping[str, Any] | None = None,
) -> str:
    """Log one finished command to a new wandb run under ``out``; returns the run's local folder.

    ``numbers`` go into the run summary; ``figures`` are logged as images keyed by file stem;
    ``tables`` maps a name to (columns, rows).
    """
    import os

    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
        job_type=job_type,
        name=f"{job_type}-{out.name}",
        dir=str(out),
        config=dict(config or {}),
    )
    try:
        logged: dict[str, Any] = {f"figures/{path.stem}": wandb.Image(str(path)) for path in figures}
        for name, (columns, rows) in (tables or {}).items():
            logged[f"tables/{name}"] = wandb.Table(columns=list(columns), data=[list(row) for row in rows])
        if logged:
            run.log(logged)
        for key, value in numbers.items():
            run.summary[key] = value
        return str(Path(run.dir).parent)
    finally:
        run.finish()
