"""Known start-up noise of libraries we load, kept off the user's terminal.

transformers imports torchao whenever it is installed (for its quantizers), and torchao 0.18 then
logs two deprecation warnings through torch's pytree logger on every start: nothing a user of this
pack can act on, and they would bury the one-line errors of the CLI. Only those records are dropped.
"""
from __future__ import annotations

import logging

#: (logger, text that marks the records to drop)
KNOWN_NOISE = (("torch.utils._pytree", "register_constant() on Enum subclasses is deprecated"),)


class _DropMatching(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_known_noise() -> None:
    """Install the filters (idempotent); must run before transformers is first imported."""
    for name, text in KNOWN_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.text == text for f in logger.filters):
            logger.addFilter(_DropMatching(text))
