"""Paraformer pieces -> text, on hand-made token lists and against FunASR's own post-processing."""

import contextlib
import io
import random

import pytest

from stepaudio.asr.text import tokens_to_text


@pytest.mark.parametrize(("tokens", "text"), [
    ([], ""),
    (["你", "好", "世", "界"], "你好世界"),
    (["hello", "world"], "hello world"),
    (["he@@", "llo", "wor@@", "ld"], "hello world"),
    (["un@@", "believ@@", "able"], "unbelievable"),
    (["我", "想", "去", "new", "york", "玩"], "我想去new york玩"),
    (["打", "开", "wi@@", "fi", "吧"], "打开wifi吧"),
    (["<s>", "你", "<unk>", "好", "</s>", "<blank>"], "你好"),
    (["2", "0", "2", "4", "年"], "2024年"),
    (["i", "b", "m", "is", "big"], "IBM is big"),
    (["a", "b", "的"], "AB的"),
    (["don't", "go"], "don't go"),
    (["hello", "wor@@"], "hello"),  # a piece no word closes is dropped, as FunASR does
])
def test_hand_made_token_lists(tokens, text):
    assert tokens_to_text(tokens) == text


def test_punctuation_is_kept_before_a_chinese_character():
    # FunASR would delete the comma here (it removes the item before the character, assuming the
    # space after "ok"); we only ever remove that space.
    assert tokens_to_text(["ok", "，", "好"]) == "ok ，好"


def test_equals_funasr_sentence_postprocess_on_random_sequences():
    with contextlib.redirect_stdout(io.StringIO()):
        from funasr.utils.postprocess_utils import sentence_postprocess

    vocab = ["的", "是", "我", "你", "唔", "係", "你好", "1", "2", "10", "a", "b", "i", "m", "s", "the", "hello",
             "don't", "'", "café", "he@@", "llo", "wor@@", "ld", "x@@", "@@", "ing", "<s>", "</s>", "<unk>"]
    rng = random.Random(1234)
    for _ in range(5000):
        tokens = [rng.choice(vocab) for _ in range(rng.randint(0, 12))]
        assert tokens_to_text(tokens) == sentence_postprocess(tokens)[0], tokens
