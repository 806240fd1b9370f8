"""Image decoders: token grid → RGB ``(batch, 3, H, W)`` in [0, 1]."""
