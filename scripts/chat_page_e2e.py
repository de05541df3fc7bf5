#!/usr/bin/env python3
"""Browser check of serve's chat page: headless Chromium loads GET /, sends messages through the
page's own UI, and the streamed replies must appear.

    scripts/chat_page_e2e.py --serve target/release/serve            # starts serve --echo-backend
    scripts/chat_page_e2e.py --serve target/release/serve -- --model runs/tiny/model.gguf
    scripts/chat_page_e2e.py --url http://127.0.0.1:8000             # a server already running

The page is opened as /?autosend=MESSAGE&max_tokens=N (the page sends MESSAGE on load); each --then
message (one by default) is typed into #input and sent with #send. Each turn must end with its
assistant message marked `done`, non-empty, and with no error shown; with the echo backend (the
default of --serve) each reply must be its message, cut to --max-tokens bytes. The page must then
hold every turn in its `conversation` (what it sends with each request). Every reply is printed in
full; --screenshot saves the page as PNG at the end. With --serve, the server is stopped by SIGTERM
and must exit 0.

    scripts/chat_page_e2e.py --serve target/release/serve --max-tokens 96 --screenshot chat.png \
        --message "Write a Rust function ..." --then "Write ..." --then "Write ..." \
        -- --model runs/tiny/sft/model.gguf

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages
ending in NUL on fds 3 and 4), so only the Python standard library is needed. Chromium: the Debian
package (`apt-get install -y chromium`), or --chromium PATH.

Exit status: 0 the page works, 1 it does not (the reason is printed), 2 bad usage or no Chromium.
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-pipe",
]

# State of the page, as JSON: every message (role, text, done, error) and the error line.
PAGE_STATE = """JSON.stringify({
  messages: [...document.querySelectorAll('#messages .message')].map((m) => ({
    role: m.classList.contains('user') ? 'user' : 'assistant',
    text: m.textContent,
    done: m.classList.contains('done'),
    error: m.classList.contains('error'),
  })),
  error: document.getElementById('error')?.textContent ?? 'no #error element',
})"""


class Failed(Exception):
    """The page does not work: exit 1."""


class Browser:
    """Headless Chromium with one page, spoken to over the DevTools pipe."""

    def __init__(self, chromium):
        self.profile = tempfile.mkdtemp(prefix="chat-page-e2e-")
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()

        def dup_pipes():  # in the child: the pipe ends on fds 3 (commands) and 4 (replies)
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.log = open(os.path.join(self.profile, "chromium.log"), "w+")
        self.process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            preexec_fn=dup_pipes, pass_fds=(3, 4))  # kept open after dup_pipes ran
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.next_id = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method, params=None, session=None):
        """Sends one command and returns its result (events in between are skipped)."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            self.gone()
        while True:
            while b"\0" not in self.buffer:
                data = os.read(self.from_browser, 1 << 16)
                if not data:
                    self.gone()
                self.buffer += data
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise Failed(f"{method}: {reply['error']}")
                return reply["result"]

    def gone(self):
        self.log.seek(0)
        tail = "".join(self.log.readlines()[-10:])
        raise Failed(f"Chromium closed the DevTools pipe; its log ends:\n{tail}")

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate",
                           {"expression": expression, "returnByValue": True}, self.session)
        if "exceptionDetails" in result:
            raise Failed(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url):
        result = self.call("Page.navigate", {"url": url}, self.session)
        if "errorText" in result:
            raise Failed(f"cannot load {url}: {result['errorText']}")

    def screenshot(self, path):
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                         self.session)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    def close(self):
        self.process.kill()
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def wait_for_turn(browser, turn, timeout):
    """Waits until assistant message number `turn` (from 0) is done or failed; returns the state."""
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(browser.evaluate(PAGE_STATE))
        replies = [m for m in state["messages"] if m["role"] == "assistant"]
        if len(replies) > turn and (replies[turn]["done"] or replies[turn]["error"]):
            return state, replies[turn]
        if time.monotonic() > deadline:
            raise Failed(f"turn {turn + 1}: no finished reply after {timeout} s; page: {state}")
        time.sleep(0.1)


