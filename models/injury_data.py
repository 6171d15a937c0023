"""Generate Redline's injury dataset (no public labeled set exists; see models/data/INJURY_DATASHEET.md).

    python -m models.injury_data            # rewrites models/data/injury.jsonl (deterministic)

Rows are composed from hand-written parts: who, what happened, how bad, in which register
(news, first person, fiction, medical, sports, chat), explicit or implied. Negatives are mostly
hard: violent words used figuratively or technically, and near misses where nobody is hurt.
The held-out hard negatives in models/data/injury_hard_negatives.jsonl are written separately
and never enter training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .injury_parts import (
    ATHLETES,
    CAUSES,
    CHAT_PROMPTS,
    FICTION,
    FIGURATIVE,
    FIRST,
    HARMLESS_DOMAINS,
    IMPLIED,
    INJURY_NOUNS,
    MEDICAL,
    MILD,
    MODERATE,
    NEAR_MISS,
    NEUTRAL,
    NEWS,
    PEOPLE,
    ROUTINE_BODY,
    ROUTINE_FRAMES,
    SEVERE,
    SPORTS,
    SPORTS_INJ,
    TECH_FRAMES,
    TECH_OBJECTS,
    TECH_VERBS,
    WOUNDS,
)

OUT = Path(__file__).resolve().parent / "data" / "injury.jsonl"
SEED = 20261122

Row = dict[str, Any]  # text, label (0 or 1), category, group and prompt of one generated row


def _pos(rng: random.Random) -> Row:
    severity = rng.choice(["mild", "moderate", "severe"])
    events = {"mild": MILD, "moderate": MODERATE, "severe": SEVERE}[severity]
    event = rng.choice(events)
    kind = rng.choice(["news", "news", "first", "fiction", "medical", "sports", "implied"])
    fill = {"P": rng.choice(PEOPLE), "E": event, "C": rng.choice(CAUSES), "I": rng.choice(INJURY_NOUNS),
            "N": str(rng.randint(2, 14)), "E1": event.replace("was ", "got ").replace("an ", "my ", 1)
            .replace("a ", "my ", 1).replace(" the ", " my ", 1),
            "name": rng.choice([p for p in PEOPLE if p[0].isupper()]), "wound": rng.choice(WOUNDS),
            "poss": rng.choice(["his", "her", "their"]), "A": rng.choice(ATHLETES), "SI": rng.choice(SPORTS_INJ)}
    template = {"news": NEWS, "first": FIRST, "fiction": FICTION, "medical": MEDICAL, "sports": SPORTS,
                "implied": IMPLIED}[kind]
    frame = rng.randrange(len(template))  # same draw as rng.choice: the file stays byte-stable
    text = template[frame].format(**fill)
    uses_event = kind in ("news", "first")
    return {"text": text[0].upper() + text[1:], "label": 1, "category": f"{kind}:{severity}" if uses_event else kind,
            "group": f"{kind}:{frame}"}


def _neg(rng: random.Random) -> Row:
    kind = rng.choices(["figurative", "technical", "harmless", "near_miss", "neutral", "combo", "routine_body"],
                       weights=[2, 4, 2, 2, 1, 2, 2])[0]
    group = ""
    if kind == "figurative":
        text = rng.choice(FIGURATIVE)
    elif kind == "technical":
        frame = rng.randrange(len(TECH_FRAMES))
        text = TECH_FRAMES[frame].format(v=rng.choice(TECH_VERBS), o=rng.choice(TECH_OBJECTS))
        group = f"technical:{frame}"
    elif kind == "harmless":
        text = rng.choice(HARMLESS_DOMAINS)
    elif kind == "near_miss":
        text = rng.choice(NEAR_MISS)
    elif kind == "neutral":
        text = rng.choice(NEUTRAL)
    elif kind == "routine_body":
        sentence = rng.choice(ROUTINE_BODY)
        text = rng.choice(ROUTINE_FRAMES).format(s=sentence)
        group = "s:" + sentence
    else:  # two harmless sentences, so length alone never signals the class
        first = rng.choice(FIGURATIVE + NEUTRAL + HARMLESS_DOMAINS)
        text = f"{first} {rng.choice(NEAR_MISS + NEUTRAL)}"
        group = "s:" + first
    return {"text": text, "label": 0, "category": kind, "group": group or "s:" + text}


def generate(n_pos: int = 1800, n_neg: int = 2400) -> list[Row]:
    rng = random.Random(SEED)
    rows: dict[str, Row] = {}
    for maker, target in ((_pos, n_pos), (_neg, n_neg)):
        made, tries = 0, 0
        while made < target and tries < target * 50:
            tries += 1
            row = maker(rng)
            if row["text"] not in rows:
                row["prompt"] = rng.choice(CHAT_PROMPTS)
                rows[row["text"]] = row
                made += 1
    # Short positives paired with a harmless sentence: injury inside otherwise ordinary text.
    for text in list(t for t, r in rows.items() if r["label"] == 1)[:300]:
        combined = f"{rng.choice(NEUTRAL)} {text}"
        rows.setdefault(combined, {"text": combined, "label": 1, "category": "mixed", "prompt": "",
                                   "group": rows[text]["group"]})
    out = list(rows.values())
    rng.shuffle(out)
    return out


def main() -> None:
    rows = generate()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    pos = sum(r["label"] for r in rows)
    print(f"wrote {len(rows)} rows ({pos} injured, {len(rows) - pos} not) to {OUT}")


if __name__ == "__main__":
    main()
