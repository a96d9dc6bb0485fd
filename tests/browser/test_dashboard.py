"""The server's live dashboard in Chromium: it draws, keeps drawing while HTTP load runs, asks nothing of the
network beyond its own server, and logs no console error. Screenshots go to test-artifacts/."""

from __future__ import annotations

import threading

import httpx
import pytest

from cblab_teach import Engine, EngineConfig
from cblab_teach.serve import build_app, serve_in_background, tiny_text_model

from .conftest import ARTIFACTS, is_benign, offline_page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]
PROMPTS = ["Beautiful is better than", "Simple is better", "Errors should never", "Now is better than"] * 3


def load(url: str, stop: threading.Event) -> None:
    """Streams in waves until told to stop (bounded: at most 5 waves of 12 requests)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(5):
            threads = [threading.Thread(target=lambda p=p: client.post("/v1/completions", json={
                "prompt": p, "max_tokens": 48, "temperature": 0, "stream": True}).read()) for p in PROMPTS]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if stop.is_set():
                return


@pytest.mark.parametrize("width,height", [(1280, 800), (1024, 768)])
def test_dashboard_draws_live_under_load_offline(chromium, width, height):
    tiny = tiny_text_model()
    engine = Engine(tiny.model, EngineConfig(max_tokens_per_step=32, prefill_chunk_size=8, num_blocks=256))
    with serve_in_background(build_app(tiny, engine)) as url:
        context, page, refused, errors = offline_page(chromium, width, height, allowed=url)
        page.goto(url + "/dashboard")
        page.wait_for_function("document.body.dataset.step !== undefined", timeout=60_000)
        assert page.evaluate("document.body.dataset.step") == "-1"  # idle: drawn, no step yet

        stop = threading.Event()
        traffic = threading.Thread(target=load, args=(url, stop), daemon=True)
        traffic.start()
        page.wait_for_function("Number(document.body.dataset.step) > 5", timeout=60_000)
        first = int(page.evaluate("document.body.dataset.step"))
        page.wait_for_function(f"Number(document.body.dataset.step) > {first + 5}", timeout=60_000)  # still live
        page.wait_for_function("document.querySelectorAll('#requests tbody tr').length > 0", timeout=60_000)
        bars = page.evaluate("document.getElementById('budget').data.map(t => t.y.reduce((a, b) => a + b, 0))")
        assert bars[0] > 0 and bars[1] > 0, f"no decode or no prefill tokens drawn: {bars}"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{width}x{height}.png"), full_page=True)
        stop.set()
        traffic.join(60)
        context.close()
    assert refused == [], f"the dashboard asked the network: {refused}"
    real = [e for e in errors if not is_benign(e)]
    assert real == [], f"browser console errors: {real}"
