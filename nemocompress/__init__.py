"""nemocompress: compress Hugging Face language models with the Nemotron recipes."""

__version__ = "0.1.0"
