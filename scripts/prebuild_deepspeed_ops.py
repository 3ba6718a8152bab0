"""Build DeepSpeed's JIT C++ ops once, at set-up, so no test or job pays for the build.

The ops land in TORCH_EXTENSIONS_DIR (scripts/setup.sh points it at .cache/torch_extensions);
later loads of the same op find the built library there and only import it.
"""

from __future__ import annotations

import os
import time


def main() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.ops.op_builder import CPUAdamBuilder, FusedAdamBuilder  # noqa: PLC0415
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder  # noqa: PLC0415

    for builder in (ShareMemCommBuilder(), FusedAdamBuilder(), CPUAdamBuilder()):
        start = time.perf_counter()
        builder.load(verbose=False)
        print(f"  {builder.name}: ready in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
