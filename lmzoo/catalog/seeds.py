"""What the five seed articles (/work/shared/seeds, Chinese) name and claim, kept apart from the
catalog's primary-source facts so the two can be compared.

SEED_MODELS    every model a seed names -> its catalog row (None with the reason when not catalogued)
HARDWARE_000   seed 000's hardware table for 7B / 13B / 32B / 70B / 304B models
CLAIMS_001     seed 001's ChatGLM-6B VRAM table (inference / parameter-efficient fine-tuning)
CLAIMS_002     seed 002's "minimum configuration" per model
"""

from __future__ import annotations

# seed -> names as the seed writes them -> catalog name (or None, reason)
SEED_MODELS: dict[str, str | tuple[None, str]] = {
    # seed 000 (LLaMA / ChatGLM / Baichuan / Qwen / Yi / DeepSeek survey)
    "LLaMA-7B": "LLaMA-7B", "LLaMA-13B": "LLaMA-13B", "LLaMA-33B": "LLaMA-33B", "LLaMA-65B": "LLaMA-65B",
    "Llama 2 7B": "Llama-2-7B", "Llama 2 13B": "Llama-2-13B", "Llama 2 70B": "Llama-2-70B",
    "Llama 2 34B": (None, "trained and reported by Meta but never released"),
    "Llama 3 8B": "Llama-3-8B", "Llama 3 70B": "Llama-3-70B", "Llama 3 405B": "Llama-3.1-405B",
    "Llama 3.1 8B": "Llama-3.1-8B", "Llama 3.1 70B": "Llama-3.1-70B",
    "Llama 4 Scout": "Llama-4-Scout-17B-16E", "Llama 4 Maverick": "Llama-4-Maverick-17B-128E",
    "Alpaca": "Alpaca-7B", "Vicuna": "Vicuna-13B", "BELLE": "BELLE-7B-2M", "Chinese LLaMA": "Chinese-LLaMA-7B",
    "GLM-130B": "GLM-130B", "ChatGLM-6B": "ChatGLM-6B", "ChatGLM2-6B": "ChatGLM2-6B", "CodeGeeX2-6B": "CodeGeeX2-6B",
    "ChatGLM3-6B": "ChatGLM3-6B", "GLM-4": (None, "GLM-4 itself is API-only; its open model is GLM-4-9B"),
    "GLM-4-9B": "GLM-4-9B", "Baichuan-7B": "Baichuan-7B", "Baichuan-13B": "Baichuan-13B",
    "Qwen1.5": "Qwen1.5-7B", "Qwen2": "Qwen2-7B", "Qwen2.5": "Qwen2.5-7B", "Qwen2.5-1M": "Qwen2.5-7B-Instruct-1M",
    "Qwen2.5-VL": (None, "vision-language model; the catalog covers text decoders"),
    "Yi-34B": "Yi-34B", "Yi-6B": "Yi-1.5-6B", "Yi-9B": "Yi-1.5-9B", "Yi-1.5-34B": "Yi-1.5-34B",
    "Yi-Coder-1.5B": "Yi-Coder-1.5B", "Yi-Coder-9B": "Yi-Coder-9B",
    "DeepSeek-V3": "DeepSeek-V3", "DeepSeek-R1": "DeepSeek-R1",
    "DeepSeek-R1 distill 1.5B": "DeepSeek-R1-Distill-Qwen-1.5B", "DeepSeek-R1 distill 70B": "DeepSeek-R1-Distill-Llama-70B",
    "Grok-1": "Grok-1",
    "Ling-Coder-Lite": (None, "named only as an Apache-2.0 example; its bailing_moe architecture is not catalogued"),
    # seed 001 (ChatGLM-6B / LLaMA / BLOOM / Baichuan-7B)
    "Phoenix": (None, "named only in passing as a derivative (BLOOMZ-based); not catalogued"),
    "Chimera": (None, "named only in passing as a LLaMA derivative; not catalogued"),
    "BLOOM-560M": "BLOOM-560M", "BLOOM-1.1B": "BLOOM-1B1", "BLOOM-1.7B": "BLOOM-1B7", "BLOOM-3B": "BLOOM-3B",
    "BLOOM-7.1B": "BLOOM-7B1", "BLOOM-176B": "BLOOM-176B", "BLOOMZ": "BLOOMZ-176B", "BLOOMZ-7B1-mt": "BLOOMZ-7B1-mt",
    "Baichuan2-13B": "Baichuan2-13B", "Baichuan2-7B": "Baichuan2-7B",
    "XuanYuan (轩辕)": (None, "Du Xiaoman's finance model on BLOOM-176B; named only as an application"),
    # seed 002 (leaderboard of open LLMs)
    "LLaMA-30B": "LLaMA-33B", "Falcon-7B": "Falcon-7B", "Falcon-40B": "Falcon-40B", "Mistral-7B": "Mistral-7B",
    "GPT-NeoX-20B": "GPT-NeoX-20B", "OPT-175B": "OPT-175B", "GPT-J-6B": "GPT-J-6B",
    "RedPajama-7B": "RedPajama-INCITE-7B", "Cerebras-GPT-13B": "Cerebras-GPT-13B",
    "WizardLM-7B": "WizardLM-7B", "WizardLM-13B": "WizardLM-13B-V1.2",
    # seed 003 (five open projects)
    "Falcon-180B": "Falcon-180B", "Mixtral-8x7B": "Mixtral-8x7B", "Phi-3-mini": "Phi-3-mini",
    # seed 004 (summary table)
    "Koala": "Koala-13B", "Dolly 2.0": "Dolly-v2-12B", "StableLM-3B": "StableLM-Base-Alpha-3B",
    "StableLM-7B": "StableLM-Base-Alpha-7B", "StableLM-15B": (None, "announced, never released"),
    "StableLM-30B": (None, "announced, never released"), "PanGu-alpha-2.6B": "PanGu-alpha-2.6B",
    "PanGu-alpha-13B": "PanGu-alpha-13B", "PanGu-alpha-200B": "PanGu-alpha-200B", "MOSS": "MOSS-moon-003-base",
}

