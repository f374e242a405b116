"""The sentence grammar: thousands of distinct sentences, deterministic, with pauses, varied lengths and a
held-out split by sentence."""
import numpy as np
import pytest

from engine.data.sentences import EVAL_FRACTION, held_out_sentence, sentence, sentences
from engine.errors import ConfigError


def test_thousands_of_distinct_sentences_deterministic_from_the_seed():
    assert sentence(np.random.default_rng(0)) == sentence(np.random.default_rng(0))
    rng = np.random.default_rng(1)
    many = [sentence(rng) for _ in range(5000)]
    assert len(set(many)) > 4500
    assert sentences(np.random.default_rng(7), 50) == sentences(np.random.default_rng(7), 50)


def test_pauses_and_lengths_vary():
    items = sentences(np.random.default_rng(3), 2000)
    words = np.array([len(s.split()) for s in items])
    assert words.min() <= 3 and words.max() >= 20 and words.std() > 3
    assert 0.3 < np.mean([", " in s for s in items]) < 0.9  # commas: short pauses
    assert np.mean([sum(s.count(c) for c in ".?!") > 1 for s in items]) > 0.05  # sentence breaks inside
    assert {s[-1] for s in items} == {".", "?", "!"} and all(s[0].isupper() for s in items)


def test_held_out_split_is_disjoint_and_a_tenth():
    rng = np.random.default_rng(4)
    train, held = sentences(rng, 2000, "train"), sentences(rng, 200, "eval")
    assert not set(train) & set(held)
    assert all(held_out_sentence(s) for s in held) and not any(held_out_sentence(s) for s in train)
    share = np.mean([held_out_sentence(sentence(rng)) for _ in range(5000)])
    assert abs(share - EVAL_FRACTION) < 0.02
    with pytest.raises(ConfigError, match="split"):
        sentences(rng, 1, "test")
