"""TTS prompt assembly (spec 3.2, 3.3): system-prompt selection, tag routing, ids against the HF tokenizer."""

from __future__ import annotations

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("torch")

from stepaudio.llm import prompts as P
from stepaudio.llm.text_tokenizer import TextTokenizer

from .test_llm_tokenizer import TTS, hf_tokenizer, step1_folders


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer(step1_folders()[TTS])


@pytest.mark.parametrize(
    "text,tag",
    [
        ("(高兴1)(粤语)(快速1)今天天气真好", "高兴1"),
        ("（RAP）我踏上自由的征途", "RAP"),
        ("（哼唱）啦啦啦", "哼唱"),
        ("(RAP)first line\nsecond line", "RAP"),
        ("（RAP)mixed parens", "RAP"),
        ("( RAP )spaces stay", " RAP "),
        ("(Humming (哼唱))nested parens do not match", ""),
        ("no tag (RAP)", ""),
        ("()empty", ""),
        ("（（高兴1））", "高兴1"),
        ("", ""),
    ],
)
def test_detect_instruction(text: str, tag: str) -> None:
    assert P.detect_instruction(text) == tag


def test_system_prompt_selection() -> None:
    assert P.select_system_prompt("(RAP)我想说唱") == ("rap", P.SYS_PROMPT_FOR_RAP)
    assert P.select_system_prompt("(RAP)这段要哼唱") == ("vocal", P.SYS_PROMPT_FOR_VOCAL)  # 哼唱 anywhere
    assert P.select_system_prompt("（哼唱）啦啦", speaker="Tingting") == ("vocal", P.SYS_PROMPT_FOR_VOCAL)
    assert P.select_system_prompt("(RAP)x", speaker="Tingting")[0] == "rap"
    kind, prompt = P.select_system_prompt("(高兴1)你好", speaker="Tingting")
    assert kind == "with_spk" and "请在朗读时，使用[Tingting]的声音，根据这些" in prompt
    assert P.select_system_prompt("我想哼唱", speaker="Tingting")[0] == "with_spk"  # no leading tag
    assert P.select_system_prompt("你好") == ("wo_spk", P.SYS_PROMPT_WO_SPK)
    assert P.select_system_prompt("你好", speaker="") == ("wo_spk", P.SYS_PROMPT_WO_SPK)


def test_system_prompt_constants() -> None:
    assert P.SYS_PROMPT_FOR_RAP == "请参考对话历史里的音色，用RAP方式将文本内容大声说唱出来。"
    assert P.SYS_PROMPT_FOR_VOCAL == "请参考对话历史里的音色，用哼唱的方式将文本内容大声唱出来。"
    wo, with_spk = P.SYS_PROMPT_WO_SPK, P.SYS_PROMPT_WITH_SPK
    assert wo.startswith("作为一名卓越的声优演员，你的任务是根据文本中（）或()括号内标注的")
    assert wo.endswith("如果没有()或（）括号，则根据文本语义内容自由演绎。")
    assert wo.count("\n") == 28 and '\n- "撒娇1"\n\n# 语种' in wo and '- "快速2"\n\n请在朗读时，根据这些' in wo
    assert with_spk.replace("使用[{}]的声音，", "") == wo and with_spk.count("{}") == 1


def test_decoder_routing() -> None:
    assert P.decoder_for("(RAP)x") == P.MUSIC_DECODER == "CosyVoice-300M-25Hz-Music"
    assert P.decoder_for("（哼唱）x") == P.MUSIC_DECODER
    assert P.decoder_for("(高兴1)(RAP)x") == P.COMMON_DECODER == "CosyVoice-300M-25Hz"
    assert P.decoder_for("(Humming (哼唱))x") == P.COMMON_DECODER  # the reference UI's label bug


