"""What a benchmark ran on, in words, for its result file."""

import os
import re


def description() -> str:
  """CPU model, core count and bfloat16 units, from /proc/cpuinfo."""
  with open('/proc/cpuinfo') as f:
    cpuinfo = f.read()
  model = re.search(r'model name\s*:\s*(.*)', cpuinfo)
  bf16 = ('AMX' if 'amx_bf16' in cpuinfo else
          'AVX512_BF16' if 'avx512_bf16' in cpuinfo else 'no bfloat16 units')
  return (f'{model.group(1).strip() if model else "unknown CPU"}, '
          f'{os.cpu_count()} cores, {bf16}')
