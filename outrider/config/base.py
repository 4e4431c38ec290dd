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


# Envoy compiles every safe_regex with RE2 and refuses (NACKs) a program bigger than its runtime key
# re2.max_program_size.error_level, 100 by default (Envoy API docs, type.matcher.v3.RegexMatcher.GoogleRE2).
# Checking here refuses such a config with its field before anything is pushed, instead of after a NACK.
ENVOY_RE2_MAX_PROGRAM_SIZE = 100


def _re2(value: str) -> str:
    import re2  # google-re2: the engine Envoy uses, so "valid" means what Envoy will accept

    options = re2.Options()
    options.log_errors = False
    try:
        program = re2.compile(value, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"not an RE2 regex Envoy accepts: {reason}") from None
    if program.programsize > ENVOY_RE2_MAX_PROGRAM_SIZE:
        raise ValueError(f"regex too complex for Envoy: RE2 program size {program.programsize} > "
                         f"{ENVOY_RE2_MAX_PROGRAM_SIZE} (re2.max_program_size.error_level)")
    return value


# A regex Envoy evaluates (route paths, header matches, rewrites).
Re2Regex = Annotated[str, Field(min_length=1), AfterValidator(_re2)]


def _header_value(value: str) -> str:
    # CR or LF in a value the gateway sends would split a header (response splitting); other control
    # characters are refused by Envoy's header validation anyway, so say so here with the field.
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise ValueError("control characters (CR, LF, NUL, …) are not allowed in a header value")
    return value


# A value the gateway puts into a header (rewritten Host, CORS lists, a direct response's content type).
HeaderValue = Annotated[str, AfterValidator(_header_value)]


def _body_text(value: str) -> str:
    if any((ord(c) < 0x20 and c not in "\t\n") or ord(c) == 0x7F for c in value):
        raise ValueError("control characters other than tab and newline (CR, NUL, …) are not allowed in a body")
    return value


# A body the gateway answers with itself (direct responses).
BodyText = Annotated[str, AfterValidator(_body_text)]
