"""Model families: each module turns one family's checkpoints into an `ImageModelAdapter`."""
