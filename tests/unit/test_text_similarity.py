"""text_similarity's metrics, scored by the real libraries: the values a user of the grader would see."""

from __future__ import annotations

import math
from collections.abc import Iterator
from unittest import mock

import pytest

from ftserve.graders import run_grader, wordnet
from ftserve.graders.text_similarity import ROUGE, similarity

METRICS = ["fuzzy_match", "bleu", "gleu", "meteor", *ROUGE]
REFERENCE = "the cat sat on the mat"


@pytest.mark.parametrize("metric", METRICS)
def test_identical_texts_score_one_and_unrelated_ones_nothing(metric: str) -> None:
    assert similarity(metric, REFERENCE, REFERENCE) == pytest.approx(1.0, abs=0.003)  # type: ignore[arg-type]
    unrelated = similarity(metric, "dogs bark loudly", REFERENCE)  # type: ignore[arg-type]
    assert unrelated < 0.25 if metric == "fuzzy_match" else unrelated == 0.0


@pytest.mark.parametrize(("metric", "score"), [
    ("rouge_1", 5 / 6),  # 5 of 6 words shared
    ("rouge_2", 3 / 5),  # "the cat", "on the", "the mat" of 5 bigrams each
    ("rouge_3", 1 / 4),  # "on the mat"
    ("rouge_l", 5 / 6),  # longest common subsequence "the cat on the mat"
    ("bleu", 0.3799),  # sacrebleu's sentence BLEU, smoothed
    ("gleu", 0.5),
    ("fuzzy_match", 0.9302),
])
def test_a_near_miss_scores_what_the_metric_says(metric: str, score: float) -> None:
    assert similarity(metric, "the cat is on the mat", REFERENCE) == pytest.approx(score, abs=1e-4)  # type: ignore[arg-type]


def test_meteor_matches_synonyms_from_wordnet_and_scores_as_nltk_documents() -> None:
    hypothesis = "It is a guide to action which ensures that the military always obeys the commands of the party"
    reference = "It is a guide to action that ensures that the military will forever heed Party commands"
    assert similarity("meteor", hypothesis, reference) == pytest.approx(0.6944, abs=1e-4)  # nltk's own example
    assert similarity("meteor", "we start now", "we begin now") > 0.95  # start ~ begin, in WordNet


@pytest.fixture
def without_wordnet() -> Iterator[None]:
    wordnet.wordnet.cache_clear()
    with mock.patch.object(wordnet, "_bundled", return_value=None):
        yield
    wordnet.wordnet.cache_clear()


def test_without_wordnet_meteor_matches_exact_words_and_stems_only(without_wordnet: None) -> None:
    assert similarity("meteor", "we start now", "we begin now") == pytest.approx(1 / 3)
    assert similarity("meteor", "the cats sat", "the cat sat") > 0.95  # cats ~ cat, by stem


def _grader(metric: str) -> dict[str, str]:
    return {"type": "text_similarity", "name": "similar", "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}", "evaluation_metric": metric}


def test_cosine_compares_the_operators_embeddings() -> None:
    vectors = {"north": [0.0, 1.0], "up": [0.0, 2.0], "east": [1.0, 0.0], "north-east": [1.0, 1.0]}

    def embed(texts: list[str]) -> list[list[float]]:
        return [vectors[text] for text in texts]

    def cosine(sample: str, answer: str) -> float:
        return run_grader(_grader("cosine"), sample, {"answer": answer}, embed=embed).reward

    assert cosine("north", "up") == pytest.approx(1.0)
    assert cosine("north", "east") == pytest.approx(0.0)
    assert cosine("north", "north-east") == pytest.approx(math.sqrt(0.5))


def test_cosine_without_embeddings_or_with_failing_ones_is_an_other_error() -> None:
    def broken(texts: list[str]) -> list[list[float]]:
        raise RuntimeError("model not loaded")

    for embed in (None, broken):
        outcome = run_grader(_grader("cosine"), "north", {"answer": "up"}, embed=embed)
        assert outcome.reward == 0.0 and outcome.errors.other_error


def test_a_template_naming_a_missing_item_field_is_an_invalid_variable() -> None:
    outcome = run_grader(_grader("bleu"), REFERENCE, {"other": REFERENCE})
    assert outcome.reward == 0.0 and outcome.errors.invalid_variable_error
    assert run_grader(_grader("bleu"), REFERENCE, {"answer": REFERENCE}).reward == pytest.approx(1.0)
