"""Server-side render time of every app page at its defaults (AppTest), and chart payload bytes.

Each page is rendered twice in one AppTest session: the first run includes the process's cold
caches (``st.cache_resource`` / ``st.cache_data``), the second is a rerun at the same settings.
The payload is the length of each Plotly chart's JSON spec as the server sends it.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

from benchmarks.common import md_table

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
PAGE_LIMIT_S = 1.0
PAYLOAD_LIMIT = 2 * 2**20


def discover_pages() -> list[str]:
    """The app's pages (paths relative to the repository root): in Streamlit's pages/ mode every
    ``pages/*.py`` is a page, in the order of its number prefix."""
    found = (p for p in (ROOT / "pages").glob("*.py") if not p.name.startswith((".", "_")))
    return [str(p.relative_to(ROOT)) for p in sorted(found, key=lambda p: (int(re.match(r"\d*", p.name)[0] or 0), p.name))]


def _render(at, page: str | None) -> tuple[float, list[int], list[str]]:
    t0 = time.perf_counter()
    at = at.switch_page(page).run() if page else at.run()
    dt = time.perf_counter() - t0
    payloads = [len(el.proto.spec.encode()) for el in at.get("plotly_chart")]
    errors = [str(e.value)[:80] for e in at.exception] + [str(e.value)[:80] for e in at.error]
    return dt, payloads, errors


def app_section() -> str:
    if not APP.is_file():
        return "app not available (no app.py)."
    try:
        from streamlit.testing.v1 import AppTest
    except ImportError:
        return "app not available (streamlit.testing missing)."
    rows = []
    with tempfile.TemporaryDirectory() as runs_root:
        os.environ["RELPOS_RUNS_ROOT"] = runs_root
        for page in [None] + discover_pages():
            at = AppTest.from_file(str(APP), default_timeout=120)
            try:
                if page:
                    at.run()  # the home page first, as a visitor arrives
                cold, payloads, errors = _render(at, page)
                warm, payloads2, errors2 = _render(at, page)
            except Exception as exc:  # report, keep going
                rows.append([page or "app.py (home)", "failed", "", "", "", f"{type(exc).__name__}: {exc}"[:100]])
                continue
            big = max(payloads + payloads2, default=0)
            ok = warm <= PAGE_LIMIT_S and big <= PAYLOAD_LIMIT
            rows.append([page or "app.py (home)", f"{cold:.2f}", f"{warm:.2f}", len(payloads),
                         f"{big / 1024:.0f}", ("met" if ok else "MISSED") + ("; errors: " + "; ".join(errors + errors2) if errors or errors2 else "")])
            print(f"  app {page}: cold {cold:.2f}s warm {warm:.2f}s max payload {big / 1024:.0f} KiB", flush=True)
    header = ["page", "first render s", "rerun s", "charts", "largest chart payload KiB",
              "targets (rerun ≤ 1 s, payload ≤ 2 MiB)"]
    return md_table(header, rows)
