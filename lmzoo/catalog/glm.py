"""Tsinghua KEG / Zhipu AI's GLM line: GLM-130B, ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B, CodeGeeX2-6B,
GLM-4-9B.

GLM-130B and ChatGLM-6B are pre-trained with GLM's autoregressive blank infilling: a prefix LM with
DeepNorm-style scaled residuals; ChatGLM-6B adds 2-D RoPE (lmzoo runs its checkpoint, tests/
test_chatglm6b.py). GLM-130B's weights are SwissArmyTransformer model-parallel shards given out on
application, which lmzoo does not read; its config is buildable for counting and sizing. From ChatGLM2-6B on the
network is a LLaMA-like block with multi-query groups, q/k/v bias and RoPE on half of each head (lmzoo runs it)."""

from __future__ import annotations

from lmzoo.catalog._arch import llama_like
from lmzoo.catalog._entry import Entry, License, derive, hf, hf_config

GLM130B_PAPER = "https://arxiv.org/abs/2210.02414"
GLM_PAPER = "https://arxiv.org/abs/2103.10360"
CHATGLM_FAMILY = "https://arxiv.org/abs/2406.12793"


def _reg(url: str, name: str) -> License:
    return License(name=name, commercial="conditional",
                   conditions="free for academic research; commercial use free after registering with Zhipu AI "
                              "(questionnaire); no military or illegal use", url=url)


CHATGLM6B_ARCH = dict(
    n_layer=28, n_embd=4096, n_head=32, n_kv_head=32, head_dim=128, intermediate_size=16384, vocab_size=130528,
    max_seq_len=2048, norm="layernorm", norm_eps=1e-5,
    # pre-LN, but the residual adds the *normalised* input scaled by alpha = sqrt(2 n_layer) (DeepNorm-style)
    norm_placement="deepnorm", deepnorm_alpha=(2 * 28) ** 0.5,
    mlp="gelu_tanh", mlp_bias=True, qkv_bias=True, attn_out_bias=True,
    # RoPE on each half of the head: one half rotated by the position, the other by the block position;
    # cos/sin tables in float16 as the released code builds them
    position="rope_2d", rope_theta=10000.0, rope_table_dtype="float16", attention="standard",
    parallel_residual=False, tie_embeddings=True,
    # prefix LM: bidirectional up to <sop> (130004); [gMASK] (130001) before [MASK] (130000)
    prefix_lm=True, bos_token_id=130004, eos_token_id=(130005,), mask_token_ids=(130001, 130000),
)
GLM130B_ARCH = dict(
    n_layer=70, n_embd=12288, n_head=96, n_kv_head=96, head_dim=128, intermediate_size=32768, vocab_size=150528,
    max_seq_len=2048, norm="layernorm", norm_eps=1e-5, norm_placement="deepnorm", deepnorm_alpha=(2 * 70) ** 0.5,
    mlp="geglu", mlp_bias=True, qkv_bias=True, attn_out_bias=True, position="rope", rope_theta=10000.0,
    attention="standard", parallel_residual=False, tie_embeddings=True,
    # 1-D positions, prefix LM up to <sop>; token ids of the 150,528-token icetk vocabulary it shares with
    # the first ChatGLM-6B code (sop 150004, [MASK] 150000, [gMASK] 150001)
    prefix_lm=True, bos_token_id=150004, mask_token_ids=(150001, 150000),
)
# ChatGLM2 / ChatGLM3 / CodeGeeX2: 2 multi-query groups of 128-wide heads; RoPE on the first 64 dims
CHATGLM2_ARCH = llama_like(
    n_layer=28, n_embd=4096, n_head=32, n_kv_head=2, head_dim=128, intermediate_size=13696, vocab_size=65024,
    max_seq_len=32768, norm_eps=1e-5, qkv_bias=True, rotary_percentage=0.5)
GLM4_9B_ARCH = derive(CHATGLM2_ARCH, n_layer=40, vocab_size=151552, max_seq_len=8192)


def _glm(name, *, arch, params, label, released, tokens, lic, repo, paper, objective, tokenizer, base=None,
         notes=(), exception=None, aliases=()):
    return Entry(
        name=name, family="glm", organisation="Tsinghua KEG / Zhipu AI", released=released, params=params,
        params_label=label, tokens=tokens, tokenizer=tokenizer, license=lic, base_model=base, objective=objective,
        arch=arch, hf_id=repo,
        sources={"paper": paper, "params": hf(repo) if repo else paper, "tokens": paper,
                 "arch": hf_config(repo) if repo else paper, "license": lic.url},
        notes=tuple(notes), param_exception=exception, aliases=aliases,
    )


