"""pgolf: train, compress, score and submit parameter-golf language models."""

__version__ = "0.1.0"
