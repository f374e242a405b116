"""English sentences from a small grammar: tens of thousands of distinct ones, deterministic from a seed,
with a held-out split by sentence (a hash of the text), pauses (commas, several clauses) and varied length."""
from __future__ import annotations

import hashlib

import numpy as np

SUBJECTS = ["the old captain", "my younger sister", "a quiet neighbour", "the engineer", "our teacher", "the baker",
            "a tired student", "the mayor", "his best friend", "the small dog", "every visitor", "the pilot",
            "a famous singer", "the gardener", "her cousin", "the doctor", "nobody in town", "the little boy",
            "my grandmother", "the new manager", "a curious fox", "the shop owner", "the whole team", "you"]
VERBS = ["found", "painted", "opened", "carried", "forgot", "measured", "borrowed", "cleaned", "fixed", "ordered",
         "watched", "packed", "brought", "moved", "described", "answered", "chose", "built", "wrapped", "sold",
         "reached", "pushed", "closed", "wanted"]
OBJECTS = ["a blue umbrella", "the heavy box", "seven apples", "the broken window", "a long letter", "the map",
           "her favourite book", "a wooden chair", "the kitchen door", "two cups of tea", "the bright lamp",
           "a paper boat", "the final answer", "some fresh bread", "the silver key", "a warm blanket",
           "the morning train", "a big surprise", "the purple scarf", "fifty pages", "the garden gate",
           "a tiny shell", "the music box", "a bag of rice"]
PLACES = ["near the river", "after lunch", "in the morning", "before the storm", "at the station",
          "by the window", "during the party", "on Monday", "behind the house", "under the bridge",
          "at midnight", "in the park", "before dinner", "at the market", "on the way home", "this evening"]
CLAUSES = ["and then everyone laughed", "but nobody noticed", "so we waited outside", "because it was raining",
           "while the kettle boiled", "although it was late", "and the room went quiet", "so the plan worked",
           "but the road was closed", "and I was very happy", "which surprised me", "until the lights went out"]
OPENERS = ["Well,", "Honestly,", "Yesterday,", "Believe me,", "Look,", "Of course,", "Suddenly,", "Luckily,", ""]
QUESTIONS = ["Did", "Why did", "When did", "How did"]


def sentence(rng: np.random.Generator) -> str:
    """One sentence: a statement (optionally opened, placed and continued by a clause) or a question."""
    pick = lambda words: words[int(rng.integers(len(words)))]  # noqa: E731
    subj, verb, obj = pick(SUBJECTS), pick(VERBS), pick(OBJECTS)
    if rng.random() < 0.2:
        base = {"found": "find", "forgot": "forget", "brought": "bring", "chose": "choose", "built": "build",
                "sold": "sell"}.get(verb, verb[:-2] if verb.endswith("ed") else verb)
        return f"{pick(QUESTIONS)} {subj} {base} {obj} {pick(PLACES)}?"
    parts = [pick(OPENERS), subj, verb, obj]
    if rng.random() < 0.7:
        parts.append(pick(PLACES))
    text = " ".join(p for p in parts if p)
    if rng.random() < 0.5:
        text += ", " + pick(CLAUSES)
    return text[0].upper() + text[1:] + "."


def held_out_sentence(text: str, fraction: float = 0.1) -> bool:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def sentences(rng: np.random.Generator, count: int, split: str = "train") -> list[str]:
    """`count` sentences of one split ("train" or "eval")."""
    out: list[str] = []
    while len(out) < count:
        s = sentence(rng)
        if held_out_sentence(s) == (split == "eval"):
            out.append(s)
    return out
