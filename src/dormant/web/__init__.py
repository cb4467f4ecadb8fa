"""Browser assets. ``dormant.js`` is the official socket.io-client browser bundle (vendored from
the npm package by ``tests/e2e/js/vendor.mjs``; see ``vendor/``) followed by the tracker
(``tracker.js``), served as one file at ``/static/dormant.js``."""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib.resources import files

_SOURCE_MAP = re.compile(rb"\n//# sourceMappingURL=\S+\s*$")


@cache
def dormant_js() -> bytes:
    root = files("dormant.web")
    vendor = (root / "vendor" / "socket.io.min.js").read_bytes()
    tracker = (root / "tracker.js").read_bytes()
    # The bundle's source map is not shipped; drop the reference so browsers do not ask for it.
    return _SOURCE_MAP.sub(b"\n", vendor) + b";\n" + tracker


@cache
def dormant_js_etag() -> str:
    return '"' + hashlib.sha256(dormant_js()).hexdigest()[:20] + '"'