ENTRIES = [
    _glm("GLM-130B", arch=GLM130B_ARCH, params=130e9, label="130B", released="2022-08-04", tokens=400e9,
         lic=License(name="GLM-130B Model License", commercial="conditional",
                     conditions="weights on application, for research; commercial use needs Zhipu's permission",
                     url="https://github.com/THUDM/GLM-130B/blob/main/MODEL_LICENSE"),
         repo=None, paper=GLM130B_PAPER, objective="GLM blank infilling + multi-task instruction pre-training",
         tokenizer="icetk (SentencePiece), 150,528 tokens (130K text + image tokens)",
         notes=("400B tokens: 200B Chinese + 200B English (seed 004 attributes this figure to 'ChatGLM')",
                "DeepNorm post-LN and GeGLU (seed 001 lists these under ChatGLM-6B; they are GLM-130B's)")),
    _glm("ChatGLM-6B", arch=CHATGLM6B_ARCH, params=6.2e9, label="6.2B", released="2023-03-14", tokens=1.0e12,
         lic=_reg("https://github.com/THUDM/ChatGLM-6B/blob/main/MODEL_LICENSE", "ChatGLM-6B Model License"),
         repo="THUDM/chatglm-6b", paper="https://github.com/THUDM/ChatGLM-6B",
         objective="GLM blank infilling pre-training, then SFT + feedback bootstrap + RLHF",
         tokenizer="SentencePiece (icetk), 130,528 tokens (incl. 20K image tokens, unused)",
         notes=("the MLP is plain GELU (4h), not GeGLU as seed 001 says; the residual scaling is DeepNorm's "
                "alpha = sqrt(2 * 28)",)),
    _glm("ChatGLM2-6B", arch=CHATGLM2_ARCH, params=6.2e9, label="6.2B", released="2023-06-25", tokens=1.4e12,
         lic=_reg("https://github.com/THUDM/ChatGLM2-6B/blob/main/MODEL_LICENSE", "ChatGLM2-6B Model License"),
         repo="THUDM/chatglm2-6b", paper="https://github.com/THUDM/ChatGLM2-6B",
         objective="GLM hybrid objective pre-training, then SFT + RLHF",
         tokenizer="SentencePiece BPE, 65,024 tokens",
         notes=("32K context (the chat model was aligned at 8K); multi-query attention with 2 groups",)),
    _glm("ChatGLM3-6B", arch=derive(CHATGLM2_ARCH, max_seq_len=8192), params=6.2e9, label="6.2B",
         released="2023-10-27", tokens=None,
         lic=_reg("https://github.com/THUDM/ChatGLM3/blob/main/MODEL_LICENSE", "ChatGLM3-6B Model License"),
         repo="THUDM/chatglm3-6b", paper="https://github.com/THUDM/ChatGLM3",
         objective="causal LM pre-training, then SFT + RLHF (tool calling, code interpreter)",
         tokenizer="SentencePiece BPE, 65,024 tokens",
         notes=("training tokens not disclosed", "ChatGLM3-6B-32K extends the context to 32K",
                "seed 001 credits ChatGLM3 with multimodal SOTA results; those are CogVLM's, a separate model")),
    _glm("CodeGeeX2-6B", arch=derive(CHATGLM2_ARCH, max_seq_len=8192), params=6.2e9, label="6B",
         released="2023-07-24", tokens=None, base="ChatGLM2-6B",
         lic=_reg("https://github.com/THUDM/CodeGeeX2/blob/main/MODEL_LICENSE", "CodeGeeX2 Model License"),
         repo="THUDM/codegeex2-6b", paper="https://github.com/THUDM/CodeGeeX2",
         objective="continued pre-training of ChatGLM2-6B on 600B code tokens",
         tokenizer="SentencePiece BPE, 65,024 tokens",
         notes=("total tokens not disclosed: 600B further code tokens on top of ChatGLM2-6B's pre-training",)),
    _glm("GLM-4-9B", arch=GLM4_9B_ARCH, params=9e9, label="9B", released="2024-06-05", tokens=10e12,
         lic=_reg("https://huggingface.co/THUDM/glm-4-9b/blob/main/LICENSE", "GLM-4 Model License"),
         repo="THUDM/glm-4-9b", paper=CHATGLM_FAMILY, objective="causal LM pre-training",
         tokenizer="tiktoken byte-level BPE, 151,552 tokens",
         exception="the name's '9B' is rounded down: the 151,552-token embedding and untied head add 1.24B to "
                   "8.16B of blocks (9.40B)",
         aliases=("GLM-4",)),
    _glm("GLM-4-9B-Chat-1M", arch=derive(GLM4_9B_ARCH, max_seq_len=1048576, rope_theta=1e8), params=9e9,
         label="9B", released="2024-06-05", tokens=10e12, base="GLM-4-9B",
         lic=_reg("https://huggingface.co/THUDM/glm-4-9b-chat-1m/blob/main/LICENSE", "GLM-4 Model License"),
         repo="THUDM/glm-4-9b-chat-1m", paper=CHATGLM_FAMILY, objective="SFT + RLHF, 1M-token context",
         tokenizer="tiktoken byte-level BPE, 151,552 tokens",
         notes=("seed 000 says GLM-4-9B supports a 1M context: only this chat variant does (the base: 8K, "
                "GLM-4-9B-Chat: 128K)",),
         exception="rounded '9B' label; the weights hold 9.40B (see GLM-4-9B)"),
]
