"""Getting the packaged base model ready before anyone asks for it.

Owns the one-time conversion of the packaged SmolLM2 GGUF at set-up (`python -m tunegate.catalog.prepare`,
run by scripts/setup.sh) and at server start (the API's lifespan, before the server answers), each
with a progress line, so no API request waits for it: the first upload counts tokens and the first
chat loads weights from a converted folder. Does not own the conversion itself (`catalog/convert.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from tunegate.catalog.registry import DEFAULT_MODEL, _folders, resolve_path
from tunegate.errors import MissingPackageError
from tunegate.settings import Settings

log = logging.getLogger("tunegate")


def needs_conversion(settings: Settings) -> bool:
    """True when the default model is the packaged one and its converted folder is not there yet."""
    if DEFAULT_MODEL in _folders(settings):  # an operator pointed the name at a folder of their own
        return False
    return not (settings.models_dir / DEFAULT_MODEL / "config.json").exists()


def prepare_default_model(settings: Settings, say: Callable[[str], None] = print) -> Path | None:
    """Convert the packaged base model now if it is not yet (saying so); its folder, or None when the
    package is missing (the set-up command is named in the log and in the error a request would get)."""
    if not needs_conversion(settings):
        return resolve_path(DEFAULT_MODEL, settings)
    target = settings.models_dir / DEFAULT_MODEL
    say(f"Preparing base model {DEFAULT_MODEL}: converting the packaged GGUF into {target} (once; ~10-30 s) ...")
    start = time.monotonic()
    try:
        path = resolve_path(DEFAULT_MODEL, settings)
    except MissingPackageError as exc:
        say(f"Base model {DEFAULT_MODEL} is not available: {exc.message}")
        return None
    except Exception as exc:  # noqa: BLE001 - the server still starts; its other models work and requests retry
        log.exception("converting %s failed", DEFAULT_MODEL)
        say(f"Base model {DEFAULT_MODEL} could not be converted ({type(exc).__name__}: {exc}); requests for it retry.")
        return None
    say(f"Base model {DEFAULT_MODEL} ready in {time.monotonic() - start:.1f} s.")
    return path


def main() -> None:
    """Set-up step: convert into the model cache the default settings point at (TUNEGATE_* variables apply)."""
    settings = Settings()
    settings.ensure_dirs()
    path = prepare_default_model(settings, say=lambda m: print(m, flush=True))
    if path is not None:
        print(f"Base model {DEFAULT_MODEL}: {path}")


if __name__ == "__main__":
    main()
