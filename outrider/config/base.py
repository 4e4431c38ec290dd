"""The building blocks of every config model, the kernel's and the services': strictness, names, ports, paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

Port = Annotated[int, Field(ge=1, le=65535)]
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    # The loader passes the config file's folder; without it (a dict validated directly) paths stay as given.
    context: Any = info.context
    base = context.get("base_dir") if isinstance(context, dict) else None
    return value if base is None or value.is_absolute() else Path(base) / value


# A file named in the config: a relative path resolves against the config file's folder.
ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]
