"""What the training pipeline builds, and with which settings: the detectors, their targets and
descriptions, the version it releases them under, paths, and the training knobs with the record of
what each was measured against. Raise VERSION here to release retrained files under a new name."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE / "minilm"
CACHE = HERE.parent / ".cache" / "features"
FINETUNED = HERE.parent / ".cache" / "finetuned"  # the tuned encoder (or factors): later steps rerun alone
DETECTORS = ("injury", "deception", "sycophancy")
TARGET_FNR = {"injury": 0.02, "deception": 0.10, "sycophancy": 0.10}
DESCRIPTIONS = {
    "injury": "Flags text that describes a person being physically injured (fiction, news, first person, medical, "
              "sports; explicit or implied), not violent words used figuratively.",
    "deception": "Flags answers that are false or misleading for the question asked (imitative falsehoods, "
                 "hallucinated facts).",
    "sycophancy": "Flags replies that side with the opinion the user stated rather than answering on the merits; "
                  "needs the prompt.",
}
MAX_LENGTH = 256
# Responses longer than MAX_LENGTH are also scored in windows, the highest counting (workers/windows.py):
# truncated, an injury in a long reply's last paragraphs went unread.
LONG_TEXT = "windows"
FINGERPRINTS = SHARED / "fingerprints.json"
# 1.1: injury data v2 (hand-written, split by template), one epoch; 1.2: routine-medical negatives;
# 1.2.1: 1.2.0's graph and thresholds, with long responses scored in windows (LONG_TEXT)
VERSION = "1.2.1"
# Trained 2026-12-01 and not shipped: LoRA, one epoch, on the v1.3 injury data candidate (43030cf,
# hard negatives from the worlds of set 4's flags: butchers, staged blood, sport, body idioms).
# Criteria written before training: every head above TF-IDF, realistic injury texts at least as good,
# sets 1-3 no worse, deception >= 0.80, sycophancy >= 0.763, then set 5 against v1.2.0. It failed
# before set 5 (which stays unscored): injury AUC 0.9903 against TF-IDF 0.9907, sycophancy 0.721,
# held-out sets 1-4 flagged 7 / 16 / 16 / 18 of 60 (v1.2.0: 0 / 3 / 0 / 5). The realistic texts
# improved (AUC 0.977, 1 of 89 missed) but the 2% FNR target pulled the threshold to 0.004: injured
# counterparts in the new negatives' worlds scored near 0 ("The butcher slipped with the cleaver and
# sliced deep into his palm" 0.0016, "PSA: wear proper boots. I broke my arm and it was not fun"
# 0.0014, the tractor that pinned a farmer 0.006). The next injury data needs as many injured texts
# per such world as unhurt ones, in held-out frames too, before another run.
C_REG = 0.02  # strong L2: the best validation AUC for sycophancy, equal for the others
# The injury head also sees other detectors' training texts (QA answers, opinions, factual statements)
# as negatives: without them a shared, fine-tuned encoder let it flag "The Great Wall is visible from
# the Moon" at 1.0, a kind of text its own negatives never covered.
CROSS_TASK_NEGATIVES = {"injury": 300}  # chosen on the natural validation rows and held-out negatives
# Deception has 5x injury's and 10x sycophancy's rows. With small tasks repeated to a quarter of it,
# injury's validation-only sentence frames (e.g. sports reports) scored near 0: too few injury steps
# to move the encoder. Half is the setting of the shipped run (one try, not tuned).
SMALL_TASK_SHARE = 0.5
# Quant-aware fine-tuning (models.quant_aware): the last QUANT_AWARE_SHARE of the steps add
# CONSISTENCY_WEIGHT x quant_aware.Consistency, ramped in over QUANT_AWARE_RAMP of them. Applied from
# the first step (score-space, weight 1000) the model collapsed to a constant (pilot, 2026-12-01).
# Training rounds to 63 levels (7 bits) where the variant uses 127: a model that scores the same under
# twice the rounding error has a margin at the real one. Measured 2026-12-01 (one epoch): with a
# score-space term (weight 1000) int8 was 0.157 / 0.035 / 0.001 from torch on every validation row,
# but the weakest head had gone nearly flat and injury's held-out texts near its boundary moved most;
# hence the relative logit-space term (quant_aware.Consistency).
# Also tried on 2026-12-01 (LoRA, v1.3 injury data, one epoch), not kept: rounding with fresh random
# dither at every step, so the model cannot cancel one fixed rounding pattern on its training texts,
# under the score-space term at weight 1000: the term outweighed the task loss about 3 to 1 at the
# end of the ramp and every head went flat (AUC 0.966 / 0.618 / 0.504, all below TF-IDF; int8
# trivially within 0.0002).
# Also tried on 2026-12-01, not kept: self-distillation from v1.2.0's fp32 graph (its injury and
# sycophancy training rows plus 6k of deception's, 11.5k in all, batch 16). The float path was pulled
# to the teacher's scores and the int8 path (torch arithmetic matched to the variant's: shared power-of-two
# smoothing, per-token x, per-column w) to the float path, so no head could go flat, and AUC held
# (0.997-0.9995 / 0.854-0.862 / 0.757-0.765 on 1,602 validation rows, from 0.9995 / 0.854 / 0.763).
# But int8's largest validation score difference (0.02 / 0.19 / 0.18 at the start) did not fall; it
# wandered: after 300 / 600 / 900 steps injury 0.26 / 0.07 / 0.12, deception 0.21 / 0.13 / 0.19,
# sycophancy 0.28 / 0.11 / 0.24; with dither, lr 1e-5 and frozen heads, after 600 steps 0.44 / 0.19 /
# 0.16. Deception's share of rows moved by more than 0.02 only went from 18% to 12-14%: the training
# texts' rounding errors shrink, other texts' do not.
# The three label-loss runs above trained on FakeInt8's old smoothing (a factor per Linear from
# running ranges), as far from the int8 graph as the float model is. Rerun on 2026-12-01 with it
# matched to the variant and the code's defaults (LoRA, one epoch, 2,224 steps, 64 minutes): int8
# 0.046 / 0.006 / 0.0001 from torch, but AUC 0.984 / 0.717 / 0.572, each below TF-IDF (0.990 /
# 0.742 / 0.599). As before, the consistency term is met by flattening heads, whatever the arithmetic.
QUANT_AWARE_SHARE = 0.5
QUANT_AWARE_RAMP = 0.25
CONSISTENCY_WEIGHT = 100.0
QUANT_AWARE_LEVELS = 63
# Quant-aware: the pooled means are divided by max(|mean|, FEATURE_NORM_FLOOR), not by |mean|: plain L2
# normalization multiplied the int8 error of texts whose mean is short (|mean| 1.2 against a median
# of 5.5 in v1.2.0), and those were the texts int8 moved most.
FEATURE_NORM_FLOOR = 2.0
