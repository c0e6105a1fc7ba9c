"""PanGu-alpha's tokenizer, re-implemented from PCL's published tokenization_jieba.py (JIEBATokenizer):
jieba cuts the text into words, " " and "\n" inside a word become U+2582 / U+2583, the words are joined by
spaces and encoded by SentencePiece; decoding drops SentencePiece's spaces and maps the two back."""

from __future__ import annotations


class JIEBATokenizer:
    def __init__(self, sp):
        import jieba

        self.sp, self.jieba = sp, jieba
        self.translator = str.maketrans(" \n", "\u2582\u2583")

    def tokenize(self, text: str) -> str:
        seg_list = [x.translate(self.translator) for x in self.jieba.cut(text, cut_all=False)]
        return " ".join(seg_list)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(self.tokenize(text))

    def decode(self, tokens: list[int]) -> str:
        text = self.sp.decode(tokens)
        return text.replace(" ", "").replace("\u2582", " ").replace("\u2583", "\n")