def check_turn(browser, turn, message, echo_tokens, timeout):
    """Checks turn number `turn`; with echo_tokens (the echo backend's max tokens: one token a
    byte), the reply must be the message cut to that many bytes."""
    state, reply = wait_for_turn(browser, turn, timeout)
    if reply["error"] or state["error"]:
        raise Failed(f"turn {turn + 1}: the page shows an error: {state['error']!r}")
    if not reply["text"]:
        raise Failed(f"turn {turn + 1}: the reply is empty")
    expected = message.encode()[:echo_tokens].decode(errors="ignore") if echo_tokens else None
    if expected is not None and reply["text"] != expected:
        raise Failed(f"turn {turn + 1}: the echo reply is {reply['text']!r}, expected {expected!r}")
    users = [m["text"] for m in state["messages"] if m["role"] == "user"]
    if users[-1] != message:
        raise Failed(f"turn {turn + 1}: the user message shows {users[-1]!r}")
    print(f"turn {turn + 1}: {message!r} -> {reply['text']!r}")


def start_server(binary, args):
    """Starts `binary ARGS --port 0`; returns (process, base URL) once it listens."""
    process = subprocess.Popen([binary, *args, "--port", "0"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        sys.stderr.write(line)
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return process, found.group(1)
    raise Failed(f"{binary} exited ({process.wait()}) before listening")


def run(options):
    server = None
    if options.serve:
        server, url = start_server(options.serve, options.serve_args or ["--echo-backend"])
    else:
        url = options.url.rstrip("/")
    echo = options.serve is not None and not options.serve_args
    echo_tokens = options.max_tokens if echo else None
    browser = None
    try:
        browser = Browser(options.chromium)
        query = urllib.parse.urlencode({"autosend": options.message, "max_tokens": options.max_tokens})
        browser.navigate(f"{url}/?{query}")
        check_turn(browser, 0, options.message, echo_tokens, options.timeout)
        typed = options.then or ["And a second turn, typed."]
        for turn, message in enumerate(typed, start=1):
            browser.evaluate(f"document.getElementById('input').value = {json.dumps(message)};"
                             "document.getElementById('send').click(); true")
            check_turn(browser, turn, message, echo_tokens, options.timeout)
        roles = browser.evaluate("JSON.stringify(conversation.map((m) => m.role))")
        if json.loads(roles) != ["user", "assistant"] * (1 + len(typed)):
            raise Failed(f"the page keeps the conversation as {roles}")
        if options.screenshot:
            browser.screenshot(options.screenshot)
            print(f"screenshot: {options.screenshot}")
    finally:
        if browser:
            browser.close()
        if server:
            server.send_signal(signal.SIGTERM)
            rest = server.stderr.read()
            sys.stderr.write(rest)
            code = server.wait(timeout=30)
            if code != 0:
                raise Failed(f"serve exited {code} after SIGTERM")
    print("chat page: ok")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Anything after -- is passed to serve (default: --echo-backend).")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="base URL of a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--serve", metavar="BIN", help="start this serve binary on a free port")
    parser.add_argument("--message", default="Hello from the browser check!",
                        help="the first message (sent by ?autosend=)")
    parser.add_argument("--then", action="append", metavar="MESSAGE",
                        help="a further message, typed into #input and sent with #send (repeat for "
                             "more turns; default one)")
    parser.add_argument("--screenshot", metavar="PNG", help="save the page as PNG after the last turn")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="the page's max tokens setting (?max_tokens=): keeps a reply, and "
                             "the second turn's prompt, short on a small model")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per reply")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    argv = sys.argv[1:]
    serve_args = []
    if "--" in argv:
        serve_args = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    options = parser.parse_args(argv)
    options.serve_args = serve_args
    if not os.access(options.chromium, os.X_OK):
        print(f"chat_page_e2e: no Chromium at {options.chromium} "
              "(apt-get install -y chromium, or --chromium PATH)", file=sys.stderr)
        return 2
    try:
        run(options)
    except Failed as e:
        print(f"chat_page_e2e: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