def reference_assembly(enc, sys_prompt: str, prompt_text: str, codes: list[int], text: str) -> list[int]:
    """Spec 3.2 with ``enc`` = the HF tokenizer's encode (default special-token handling)."""
    nl = len(enc("\n"))
    ids = [1]
    ids += [4, *enc("system\n" + sys_prompt), 3]
    ids += [4, *enc("human\n"), *enc("\n" + prompt_text)[nl:], 3]
    ids += [4, *enc("assistant\n"), *codes, 3]
    ids += [4, *enc("human\n"), *enc("\n" + text)[nl:], 3]
    ids += [4, *enc("assistant\n")]
    return ids


CASES = [
    ("(高兴1)(粤语)今天天气真好！", "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？", "Tingting"),
    ("（RAP）我踏上自由的征途", "（RAP）一二三四", "Tingting"),
    ("（哼唱）啦啦啦", "啦", None),
    ("Hello there, how are you?", " leading space in the transcript", None),
    ("", "", None),
    ("text with <audio_5> and <|EOT|> inside", "line one\nline two", "A B"),
    ("龘😀 outside the vocabulary", "é", None),
]


@pytest.mark.parametrize("text,prompt_text,speaker", CASES)
def test_prompt_matches_hf(tok: TextTokenizer, text: str, prompt_text: str, speaker: str | None) -> None:
    hf = hf_tokenizer(TTS)
    codes = [65536 + (37 * i) % 5120 for i in range(15)]
    got = P.build_tts_prompt(tok, text, prompt_text, codes, speaker)
    kind, sys_prompt = P.select_system_prompt(text, speaker)
    assert got.ids == reference_assembly(hf.encode, sys_prompt, prompt_text, codes, text)
    assert got.sys_prompt_kind == kind and got.decoder == P.decoder_for(text)
    assert got.instruction == P.detect_instruction(text)


def test_bos_artefacts(tok: TextTokenizer) -> None:
    """What the reference's separate encode() calls leave in the prompt (module docstring)."""
    piece = tok.piece_to_id
    nl = 5 + 0x0A  # the byte piece <0x0A>
    assert tok.encode("\n") == [1, piece("▁"), nl]
    assert tok.encode("assistant\n") == [1, piece("▁assistant"), nl]
    human = tok.encode("human\n")
    assert human[0] == 1 and human[-1] == nl and tok.decode(human[1:]) == "human\n"
    assert tok.id_to_piece(human[1]).startswith("▁")  # prefix space, unlike "<|BOT|>human" in chat

    codes = [65536 + 3, 65536 + 1500]
    p = P.build_tts_prompt(tok, "你好", "谢谢", codes)
    ids = p.ids
    assert ids[:3] == [1, 4, 1]  # leading BOS, <|BOT|>, the BOS of enc("system\n...")
    assert ids.count(1) == 6  # one per encode() of a role/system string plus the leading one
    turns = []  # split at <|BOT|>
    for i in ids[1:]:
        if i == 4:
            turns.append([])
        turns[-1].append(i)
    assert len(turns) == 5 and all(t[:2] == [4, 1] for t in turns)
    assert turns[0][-1] == 3 and tok.decode(turns[0][2:-1]) == "system\n" + P.SYS_PROMPT_WO_SPK
    t_prompt = tok.encode("\n谢谢")[3:]
    assert turns[1] == [4, *human, *t_prompt, 3] and tok.decode(t_prompt) == "谢谢"
    assert turns[2] == [4, 1, piece("▁assistant"), nl, *codes, 3]
    assert turns[3] == [4, *human, *tok.encode("\n你好")[3:], 3]
    assert turns[4] == [4, 1, piece("▁assistant"), nl]
    # T(x) drops BOS, "▁" and "\n": x's first word has no prefix space.
    t = tok.encode("\nHello there")[3:]
    assert tok.id_to_piece(t[0])[0] != "▁" and tok.decode(t) == "Hello there"


def test_bad_prompt_ids(tok: TextTokenizer) -> None:
    with pytest.raises(ValueError, match="audio token ids"):
        P.build_tts_prompt(tok, "x", "y", [65535])
    with pytest.raises(ValueError, match="audio token ids"):
        P.build_tts_prompt(tok, "x", "y", [65536 + 5120])
    assert P.build_tts_prompt(tok, "x", "y", []).ids.count(3) == 4
