"""Where the files bundled with Lacker Studio (assets/: the sample data set) lie, in a checkout and installed.

The repository keeps them in assets/ at its top, beside engine/. A wheel has no repository top, so
pyproject.toml ships them as package data of `engine.assets` (its package-dir maps that package to
assets/): installed, they lie in site-packages/engine/assets/. This module is the one place that
knows both; everything else asks it.
"""

from pathlib import Path

_ENGINE_DIR = Path(__file__).resolve().parent
_INSTALLED = _ENGINE_DIR / "assets"
ASSETS_DIR = _INSTALLED if _INSTALLED.is_dir() else _ENGINE_DIR.parent / "assets"
