"""Typed configuration. Every default of titk lives in this package, once:
`training` (a TI run, and the toy world's pretraining), `evaluation` (suites, scorers, `titk eval`), `sweeps`.

Configs are read in one way (titk/settings_files.py): a YAML file, then overrides deep-merged into it,
then validated by pydantic. A sweep's `base:` file is read first, and its `base_overrides` and every `--set`
are merged into it, so a setting given on the command line works whether the base is inline or a file.
"""


from ..settings_files import (  # noqa: F401  (the config API)
    apply_overrides,
    load_config,
    merge,
    parse,
    parse_override,
    read_yaml,
    validation_message,
)
from .evaluation import (  # noqa: F401
    NOT_A_PHOTO,
    PHOTO,
    SCORERS,
    SUITE_KINDS,
    ClipSettings,
    DatasetCheckSettings,
    EvalConfig,
    EvalSettings,
    IdentitySettings,
    PromptSuite,
    SuitePrompt,
)
from .sweeps import (  # noqa: F401
    ComposeSpec,
    ConfirmSettings,
    HoldoutSpec,
    IntermediateSettings,
    ObjectiveSettings,
    ParamSpec,
    SubsetSpec,
    SweepConfig,
    load_sweep_config,
)
from .training import (  # noqa: F401
    ADAM_BETAS,
    ADAM_EPS,
    COMMA_BACKTRACK,
    CONTEXT_TOKENS,
    FLUX_SCHNELL_T5_TOKENS,
    FLUX_T5_TOKENS,
    SD3_T5_TOKENS,
    DEFAULT_VECTORS,
    RESOLUTION,
    SEMANTICS_DEFAULTS,
    DataConfig,
    EmbeddingConfig,
    ModelConfig,
    OutputConfig,
    PretrainSettings,
    PreviewConfig,
    SamplingSettings,
    Strict,
    TrainConfig,
    TrainSettings,
    load_train_config,
)
