"""The catalog of sync definitions: which sync NAME lives in which definition file.

Deployments, webhooks, ``twoway history`` and ``twoway conflicts`` speak of a sync by its
name (``contacts``); the catalog finds the file. It is the folder named by the
``TWOWAY_SYNCS_DIR`` environment variable, else ``./syncs`` in the working directory, and
holds one ``*.sync.yaml`` (or ``*.sync.yml``) per sync; the sync's name is the ``name`` key
of the file. Wherever a NAME is accepted, a PATH to a definition file works too.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import yaml

from twoway.definition import Definition, load_definition
from twoway.errors import DefinitionError

SYNCS_DIR_ENV = "TWOWAY_SYNCS_DIR"
DEFAULT_SYNCS_DIR = "syncs"
PATTERNS = ("*.sync.yaml", "*.sync.yml")


def syncs_dir() -> Path:
    """The catalog folder: ``$TWOWAY_SYNCS_DIR``, else ``./syncs``."""
    return Path(os.environ.get(SYNCS_DIR_ENV) or DEFAULT_SYNCS_DIR)


def name_of(path: Path) -> str:
    """The ``name`` key of a definition file, read without validating the rest."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None
    if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"].strip():
        return raw["name"].strip()
    stem = path.name
    for suffix in (".yaml", ".yml", ".sync"):
        stem = stem.removesuffix(suffix)
    return stem


def catalog(folder: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Sync name -> absolute definition path, for every definition in the folder.

    Two files claiming one name are a mistake the user must see: the name maps to none of
    them and :func:`resolve` names both files.
    """
    base = Path(folder) if folder is not None else syncs_dir()
    if not base.is_dir():
        return {}
    found: dict[str, list[Path]] = {}
    files = sorted({p for pattern in PATTERNS for p in base.glob(pattern) if p.is_file()})
    for path in files:
        found.setdefault(name_of(path), []).append(path.resolve())
    _duplicates.clear()
    _duplicates.update({n: ps for n, ps in found.items() if len(ps) > 1})
    return {n: ps[0] for n, ps in found.items() if len(ps) == 1}


_duplicates: dict[str, list[Path]] = {}


def sync_names(folder: str | os.PathLike[str] | None = None) -> list[str]:
    """The names of the syncs in the catalog, sorted."""
    return sorted(catalog(folder))


def looks_like_path(ref: str) -> bool:
    """True when ``ref`` is written as a file path rather than a sync name."""
    return "/" in ref or os.sep in ref or ref.endswith((".yaml", ".yml"))


def resolve(ref: str, folder: str | os.PathLike[str] | None = None) -> Path:
    """The definition file of a sync NAME or PATH; a clear DefinitionError when neither."""
    candidate = Path(ref)
    if candidate.is_file():
        return candidate.resolve()
    if looks_like_path(ref):
        raise DefinitionError(f"{ref}: no such file")
    known = catalog(folder)
    if ref in known:
        return known[ref]
    where = Path(folder) if folder is not None else syncs_dir()
    if ref in _duplicates:
        files = ", ".join(str(p) for p in _duplicates[ref])
        raise DefinitionError(f"sync {ref!r} is defined by several files: {files}")
    hint = difflib.get_close_matches(ref, list(known), n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    names = ", ".join(sorted(known)) or "none"
    raise DefinitionError(
        f"unknown sync {ref!r}{extra}: not a file, and the catalog {where} "
        f"(set {SYNCS_DIR_ENV} to change it) holds: {names}"
    )


def load(ref: str, folder: str | os.PathLike[str] | None = None) -> Definition:
    """Load and validate the definition of a sync NAME or PATH."""
    return load_definition(resolve(ref, folder))
