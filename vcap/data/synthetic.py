"""The embedded offline dataset: procedural videos of coloured shapes that move, grow or shrink.

Each clip holds 1-2 different shapes with a colour and a size; each shape does one action. Clips are
real H.264 mp4 files written with PyAV, described by a JSONL manifest in the same format users write
for their own data (see README, "Manifest format").

Every record carries the complete ground truth (``caption``, ``structure``, ``events``) that the rewards
and metrics score against, and human-style SFT targets (``sft_caption``, ``sft_structure``) that, like
real reference captions, leave things out: annotators always describe one shape, its colour and what it
does, but mention its size only ``SIZE_MENTION`` of the time, say which way a moving shape goes only
``DIRECTION_MENTION`` of the time (else just "moves") and describe a second shape only ``EXTRA_MENTION`` of
the time. SFT imitates those omissions; the GRPO rewards ask for everything that happened (the events say
"the red circle moves left"). That gap is the paper's setting in miniature (see configs/demo.yaml).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230), "yellow": (235, 210, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 7.0, "large": 12.0}
ACTIONS = ("moves left", "moves right", "moves up", "moves down", "grows", "shrinks")
_MOTION = {"moves left": (-1, 0), "moves right": (1, 0), "moves up": (0, -1), "moves down": (0, 1)}


def vocabulary_corpus() -> list[str]:
    """Every phrase the synthetic captions can use, for training the tiny tokenizer."""
    lines = []
    for color in COLORS:
        for shape in SHAPES:
            for size in SIZES:
                for action in ACTIONS:
                    lines.append(f"A {size} {color} {shape} {action}. the {color} {shape} {action}")
                    lines.append(json.dumps([{"subject": shape, "attributes": [color, size], "actions": [action]}]))
    return lines


@dataclass
class ShapeSpec:
    shape: str
    color: str
    size: str
    action: str
    x: float
    y: float

    def radius_at(self, t: float) -> float:
        base = SIZES[self.size]
        return base * (1 + 0.8 * t if self.action == "grows" else 1 - 0.45 * t if self.action == "shrinks" else 1)

    def center_at(self, t: float, travel: float) -> tuple[float, float]:
        dx, dy = _MOTION.get(self.action, (0, 0))
        return self.x + dx * travel * t, self.y + dy * travel * t


def _draw(frame: np.ndarray, spec: ShapeSpec, cx: float, cy: float, r: float) -> None:
    h, w, _ = frame.shape
    yy, xx = np.mgrid[0:h, 0:w]
    if spec.shape == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif spec.shape == "square":
        mask = (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    else:  # upward triangle: inside the band below the apex, widening linearly
        rel = (yy - (cy - r)) / (2 * r)
        mask = (rel >= 0) & (rel <= 1) & (np.abs(xx - cx) <= rel * r)
    frame[mask] = COLORS[spec.color]


def render_clip(specs: list[ShapeSpec], size: int, num_frames: int) -> np.ndarray:
    travel = size * 0.4
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    for k in range(num_frames):
        t = k / max(num_frames - 1, 1)
        for spec in specs:
            cx, cy = spec.center_at(t, travel)
            _draw(frames[k], spec, cx, cy, spec.radius_at(t))
    return frames


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    import av  # PyAV, imported lazily: only writing videos needs it

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def sample_specs(rng: random.Random, size: int) -> list[ShapeSpec]:
    count = rng.choice((1, 2))
    shapes = rng.sample(SHAPES, count)
    colors = rng.sample(list(COLORS), count)
    specs = []
    for i, (shape, color) in enumerate(zip(shapes, colors)):
        action = rng.choice(ACTIONS)
        dx, dy = _MOTION.get(action, (0, 0))
        # start on the side opposite the motion so the shape stays in frame
        x = size * (0.7 if dx < 0 else 0.3 if dx > 0 else 0.5)
        y = size * (0.7 if dy < 0 else 0.3 if dy > 0 else 0.5)
        if count == 2 and dx == 0:
            x = size * (0.27 if i == 0 else 0.73)
        if count == 2 and dy == 0:
            y = size * (0.27 if i == 0 else 0.73)
        jitter = size * 0.08  # small random offsets so no two clips are pixel-identical
        specs.append(ShapeSpec(shape, color, rng.choice(list(SIZES)), action, x + rng.uniform(-jitter, jitter),
                               y + rng.uniform(-jitter, jitter)))
    return specs


SIZE_MENTION = 0.3       # share of human-style targets that state a described shape's size
DIRECTION_MENTION = 0.3  # share that say which way a described moving shape goes ("moves left", else "moves")
EXTRA_MENTION = 0.3      # share that describe a second shape at all
VAGUE_MOTION = "moves"   # what a human-style target says of a movement whose direction it leaves out


def _action(spec: ShapeSpec, directed: bool) -> str:
    return spec.action if directed or spec.action not in _MOTION else VAGUE_MOTION


def _caption(specs: list[ShapeSpec], with_size: list[bool], directed: list[bool]) -> str:
    return " ".join(f"A {s.size + ' ' if sized else ''}{s.color} {s.shape} {_action(s, d)}."
                    for s, sized, d in zip(specs, with_size, directed))


def _structure(specs: list[ShapeSpec], with_size: list[bool], directed: list[bool]) -> list[dict]:
    return [{"subject": s.shape, "attributes": [s.color, s.size] if sized else [s.color], "actions": [_action(s, d)]}
            for s, sized, d in zip(specs, with_size, directed)]


def describe(specs: list[ShapeSpec], rng: random.Random | None = None) -> dict:
    """Complete ground truth, plus human-style SFT targets drawn with ``rng`` (complete when ``rng`` is None)."""
    full = [True] * len(specs)
    out = {"caption": _caption(specs, full, full), "structure": _structure(specs, full, full),
           "events": [f"the {s.color} {s.shape} {s.action}" for s in specs]}
    if rng is not None:
        mentioned = specs[:1] + [s for s in specs[1:] if rng.random() < EXTRA_MENTION]
        sized = [rng.random() < SIZE_MENTION for _ in mentioned]
        directed = [rng.random() < DIRECTION_MENTION for _ in mentioned]
        out["sft_caption"] = _caption(mentioned, sized, directed)
        out["sft_structure"] = _structure(mentioned, sized, directed)
    return out


def scene_questions(specs: list[ShapeSpec], rng: random.Random) -> list[dict]:
    """Exact multiple-choice questions about a clip's scene for the QA reward: each shape's colour, size and action
    (with distractors drawn from the scene vocabulary), and which shape has a colour. A caption that names every
    shape with its size and which way it moves answers them all."""
    out = []
    for s in specs:
        actions = [s.action, *rng.sample([a for a in ACTIONS if a != s.action], 3)]
        items = [(f"What colour is the {s.shape}?", list(COLORS), s.color),
                 (f"What size is the {s.color} {s.shape}?", list(SIZES), s.size),
                 (f"What does the {s.color} {s.shape} do?", actions, s.action),
                 (f"Which shape is {s.color}?", list(SHAPES), s.shape)]
        for question, options, answer in items:
            rng.shuffle(options)
            out.append({"question": question, "options": options, "answer": answer})
    return out


@dataclass(frozen=True)
class ShapesSpec:
    num_train: int = 256
    num_val: int = 32
    seed: int = 0
    size: int = 56
    num_frames: int = 8
    fps: int = 4
    version: int = 4  # bumped when records change, so cached datasets are rebuilt (2: human-style SFT targets,
    #                   3: they leave out directions, 4: exact qa for the QA reward)


def build_shapes_dataset(root: str | Path, spec: ShapesSpec = ShapesSpec()) -> Path:
    """Write videos + ``manifest.jsonl`` under ``root`` (skipped when an identical build exists)."""
    root = Path(root)
    manifest = root / "manifest.jsonl"
    meta = root / "meta.json"
    if manifest.exists() and meta.exists() and json.loads(meta.read_text()) == asdict(spec):
        return manifest
    records = []
    # each split has its own random stream, so val is the same held-out set whatever num_train is
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        rng = random.Random(f"shapes-{spec.seed}-{split}")
        annotator = random.Random(f"shapes-{spec.seed}-{split}-annotator")  # omissions never change the videos
        for i in range(count):
            specs = sample_specs(rng, spec.size)
            rel = f"videos/{split}-{i:05d}.mp4"
            write_mp4(render_clip(specs, spec.size, spec.num_frames), root / rel, spec.fps)
            questions = scene_questions(specs, random.Random(f"shapes-{spec.seed}-{split}-{i}-qa"))
            records.append({"id": f"shapes-{split}-{i:05d}", "video": rel, **describe(specs, annotator),
                            "qa": questions, "split": split, "seed": spec.seed})
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(manifest)
    meta.write_text(json.dumps(asdict(spec)))
    return manifest
