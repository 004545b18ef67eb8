"""A scripted OpenAI chat-completions server on 127.0.0.1 for judge tests."""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedServer:
    """``script(request_json) -> ("reply", text) | ("status", code) | ("sleep", seconds, text)``."""

    def __init__(self, script):
        self.script = script
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                action = server.script(body)
                if action[0] == "status":
                    self.send_response(action[1])
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": "scripted", "code": action[1]}}).encode())
                    return
                if action[0] == "sleep":
                    time.sleep(action[1])
                text = action[-1]
                payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def scripted_reply(prompt: str, entailed: dict[str, set[str]], fail_on: str | None = None) -> str:
    """A deterministic judge: extraction splits sentences, entailment looks premises up in ``entailed``,
    VDC answers 'red' to colour questions and grades 'red' yes/4, anything else no/1."""
    if fail_on and fail_on in prompt:
        return "garbage"
    if "Statements (JSON list)" in prompt:
        premise = prompt.split("Description:\n")[1].split("\n\nStatements")[0]
        hyps = json.loads(prompt.split("Statements (JSON list):\n")[1].split("\n\nReply")[0])
        ok = entailed.get(premise, set())
        return json.dumps({"verdicts": ["entailment" if h in ok else "neutral" for h in hyps]})
    if "key events" in prompt or "key objects" in prompt:
        text = prompt.split("Description:\n")[1].split("\n\nReply")[0]
        key = "events" if "key events" in prompt else "objects"
        return json.dumps({key: [s for s in re.split(r"(?<=\.)\s+", text) if s]})
    if "Answer a question" in prompt:
        question = prompt.split("Question: ")[1].split("\n")[0]
        return json.dumps({"answer": "red" if "colour" in question else "unknown"})
    if "Grade a predicted" in prompt:
        predicted = prompt.split("Predicted answer: ")[1].split("\n")[0]
        return json.dumps({"pred": "yes", "score": 4} if predicted == "red" else {"pred": "no", "score": 1})
    return "?"