# seed 000: size, training VRAM, inference VRAM, CPU RAM, GPUs (as written), and the catalog model we
# recompute each row with
HARDWARE_000 = [
    # size, representative, train (GB), infer FP16 (GB), CPU RAM (GB), multi-GPU
    ("7B", "Llama-2-7B", "20-24 (1 GPU)", "10-14", "16-32", "optional (1-2)"),
    ("13B", "Llama-2-13B", "40-48 (2 GPUs)", "20-26", "32-64", "2+"),
    ("32B", "Qwen2.5-32B", "160-200 (multi-GPU)", "64-70", "64-128", "required (4+)"),
    ("70B", "Llama-2-70B", "400+ (cluster)", "140+", "128-256", "required (16+)"),
    ("304B", "Grok-1", "1500+ (distributed)", "600+ (needs quantisation)", "512+", "hundreds"),
]

# seed 001: ChatGLM-6B minimum GPU memory: (precision, inference GB, parameter-efficient fine-tuning GB)
CLAIMS_001 = [("fp16", 13, 14), ("int8", 10, 9), ("int4", 6, 7)]

# seed 002: minimum configuration for inference, as written
CLAIMS_002 = [
    ("LLaMA-7B", "24 GB GPU (A100 40GB or RTX 3090)"), ("LLaMA-65B", "256 GB over several GPUs"),
    ("Falcon-7B", "16-24 GB single GPU"), ("Falcon-40B", "4 x 80GB A100"), ("Mistral-7B", "24 GB GPU"),
    ("GPT-NeoX-20B", "8 x 40GB A100"), ("BLOOM-176B", "8 x 80GB A100"), ("OPT-175B", "16 x 80GB A100"),
    ("GPT-J-6B", "24 GB GPU"), ("RedPajama-INCITE-7B", "24 GB GPU"), ("Cerebras-GPT-13B", "128 GB over several GPUs"),
    ("WizardLM-7B", "24 GB GPU"), ("WizardLM-13B-V1.2", "48 GB GPU"),
]
