"""nemocompress: compress Hugging Face language models with the Nemotron recipes."""

__version__ = "0.1.0"

import torch as _torch

if _torch.distributed.is_available():
    # Imported now, before any process group exists. Imported later (transformers' model code imports it
    # through FSDP), its functions' `group=group.WORLD` defaults keep the default group alive, so that
    # destroy_process_group() leaves its gloo threads running, and a process that exits while a peer is still
    # running may abort ("terminate called without an active exception").
    import torch.distributed.nn  # noqa: F401
