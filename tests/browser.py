"""Headless Chromium for tests that check a page really renders (skips when absent)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium; CI: .ci/install-chromium.sh)")
    return exe


def dump_dom(page: Path, fragment: str = "", tmp: Path | None = None) -> str:
    """The DOM of ``page`` after Chromium loaded it and ran its scripts (``--dump-dom``)."""
    exe = chromium()
    profile = (tmp or page.parent) / ".chromium-profile"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
           page.resolve().as_uri() + fragment]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-3000:]
    return proc.stdout


class Cards(HTMLParser):
    """The contact sheet's cards as Chromium left them: attributes and text, in page order."""

    def __init__(self, dom: str):
        super().__init__()
        self.cards: list[dict] = []
        self._depth = 0
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "card" in (a.get("class") or "").split():
            self.cards.append({**a, "text": "", "imgs": 0})
            self._depth = 1
        elif self._depth:
            if tag == "div":
                self._depth += 1
            if tag == "img":
                self.cards[-1]["imgs"] += 1

    def handle_endtag(self, tag):
        if self._depth and tag == "div":
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.cards[-1]["text"] += data
