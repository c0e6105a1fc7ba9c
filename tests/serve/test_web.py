"""The chat page at `/`, in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium)
against a real `lmzoo serve` process with the default model. Streaming answers, multi-turn history
and the system prompt as the page sends them, temperature, Stop cancelling server-side, Copy, the
Markdown renderer (and that model output cannot inject markup), and the API-key field."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest

from tests.serve.test_server import MODEL, scrape, start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# offline machine: no background connections to Google's hosts (they would be refused, many at a time)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server():
    proc, base = start_server("--max-running", "4")
    yield base
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(permissions=["clipboard-read", "clipboard-write"], base_url=server)
    pg = ctx.new_page()
    pg.bodies = []  # what the page sent to the chat endpoint
    pg.on("request", lambda r: pg.bodies.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions") else None)
    pg.errors = []  # console errors and uncaught exceptions
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto("/")
    pg.wait_for_function(f"document.getElementById('model').textContent === {json.dumps(MODEL)}")
    yield pg
    assert pg.errors == []
    ctx.close()


def say(page, text: str, n: int) -> str:
    """Type and send a message; wait for the n-th assistant reply to finish; return its text."""
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    page.wait_for_selector(f".msg.assistant:nth-of-type({2 * n})[data-done]", timeout=90_000)
    return page.locator(".msg.assistant .body").nth(n - 1).inner_text()


def test_chat_streams_with_history_system_prompt_and_temperature(page, tmp_path_factory):
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    first = say(page, "What is the capital of France?", 1)
    assert "Paris" in first
    page.click("#toggle-settings")
    page.fill("#system", "You are a geography teacher.")
    say(page, "And of Italy?", 2)
    b1, b2 = page.bodies
    assert b1["stream"] is True and b1["temperature"] == 0 and b1["max_tokens"] == 24 and b1["model"] == MODEL
    assert b1["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert [m["role"] for m in b2["messages"]] == ["system", "user", "assistant", "user"]
    assert b2["messages"][0]["content"] == "You are a geography teacher."
    assert b2["messages"][2]["content"].strip() == first.strip()  # the streamed reply, as the next turn's history
    shot = tmp_path_factory.getbasetemp() / "chat-page.png"
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    # the page's answer is the API's answer for the same request
    r = httpx.post(page.url.rstrip("/") + "/v1/chat/completions", json={**b1, "stream": False}, timeout=60).json()
    assert r["choices"][0]["message"]["content"].strip() == first.strip()


def test_copy_puts_the_reply_on_the_clipboard(page):
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "12")
    reply = say(page, "Say hello.", 1)
    page.click(".msg.assistant .copy")
    assert page.evaluate("navigator.clipboard.readText()").strip() == reply.strip()


def test_stop_cancels_the_request_on_the_server(page, server):
    page.fill("#temperature", "0")  # greedy: the model counts on for hundreds of tokens (sampled, it may stop early)
    page.fill("#max-tokens", "3000")
    page.fill("#prompt", "Count to a thousand.")
    page.click("#send")
    page.wait_for_function("document.querySelector('.msg.assistant .body').textContent.length > 10", timeout=60_000)
    assert page.is_disabled("#send")
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-done]")
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    deadline = time.time() + 20
    while httpx.get(server + "/health").json()["running"] and time.time() < deadline:
        time.sleep(0.1)
    m = scrape(server)
    assert m["lmzoo_requests_running"] == 0 and m[("lmzoo_requests_finished_total", "cancelled")] >= 1


MARKDOWN = """# Title
Some **bold**, *italic* and `code <b>`.

- one
- two

1. first
2. second

```python
print("<hi>")
```
> quoted

[a link](https://example.org) and [bad](javascript:alert(1))
<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>"""


def test_markdown_renders_and_never_injects_markup(page):
    page.evaluate("md => { const d = document.createElement('div'); d.id = 'md'; d.innerHTML = renderMarkdown(md);"
                  " document.body.appendChild(d); }", MARKDOWN)
    md = page.locator("#md")
    assert md.locator("h1").inner_text() == "Title"
    assert md.locator("strong").inner_text() == "bold" and md.locator("em").inner_text() == "italic"
    assert md.locator("p code").inner_text() == "code <b>"
    assert md.locator("ul li").all_inner_texts() == ["one", "two"]
    assert md.locator("ol li").all_inner_texts() == ["first", "second"]
    assert md.locator("pre code.language-python").inner_text() == 'print("<hi>")'
    assert md.locator("blockquote").inner_text() == "quoted"
    assert md.locator("a").count() == 1 and md.locator("a").get_attribute("href") == "https://example.org"
    assert md.locator("img, script, b").count() == 0  # HTML in model output stays text
    assert "<img src=x" in md.inner_text() and page.evaluate("window.pwned") is None
    # an unclosed fence while streaming renders as code so far
    assert page.evaluate("renderMarkdown('```\\nhalf')") == "<pre><code>half</code></pre>"


def test_api_key_field(browser):
    proc, base = start_server("--api-key", "sesame")
    try:
        ctx = browser.new_context(base_url=base)
        pg = ctx.new_page()
        assert pg.goto("/").status == 200  # the page itself needs no key
        pg.wait_for_function("document.getElementById('model').textContent.startsWith('401')")
        pg.click("#toggle-settings")
        pg.fill("#api-key", "sesame")
        pg.dispatch_event("#api-key", "change")
        pg.wait_for_function(f"document.getElementById('model').textContent === {json.dumps(MODEL)}")
        pg.fill("#temperature", "0")
        pg.fill("#max-tokens", "12")
        assert "Paris" in say(pg, "What is the capital of France?", 1)
        ctx.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
