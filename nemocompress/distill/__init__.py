"""Knowledge distillation: losses (plain functions of tensors), an offline teacher cache and the trainer.

from nemocompress.distill import DistillConfig, distill, cache_teacher
result = distill(DistillConfig(teacher="parent", student="pruned", data="text/", output_dir="out", steps=200))
"""

from .config import DistillConfig, DistillError
from .teacher_cache import TeacherCache, TeacherCacheResult, cache_teacher
from .trainer import DistillResult, distill, latest_checkpoint, lr_at

__all__ = [
    "DistillConfig",
    "DistillError",
    "DistillResult",
    "TeacherCache",
    "TeacherCacheResult",
    "cache_teacher",
    "distill",
    "latest_checkpoint",
    "lr_at",
]
