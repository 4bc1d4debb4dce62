"""Learning from a study: its trials as pandas, what matters, which images help, personality, seeds.

    from titk.analysis import load_study, param_importance, image_attribution
    data = load_study("work/demo")
    data.trials                       # one row per trial
    param_importance(data.study)      # which settings matter
    image_attribution(data.finished, "value")
"""

from .effects import (
    dose_response,
    image_attribution,
    label_shares,
    param_importance,
    pareto_front,
    personality_divergence,
    personality_summary,
    personality_table,
    seed_variance,
)
from .study import StudyData, load_study, trials_frame

__all__ = [
    "StudyData", "dose_response", "image_attribution", "label_shares", "load_study", "param_importance", "pareto_front",
    "personality_divergence", "personality_summary", "personality_table", "seed_variance", "trials_frame",
]
