"""Writes shakespeare_next_line.jsonl: which of four lines follows a speaker's first line?

Run from the repository root: python examples/lm_eval/make_next_line.py. Each item takes a speech
of at least three lines from the last tenth of Tiny Shakespeare; the right answer is its second line,
the three wrong ones are that line garbled: its words shuffled, the letters inside each word
shuffled, its letters replaced by random ones. All four have the same length, so a model that has
learnt any English prefers the right one; chance is 25%.
"""

import json
import random
from pathlib import Path

TEXT = Path("../shared/data/text/tinyshakespeare.txt")
OUT = Path(__file__).with_name("shakespeare_next_line.jsonl")

speeches = [p.split("\n") for p in TEXT.read_text(encoding="utf-8").split("\n\n")]
speeches = [s for s in speeches[len(speeches) * 9 // 10:] if len(s) >= 3 and s[0].endswith(":")
            and len(s[1]) >= 20 and len(s[2]) >= 20]
def garbled(line: str, rng: random.Random) -> list[str]:
    words = line.split(" ")
    shuffled = words[:]
    while shuffled == words and len(set(words)) > 1:
        rng.shuffle(shuffled)
    inside = [w[0] + "".join(rng.sample(w[1:-1], len(w) - 2)) + w[-1] if len(w) > 3 else w for w in words]
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") if c.isalpha() else c for c in line)
    return [" ".join(shuffled), " ".join(inside), letters]


rng = random.Random(0)
items = rng.sample(speeches, 100)
with open(OUT, "w", encoding="utf-8") as f:
    for speech in items:
        line = speech[2]
        choices = [line, *garbled(line, rng)]
        rng.shuffle(choices)
        f.write(json.dumps({"context": f"{speech[0]}\n{speech[1]}\n", "choices": choices,
                            "answer": choices.index(speech[2])}) + "\n")
print(f"wrote {OUT}: {len(items)} items")
