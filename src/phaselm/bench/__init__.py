"""Speed profiles measured in one run on one device.

- :mod:`.recipes`: language-model recipes (K-SSM, fusion hybrids, …) against a baseline —
  training and inference tokens/s, step-time ratios, decode cost as the context grows
  (``phaselm bench RECIPES``).
- :mod:`.backbone`: a Phase Core grafted onto a Hugging Face backbone — prefill, core training,
  graft overhead, decode against its bandwidth floor, peak memory, which scan path ran
  (``phaselm bench --backbone NAME``).
- :mod:`.timing`: the timing helpers and the device's measured ceilings both use.
"""

from .backbone import BackboneBenchConfig, backbone_table, bench_backbone
from .recipes import BenchConfig, bench, bench_recipe, table

__all__ = ["BackboneBenchConfig", "BenchConfig", "backbone_table", "bench", "bench_backbone", "bench_recipe", "table"]
