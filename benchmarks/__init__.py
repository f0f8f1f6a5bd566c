"""Side-by-side performance measurements (see benchmarks/README.md).

`python -m benchmarks.run [names...] [--quick] [--out DIR]` runs them; a benchmark is a function
`bench(ctx: Context) -> list[Row]` registered in `benchmarks.registry`.
"""

from benchmarks.common import Context, Row
from benchmarks.registry import register

__all__ = ["Context", "Row", "register"]
