"""The live viewer page, end to end in headless Chromium against the real service.

Starts the service on a free port, opens ``/`` in Debian's chromium (driven by playwright's
async API with ``executable_path``; no browser is downloaded), replays lines over WebSocket and
checks what the page shows. The screenshot is kept as ``artifacts/viewer.png``.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream.config import ServiceConfig, TokenConfig, load_config
from stream.formats import write_events
from stream.replay import replay
from stream.service import Service
from tests.test_formats import sample_lines

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no chromium binary (install Debian's: apt-get install chromium)", allow_module_level=True
    )
async_api = pytest.importorskip("playwright.async_api")
Browser = async_api.Browser
Page = async_api.Page

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@dataclass(frozen=True)
class Line:
    """A line to replay: what stream.replay needs (text, cue start)."""

    text: str
    start_ms: int | None = None


DRAMA = [
    Line("[00:01:10] [悬疑的低音提琴] 侦探（画外音）：雨下了一整夜。"),
    Line("[00:01:14] [门铃声] 管家（对白）：先生，有位客人找您。"),
    Line('[00:01:19] 侦探（对白，低声）：<img src=x onerror="window.__xss=1">让他进来。'),
]
SCIENCE = [
    Line("[00:00:03] [电子合成器琶音] 主持人（画外音）：今天聊聊冰为什么会浮起来。"),
    Line("[00:00:09] [冰块碰撞声]"),
]


def _config(**auth: object) -> ServiceConfig:
    config = load_config(None, environ={})
    server = dataclasses.replace(config.server, port=0, shutdown_timeout_s=5.0)
    return dataclasses.replace(config, server=server, auth=dataclasses.replace(config.auth, **auth))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian chromium, one per test."""
    async with async_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def _open(browser: Browser, url: str, errors: list[str] | None = None) -> Page:
    """Open the viewer at ``url`` and wait until it is subscribed; collect script errors."""
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    if errors is not None:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    await page.wait_for_selector('#conn[data-state="open"]', timeout=10_000)
    return page


async def test_page_shows_replayed_events_latency_and_filters(browser: Browser) -> None:
    """Events of replayed lines appear per stream by kind, latency updates, filters apply."""
    errors: list[str] = []
    async with Service(_config()) as service:
        page = await _open(browser, f"{service.url}/", errors)
        ws = service.url.replace("http://", "ws://")
        drama = await replay(DRAMA, f"{ws}/ingest/drama", pace=False)
        science = await replay(SCIENCE, f"{ws}/ingest/science", pace=False)
        assert drama.done == len(DRAMA)
        assert science.done == len(SCIENCE)
        total = drama.events + science.events
        assert total >= 8  # three kinds across five lines

        await page.wait_for_function(
            f"document.querySelectorAll('#streams .ev').length >= {total}", timeout=10_000
        )
        assert await page.locator('section.stream[data-stream="drama"] .ev').count() == (
            drama.events
        )
        assert await page.locator('section.stream[data-stream="science"] .ev').count() == (
            science.events
        )
        drama_col = page.locator('section.stream[data-stream="drama"]')
        speech = drama_col.locator(".ev-speech")
        assert "侦探" in await speech.locator(".speaker").all_inner_texts()
        assert "画外音" in await drama_col.locator(".ev-speech .status").all_inner_texts()
        assert "门铃声" in await drama_col.locator(".ev-action .cue").all_inner_texts()
        assert "悬疑的低音提琴" in await drama_col.locator(".ev-music .cue").all_inner_texts()
        assert "00:01:14" in await drama_col.locator(".ev .t").all_inner_texts()
        # Newest line first; within a line, events keep their order in the line.
        seqs = await drama_col.locator(".ev").evaluate_all("rows => rows.map(r => r.dataset.seq)")
        assert seqs == sorted(seqs, key=int, reverse=True)
        first_line = drama_col.locator('.ev[data-seq="0"]')
        assert await first_line.evaluate_all("rows => rows.map(r => r.dataset.kind)") == [
            "music",
            "speech",
        ]
        # Event text is shown as text: markup in a subtitle line never becomes markup.
        texts = await speech.locator(".text").all_inner_texts()
        assert any('<img src=x onerror="window.__xss=1">' in text for text in texts)
        assert await page.evaluate("window.__xss === undefined")
        assert await page.locator("#streams img").count() == 0

        # The three kinds look different (their accent colours differ).
        colours = {
            kind: await page.locator(f".ev-{kind}").first.evaluate(
                "el => getComputedStyle(el).borderTopColor"
            )
            for kind in ("speech", "music", "action")
        }
        assert len(set(colours.values())) == 3

        # The latency panel covers every line and shows percentiles.
        lines = len(DRAMA) + len(SCIENCE)
        await page.wait_for_function(
            f"document.getElementById('lat-count').textContent === '{lines}'", timeout=5_000
        )
        assert (await page.inner_text("#p50")).endswith("ms")
        assert (await page.inner_text("#p99")).endswith("ms")
        assert await page.inner_text("#count-lines") == str(lines)
        sparkline_drawn = await page.evaluate(
            """() => {
                const c = document.getElementById('sparkline');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return true;
                return false;
            }"""
        )
        assert sparkline_drawn

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)

        # Client-side filters: a kind toggle hides that kind; a stream chip hides its column.
        await page.locator('input[name="kind"][value="music"]').uncheck()
        assert await page.locator(".ev-music").first.is_hidden()
        assert await page.locator(".ev-speech").first.is_visible()
        await page.locator('.chip[data-stream="science"]').click()
        assert await page.locator('section.stream[data-stream="science"]').is_hidden()
        assert errors == []
        await page.close()  # before the service drains, so it has no subscriber to wait for


