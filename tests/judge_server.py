"""A scripted OpenAI chat-completions server on 127.0.0.1 for judge tests."""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedServer:
    """``script(request_json) -> ("reply", text) | ("status", code) | ("sleep", seconds, text)
    | ("raw", status, content_type, body)`` (e.g. a proxy's HTML page). GETs (the reachability probe's
    ``/models``) are answered with an empty model list and their headers kept in ``get_headers``."""

    def __init__(self, script):
        self.script = script
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.get_headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.get_headers.append({k.lower(): v for k, v in self.headers.items()})
                data = b'{"object": "list", "data": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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
                if action[0] == "raw":
                    data = action[3].encode()
                    self.send_response(action[1])
                    self.send_header("Content-Type", action[2])
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
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

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default 5 refuses connections when a concurrent batch arrives at once
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
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


def parse_request(body: dict) -> dict:
    """What a request made with vcap's built-in prompts (either set) asks: {'task', 'protocol', fields...}.
    Tasks: extract_events, extract_objects, entail_events, entail_objects, answer, grade."""
    import ast

    messages = body["messages"]
    user = messages[-1]["content"]
    system = messages[0]["content"] if len(messages) > 1 else ""
    if "Statements (JSON list)" in user:
        return {"task": "entail_events", "protocol": "robust",
                "premise": user.split("Description:\n")[1].split("\n\nStatements")[0],
                "items": json.loads(user.split("Statements (JSON list):\n")[1].split("\n\nReply")[0])}
    if "\n\nEvents: " in user or "\n\nObjects: " in user:
        kind = "events" if "\n\nEvents: " in user else "objects"
        marker = "\n\nEvents: " if kind == "events" else "\n\nObjects: "
        return {"task": f"entail_{kind}", "protocol": "official",
                "premise": user.split("Video Description:\n")[1].split(marker)[0],
                "items": ast.literal_eval(user.split(marker)[1].split("\nAnswer with JSON")[0])}
    if "key events" in user or "key objects" in user:
        kind = "events" if "key events" in user else "objects"
        if user.startswith("Here is a description"):
            return {"task": f"extract_{kind}", "protocol": "official",
                    "text": user.split("Description: ", 1)[1].split("\n\nList at most")[0]}
        return {"task": f"extract_{kind}", "protocol": "robust",
                "text": user.split("Description:\n")[1].split("\n\nReply")[0]}
    if system.startswith("You answer questions"):
        body_text = user.split("detailed description: ", 1)[1]
        return {"task": "answer", "protocol": "official", "text": body_text.split(", question: ")[0],
                "question": body_text.split(", question: ")[1].split("\nGive only")[0]}
    if "Answer a question" in user:
        return {"task": "answer", "protocol": "robust", "text": user.split("Description:\n")[1].split("\n\nQuestion")[0],
                "question": user.split("Question: ")[1].split("\n")[0]}
    if system.startswith("You grade answers") or "Grade a predicted" in user:
        return {"task": "grade", "protocol": "official" if system else "robust",
                "question": user.split("Question: ")[1].split("\n")[0],
                "answer": user.split("Correct " + ("Answer" if system else "answer") + ": ")[1].split("\n")[0],
                "prediction": user.split("Predicted " + ("Answer" if system else "answer") + ": ")[1].split("\n\n")[0]}
    return {"task": "unknown", "protocol": "?"}


def verdict_reply(req: dict, entailed: set[str]) -> str:
    """A well-formed entailment reply in the shape the request's protocol asks for."""
    labels = ["entailment" if item in entailed else "neutral" for item in req["items"]]
    if req["protocol"] == "robust":
        return json.dumps({"verdicts": labels})
    key = req["task"].split("_")[1]
    return json.dumps({key: [{key[:-1]: item, "relationship": label, "reason": "scripted"}
                             for item, label in zip(req["items"], labels)]})


def items_reply(req: dict, items: list[str]) -> str:
    key = req["task"].split("_")[1]
    return repr({key: items}) if req["protocol"] == "official" else json.dumps({key: items})


def scripted_judge(body: dict, entailed: dict[str, set[str]] | None = None, entail_word: str | None = None) -> str:
    """A deterministic judge for either prompt set: extraction splits sentences, entailment looks premises up in
    ``entailed`` (case-insensitively) or entails every item containing ``entail_word``, VDC answers 'red' to
    colour questions and grades 'red' yes/4, else no/1."""
    req = parse_request(body)
    entailed = {k.lower(): {v.lower() for v in vs} for k, vs in (entailed or {}).items()}
    if req["task"].startswith("extract"):
        return items_reply(req, [s for s in re.split(r"(?<=\.)\s+", req["text"]) if s])
    if req["task"].startswith("entail"):
        ok = entailed.get(req["premise"].lower(), set())
        return verdict_reply(req, {item for item in req["items"]
                                   if item.lower() in ok or (entail_word and entail_word in item.lower())})
    if req["task"] == "answer":
        answer = "red" if "colour" in req["question"] else "unknown"
        return answer if req["protocol"] == "official" else json.dumps({"answer": answer})
    if req["task"] == "grade":
        grade = {"pred": "yes", "score": 4} if req["prediction"] == "red" else {"pred": "no", "score": 1}
        return repr(grade) if req["protocol"] == "official" else json.dumps(grade)
    return "?"


def judge_at(server, **kw):
    """An ``openai`` judge on a ScriptedServer: no cache, no SDK retries."""
    from vcap.judges import build_judge

    return build_judge("openai", model="judge", base_url=server.url, cache=None, max_retries=0, timeout=10,
                       concurrency=8, **kw)
