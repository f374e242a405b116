"""English sentences from a small grammar, deterministic from a random generator, for SynthTalk's speech.

Eight templates (statements, questions, requests, lists, exclamations, replies, reported speech, two-sentence
items) over a few hundred words give millions of distinct items of 1 to about 30 words, with the pauses a
reader makes: commas, clause breaks, and sentence breaks inside one item.
The held-out split is by sentence: a hash of the text puts a fixed tenth of all sentences in "eval".
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from engine.errors import ConfigError

SPLITS = ("train", "eval")
EVAL_FRACTION = 0.1

# ----------------------------------------------------------------------------- words

NAMES = ["Maria", "Peter", "Bob", "Emma", "Tom", "Lucy", "Sam", "Mia", "Oliver", "Paula", "Ben", "Hannah",
         "Victor", "Zoe", "Frank", "Olivia", "Martin", "Judy", "Ahmed", "Wendy", "George", "Sophie", "Omar",
         "Ruth"]
PEOPLE = ["the old captain", "my younger sister", "a quiet neighbour", "the engineer", "our teacher",
          "the baker", "a tired student", "the mayor", "his best friend", "the small dog", "every visitor",
          "the pilot", "a famous singer", "the gardener", "her cousin", "the doctor", "nobody in town",
          "the little boy", "my grandmother", "the new manager", "a curious fox", "the shop owner",
          "the whole team", "you", "we", "the children", "my father", "a young nurse", "the farmer",
          "our guide"]
VERBS = [("find", "found"), ("paint", "painted"), ("open", "opened"), ("carry", "carried"),
         ("forget", "forgot"), ("measure", "measured"), ("borrow", "borrowed"), ("clean", "cleaned"),
         ("fix", "fixed"), ("order", "ordered"), ("watch", "watched"), ("pack", "packed"),
         ("bring", "brought"), ("move", "moved"), ("describe", "described"), ("choose", "chose"),
         ("build", "built"), ("wrap", "wrapped"), ("sell", "sold"), ("push", "pushed"), ("close", "closed"),
         ("keep", "kept"), ("lose", "lost"), ("buy", "bought"), ("hide", "hid"), ("share", "shared"),
         ("check", "checked"), ("drop", "dropped"), ("mend", "mended"), ("return", "returned"),
         ("photograph", "photographed"), ("wash", "washed")]  # (base, past)
ADJECTIVES = ["blue", "heavy", "broken", "long", "wooden", "bright", "tiny", "warm", "purple", "silver",
              "old", "fresh", "shiny", "strange", "beautiful", "empty", "yellow", "soft", "noisy", "enormous",
              "cheap", "muddy", "perfect", "round"]
NOUNS = [("umbrella", "umbrellas"), ("box", "boxes"), ("window", "windows"), ("letter", "letters"),
         ("map", "maps"), ("book", "books"), ("chair", "chairs"), ("door", "doors"), ("cup", "cups"),
         ("lamp", "lamps"), ("boat", "boats"), ("key", "keys"), ("blanket", "blankets"), ("scarf", "scarves"),
         ("gate", "gates"), ("shell", "shells"), ("apple", "apples"), ("bicycle", "bicycles"),
         ("basket", "baskets"), ("mirror", "mirrors"), ("piano", "pianos"), ("jacket", "jackets"),
         ("bottle", "bottles"), ("picture", "pictures"), ("pumpkin", "pumpkins"), ("rope", "ropes"),
         ("wheel", "wheels"), ("feather", "feathers")]  # (singular, plural)
OWNERS = ["the", "the", "my", "her", "his", "our", "their", "your", "that"]
NUMBERS = ["two", "three", "four", "seven", "ten", "twelve", "a hundred", "some", "many", "a few"]
PLACES = ["near the river", "at the station", "by the window", "behind the house", "under the bridge",
          "in the park", "at the market", "on the way home", "in the kitchen", "on the beach",
          "at the museum", "in the garden", "upstairs", "at the bus stop", "in the old library",
          "by the fountain"]
TIMES = ["after lunch", "in the morning", "before the storm", "during the party", "on Monday", "at midnight",
         "before dinner", "this evening", "last summer", "every Sunday", "yesterday", "at noon", "in May",
         "two weeks ago"]
CLAUSES = ["and then everyone laughed", "but nobody noticed", "so we waited outside",
           "because it was raining", "while the kettle boiled", "although it was late",
           "and the room went quiet", "so the plan worked", "but the road was closed", "and I was very happy",
           "which surprised me", "until the lights went out", "as far as I remember",
           "just as the music stopped", "before anyone could move", "and nobody minded"]
OPENERS = ["Well", "Honestly", "Yesterday", "Believe me", "Look", "Of course", "Suddenly", "Luckily",
           "Anyway", "By the way", "In the end", "Strangely enough", "Oh", "To be fair"]
REPLIES = ["Yes", "No", "Maybe", "Sure", "Thank you", "Not really", "Of course", "Absolutely", "I think so",
           "Oh dear", "Wow", "Okay"]
REACTIONS = ["That was strange.", "Nobody knew why.", "It was wonderful.", "I could not believe it.",
             "What a day!", "Then we went home.", "It took all afternoon.", "Everyone was amazed.",
             "Please do not tell anyone.", "That is the whole story."]


def _pick(rng: np.random.Generator, words: list[str]) -> str:
    return words[int(rng.integers(len(words)))]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def _inner(text: str) -> str:
    """A sentence continued inside another: first letter in lower case unless it starts a name."""
    return text if text.split()[0].strip(",") in NAMES + ["I"] else text[0].lower() + text[1:]


def _thing(rng: np.random.Generator) -> str:
    """A noun phrase: "the broken window", "an umbrella", "seven muddy boxes", "her key"."""
    singular, plural = NOUNS[int(rng.integers(len(NOUNS)))]
    adjective = _pick(rng, ADJECTIVES) + " " if rng.random() < 0.6 else ""
    r = rng.random()
    if r < 0.3:
        return _a(adjective + singular)
    if r < 0.75:
        return f"{_pick(rng, OWNERS)} {adjective}{singular}"
    return f"{_pick(rng, NUMBERS)} {adjective}{plural}"


def _someone(rng: np.random.Generator) -> str:
    return _pick(rng, NAMES) if rng.random() < 0.35 else _pick(rng, PEOPLE)


def _where_when(rng: np.random.Generator) -> str:
    parts = [_pick(rng, PLACES)] if rng.random() < 0.55 else []
    parts += [_pick(rng, TIMES)] if rng.random() < 0.45 else []
    return "".join(" " + p for p in parts)


def _verb(rng: np.random.Generator) -> tuple[str, str]:
    return VERBS[int(rng.integers(len(VERBS)))]


# ----------------------------------------------------------------------------- templates


def _statement(rng: np.random.Generator, opener_share: float = 0.3) -> str:
    opener = _pick(rng, OPENERS) + ", " if rng.random() < opener_share else ""
    text = f"{opener}{_someone(rng)} {_verb(rng)[1]} {_thing(rng)}{_where_when(rng)}"
    if rng.random() < 0.4:
        text += ", " + _pick(rng, CLAUSES)
    return _capital(text) + "."


def _question(rng: np.random.Generator) -> str:
    aux = _pick(rng, ["Did", "Will", "Could", "Should", "Why did", "Where did", "When will", "How did"])
    return f"{aux} {_someone(rng)} {_verb(rng)[0]} {_thing(rng)}{_where_when(rng)}?"


def _request(rng: np.random.Generator) -> str:
    how = _pick(rng, ["Please", "Now", "Quickly", "Carefully"])
    text = f"{how} {_verb(rng)[0]} {_thing(rng)}{_where_when(rng)}"
    if rng.random() < 0.5:
        text += f", and then {_verb(rng)[0]} {_thing(rng)}"
    return text + _pick(rng, [".", ".", "!"])


def _list(rng: np.random.Generator) -> str:
    past = _verb(rng)[1]
    things = [_thing(rng) for _ in range(int(rng.integers(3, 5)))]
    return _capital(f"{_someone(rng)} {past} {', '.join(things[:-1])}, and {things[-1]}.")


def _exclamation(rng: np.random.Generator) -> str:
    singular = NOUNS[int(rng.integers(len(NOUNS)))][0]
    if rng.random() < 0.5:
        return f"What {_a(_pick(rng, ADJECTIVES) + ' ' + singular)}!"
    return f"Oh no, the {singular} is {_pick(rng, ADJECTIVES)}!"


def _reply(rng: np.random.Generator) -> str:
    reply = _pick(rng, REPLIES)
    if rng.random() < 0.4:
        return reply + "."
    return f"{reply}, {_inner(_statement(rng, 0.0))}" if rng.random() < 0.5 else f"{reply}. {_statement(rng)}"


def _reported(rng: np.random.Generator) -> str:
    said = _pick(rng, ["said", "told me", "thinks", "promised", "wrote"])
    return _capital(f"{_someone(rng)} {said} that {_inner(_statement(rng, 0.0))}")


def _two(rng: np.random.Generator) -> str:
    return f"{_statement(rng)} {_pick(rng, REACTIONS)}"


TEMPLATES: tuple[tuple[Callable[[np.random.Generator], str], float], ...] = (
    (_statement, 0.34), (_question, 0.16), (_request, 0.1), (_list, 0.07), (_exclamation, 0.05),
    (_reply, 0.1), (_reported, 0.08), (_two, 0.1))


def sentence(rng: np.random.Generator) -> str:
    """One item to speak (usually one sentence, sometimes two), drawn from the templates."""
    weights = np.array([w for _, w in TEMPLATES])
    return TEMPLATES[int(rng.choice(len(TEMPLATES), p=weights / weights.sum()))][0](rng)


# ----------------------------------------------------------------------------- splits


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")


def held_out_sentence(text: str, fraction: float = EVAL_FRACTION) -> bool:
    """Whether a sentence belongs to the held-out ("eval") split: a fixed function of its text."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def sentences(rng: np.random.Generator, count: int, split: str = "train") -> list[str]:
    """`count` sentences of `split` ("train" or "eval") drawn from `rng`, so deterministic from its seed."""
    check_split(split)
    out: list[str] = []
    while len(out) < count:
        s = sentence(rng)
        if held_out_sentence(s) == (split == "eval"):
            out.append(s)
    return out
