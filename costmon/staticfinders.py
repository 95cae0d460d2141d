"""plotly.js comes from the installed `plotly` package, not from a copy in git or a CDN.

`costmon/plotly.min.js` resolves to the file plotly ships (package_data/plotly.min.js), so the
browser always runs the same plotly.js version that builds the figures on the server.
`collectstatic` copies it like any other static file; WhiteNoise serves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

PLOTLY_JS = "costmon/plotly.min.js"
_PACKAGE_DATA = Path(plotly.__file__).resolve().parent / "package_data"


class PlotlyFinder(BaseFinder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.storage = FileSystemStorage(location=str(_PACKAGE_DATA))
        # collectstatic stores what a storage lists under its prefix: costmon/plotly.min.js.
        self.storage.prefix = "costmon"  # type: ignore[attr-defined]

    def check(self, **kwargs: Any) -> list[Any]:
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> Any:
        if path != PLOTLY_JS:
            return [] if find_all else ""
        found = str(_PACKAGE_DATA / "plotly.min.js")
        return [found] if find_all else found

    def list(self, ignore_patterns: Any) -> Any:
        yield "plotly.min.js", self.storage
