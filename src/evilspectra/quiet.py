"""Keep the tool's own output readable: silence Hugging Face's per-file progress bars and chatter.

Kept apart from `models` so that the CLI can call it without importing torch (fast `--help`).
"""

from __future__ import annotations

import warnings


def quiet_hf() -> None:
    """Silence HF's per-file progress bars, info logs and deprecation warnings."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