async def test_server_side_stream_filter_reconnects_with_the_query(browser: Browser) -> None:
    """Applying a stream filter reconnects to /events?stream=… and only that stream arrives."""
    async with Service(_config()) as service:
        page = await _open(browser, f"{service.url}/?kind=speech")
        await page.fill("#filter-streams", "science")
        await page.click("#server-filter button")
        await page.wait_for_selector('#conn[data-state="open"]')
        assert "stream=science" in page.url
        await page.wait_for_function(
            "document.getElementById('conn-text').textContent.includes('science')"
        )
        ws = service.url.replace("http://", "ws://")
        await replay(DRAMA[:1], f"{ws}/ingest/drama", pace=False)
        science = await replay(SCIENCE[:1], f"{ws}/ingest/science", pace=False)
        await page.wait_for_function(
            "document.querySelectorAll('#streams .ev-speech').length >= 1", timeout=10_000
        )
        # ?kind=speech on the page became a server filter: only speech, only science.
        assert await page.locator("#streams .ev").count() == 1
        assert await page.locator('section.stream[data-stream="drama"]').count() == 0
        assert science.events >= 2
        assert not await page.locator('input[name="kind"][value="music"]').is_checked()
        await page.close()


async def test_page_passes_its_token_to_events(browser: Browser) -> None:
    """With auth on, /?token=… subscribes with that token; without it the page says so."""
    token = TokenConfig(token="viewer-secret-1", scopes=("ingest", "subscribe"))
    async with Service(_config(enabled="on", tokens=(token,))) as service:
        page = await _open(browser, f"{service.url}/?token=viewer-secret-1")
        ws = service.url.replace("http://", "ws://")
        result = await replay(
            SCIENCE[:1], f"{ws}/ingest/science", pace=False, token="viewer-secret-1"
        )
        assert result.done == 1
        await page.wait_for_function(
            "document.querySelectorAll('#streams .ev').length >= 1", timeout=10_000
        )
        refused = await browser.new_page()
        await refused.goto(f"{service.url}/")
        await refused.wait_for_selector('#conn[data-state="closed"]', timeout=10_000)
        assert "token" in await refused.inner_text("#conn-text")
        await refused.close()
        await page.close()


async def test_vtt_export_parses_in_chromiums_webvtt_parser(browser: Browser) -> None:
    """The vtt export loads as a <track> in Chromium: cue times, voices, unescaped text."""
    out = io.StringIO()
    write_events(sample_lines(), "vtt", out)
    page = await browser.new_page()
    await page.set_content("<video></video>")
    cues = await page.evaluate(
        """async (vtt) => {
            const track = document.createElement('track');
            track.kind = 'subtitles';
            track.src = URL.createObjectURL(new Blob([vtt], {type: 'text/vtt'}));
            document.querySelector('video').append(track);
            track.track.mode = 'hidden';
            await new Promise((ok, bad) => {
                track.onload = ok;
                track.onerror = () => bad(new Error('chromium rejected the WebVTT file'));
            });
            return [...track.track.cues].map((cue) => {
                const html = cue.getCueAsHTML();
                const voices = [...html.querySelectorAll('span[title]')].map((s) => s.title);
                return [cue.startTime, cue.endTime, voices, html.textContent];
            });
        }""",
        out.getvalue(),
    )
    await page.close()
    assert cues == [
        [62, 64.5, ["李佳琦"], "[轻柔竖琴泛音]\n姐妹们！这个精华水真的绝了！"],
        [600.25, 602.25, ["主讲人"], "[字幕弹出：A|B]\n<b>x</b> & y --> z"],
        [602.25, 604.25, [], "[欢快口哨声]"],
        [604.25, 606.25, [], "……"],
        [3601, 3603, [], "[手机震动声]"],
    ]


async def test_page_keeps_only_the_newest_events_per_stream(browser: Browser) -> None:
    """The DOM is bounded: with ?max=3 a stream shows its 3 newest events, counts go on."""
    async with Service(_config()) as service:
        page = await _open(browser, f"{service.url}/?max=3")
        ws = service.url.replace("http://", "ws://")
        result = await replay(DRAMA, f"{ws}/ingest/drama", pace=False)
        assert result.events > 3
        await page.wait_for_function(
            f"document.getElementById('count-events').textContent === '{result.events}'"
        )
        rows = page.locator('section.stream[data-stream="drama"] .ev')
        assert await rows.count() == 3
        assert await rows.first.get_attribute("data-seq") == str(len(DRAMA) - 1)
        await page.close()
