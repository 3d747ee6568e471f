"""Developer tooling helpers for fswap (never on the runtime path).

Pure Python + numpy: CI installs only ``numpy``. Modules:

- ``errors``: the exceptions the CLI tools turn into one-line messages and exit codes;
- ``safepickle``: a restricted unpickler that only rebuilds tensors, arrays and containers;
- ``checkpoint``: readers for PyTorch (zip and legacy) and Paddle (``.pdparams``) checkpoints;
- ``safetensors_io``: a safetensors writer (atomic) and reader.
"""

EXPORTER_VERSION = "fswap-export 1.0"
