"""Side-by-side generation speed (lmzoo vs transformers vs litgpt); see lmzoo/bench.py.

    python benchmarks/decode.py --shape llama-d768
    LITGPT_PYTHON=.venv-litgpt/bin/python python benchmarks/decode.py --shape llama-d768
"""
import sys

from lmzoo.tools.bench import main

sys.exit(main())
