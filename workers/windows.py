"""Texts longer than a model reads: with `"long_text": "windows"` a response past the model's
`max_length` is also scored in overlapping windows of up to `window_tokens` of its tokens (96 unless
model.json says otherwise), each beside the prompt, and its score is its highest window's.
Truncation alone would leave everything past the cut unread: an injury told in a long reply's fifth
paragraph would score as the first four.

The first window is the text as truncation scores it, so a text that fits scores exactly as before,
and a long text never scores lower than it would truncated. Windows are cut at word starts from the
tokenizer's own offsets and overlap by a third, so a sentence of up to 32 tokens (at 96) at a cut is
whole in one of them. Their number is bounded by the API's REDLINE_MAX_TEXT_CHARS (20,000 characters:
about 70 at 96). What the first row covers is read only there, as a text that fits is: one injured
sentence among ~200 tokens of harmless ones can be missed (dilution; the injury card's known failure
modes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

# Why the default window (service.detector_config.WINDOW_TOKENS) is 96 tokens. Narrow on purpose: the
# shipped injury head, trained on short texts, misses one injured sentence among ~200 tokens of
# harmless ones (dilution). In a run like `bench.long_text`'s (2026-12-03: 40 injured and 40 unhurt
# replies after ~400 tokens of harmless text), windows as wide as the model missed 15 injuries, 96
# tokens 6 and 64 tokens 5, flagging 10, 12 and 13 unhurt replies. Windows over the whole response, not
# only past truncation's cut, were tried too: in bench.long_text 1 miss (64 tokens) but 24 of the 40
# unhurt replies flagged, each window another chance of a false flag; past the cut only, 3 and 13.

# Tokens left unused in each window: re-tokenizing a cut piece of text can give a token or two more
# than its slice of the whole (a BPE word that loses its leading space), and the window must still fit.
_SLACK = 4


class Windows:
    """Cuts the responses that truncation would shorten into extra windows for one tokenizer."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, pair_input: bool, width: int) -> None:
        self.whole = Tokenizer.from_str(tokenizer.to_str())  # the same tokenizer, truncating nothing
        self.whole.no_truncation()
        self.whole.no_padding()
        self.max_length = max_length
        self.pair_input = pair_input
        self.specials = tokenizer.num_special_tokens_to_add(pair_input)
        self.width = width

    def extra(self, items: Sequence[tuple[str, str]],
              encodings: Sequence[Encoding]) -> tuple[list[tuple[str, str]], list[int], list[tuple[int, int]]]:
        """The windows beyond the first of every truncated item, the index of the item each is from, and
        where in that item's response each window lies (character offsets, end excluded)."""
        cut = [i for i, e in enumerate(encodings) if e.overflowing]
        if not cut:
            return [], [], []
        responses = self.whole.encode_batch([items[i][1] for i in cut], add_special_tokens=False)
        prompts = (self.whole.encode_batch([items[i][0] for i in cut], add_special_tokens=False)
                   if self.pair_input else [None] * len(cut))
        windows: list[tuple[str, str]] = []
        owners: list[int] = []
        where: list[tuple[int, int]] = []
        budget = self.max_length - self.specials - _SLACK
        for i, response, prompt in zip(cut, responses, prompts, strict=True):
            prompt_text = items[i][0] if self.pair_input else ""
            kept = _response_tokens(encodings[i], bool(prompt_text))
            # A long prompt is shortened by longest-first truncation to meet the window halfway, so a
            # window never needs to be narrower than half the budget.
            prompt_len = len(prompt.ids) if prompt is not None else 0  # an empty prompt encodes to none
            width = min(self.width, max(budget - prompt_len, budget // 2))
            for start, stop in spans(response, kept, width):
                windows.append((prompt_text, items[i][1][start:stop]))
                owners.append(i)
                where.append((start, stop))
        return windows, owners, where


def spans(response: Encoding, kept: int, width: int) -> list[tuple[int, int]]:
    """Character spans of windows of at most `width` tokens covering the response's tokens from just
    before `kept` (the first window, truncation's, covers those before) to its end, a third of a
    window overlapping the one before, each beginning and ending at the start of a word."""
    n = len(response.ids)
    words = response.word_ids
    offsets = response.offsets
    overlap = max(1, width // 3)

    def word_start(t: int) -> int:
        while t > 0 and words[t] is not None and words[t - 1] == words[t]:
            t -= 1
        return t

    out: list[tuple[int, int]] = []
    if kept >= n:  # truncation shortened the prompt only
        return out
    start = word_start(max(0, kept - overlap))
    while start < n:
        stop = min(n, start + width)
        if stop < n and word_start(stop) > start:
            stop = word_start(stop)
        out.append((offsets[start][0], offsets[stop - 1][1]))
        if stop >= n:
            break
        start = max(word_start(stop - overlap), start + 1)
    return out


def _response_tokens(encoding: Encoding, has_prompt: bool) -> int:
    """How many of the response's tokens a truncated encoding kept (the response is the pair's second
    sequence, or the only one)."""
    sequence = 1 if has_prompt else 0
    return sum(1 for s, special in zip(encoding.sequence_ids, encoding.special_tokens_mask, strict=True)
               if s == sequence and not special)


def highest(scores: np.ndarray, owners: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's highest score over its rows (its own row first, then its windows'), and the row it
    came from: its own on a tie, so a window is named only where it scored higher."""
    best = np.arange(n)
    for row in range(n, len(owners)):
        if scores[row] > scores[best[owners[row]]]:
            best[owners[row]] = row
    return scores[best], best
