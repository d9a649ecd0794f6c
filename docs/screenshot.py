"""Take docs/img/console.png: the console's Overview on a temporary demo database, 1280x800.

Not run in CI. From the repository root, with the test extra installed and Chromium on the machine
(``apt-get install chromium``; ``OUTBOX_TEST_CHROMIUM`` names another binary):

    python docs/screenshot.py            # writes docs/img/console.png
    python docs/screenshot.py out.png    # or another file

It starts ``streamlit run dashboard.py`` on a free port with ``OUTBOX_DATABASE_URL`` pointing at a
SQLite file in a temporary folder filled by ``demo.load_demo_data``, waits for the Overview's tiles,
saves the PNG (quantised to 256 colours when Pillow is there, to keep it small) and stops the server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from outbox_admin import demo, init_db, make_engine  # noqa: E402
from tests.browser_support import chromium  # noqa: E402

OUT = ROOT / "docs" / "img" / "console.png"
VIEWPORT = {"width": 1280, "height": 800}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base: str, server: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("streamlit exited before it answered")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("streamlit did not answer within a minute")


def main(out: Path = OUT) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'demo.db'}"
        engine = make_engine(url)
        init_db(engine)
        demo.load_demo_data(engine)
        engine.dispose()
        port = free_port()
        env = {**os.environ, "OUTBOX_DATABASE_URL": url, "OUTBOX_INTERVAL_SECONDS": "3600"}
        for name in [n for n in env if n.startswith(("STREAMLIT_", "OUTBOX_DASHBOARD_")) or n == "OUTBOX_CONFIG"]:
            env.pop(name)
        command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard.py"), "--server.port", str(port)]
        with open(Path(tmp) / "streamlit.log", "wb") as log:
            server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                base = f"http://127.0.0.1:{port}"
                wait_healthy(base, server)
                with chromium() as browser:
                    page = browser.new_page(viewport=VIEWPORT)
                    page.goto(base)
                    page.get_by_role("heading", name="Overview").first.wait_for(timeout=60_000)
                    page.get_by_text("Expired leases").first.wait_for(timeout=60_000)
                    page.wait_for_load_state("networkidle")
                    time.sleep(2)  # let the charts finish drawing; a picture, not a synchronisation
                    page.screenshot(path=str(out))
            finally:
                server.terminate()
                server.wait(10)
    try:
        from PIL import Image
    except ImportError:
        return
    Image.open(out).convert("RGB").quantize(colors=256).save(out, optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
