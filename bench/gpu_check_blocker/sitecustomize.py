"""Makes deepspeed, webdataset and streaming unimportable, as on the GPU image that lacks them.

bench/gpu_check.sh puts this folder first on PYTHONPATH, so the check (and the trainer it
starts) fails if anything on its path imports one of them.
"""

import importlib.abc
import sys

BLOCKED = ("deepspeed", "webdataset", "streaming")


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked by bench/gpu_check_blocker "
                              "(not on the GPU image)")
        return None


sys.meta_path.insert(0, _Block())
