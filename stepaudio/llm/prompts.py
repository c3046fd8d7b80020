"""Step-Audio-TTS-3B prompt assembly, id for id with the reference (spec 3.2, 3.3).

The reference builds the TTS prompt directly as ids, with several separate ``encode()`` calls of the
Hugging Face tokenizer (default special-token handling, so each call may add a BOS)::

    [1]
    [4] + enc("system\\n" + SYS) + [3]
    [4] + enc("human\\n") + T(prompt_text) + [3]
    [4] + enc("assistant\\n") + prompt_code + [3]
    [4] + enc("human\\n") + T(text) + [3]
    [4] + enc("assistant\\n")

with ``T(x) = enc("\\n" + x)[len(enc("\\n")):]``.  ``build_tts_prompt`` performs exactly these calls
with ``TextTokenizer.encode`` (which reproduces the HF tokenizer id for id), so the artefacts come out
as the reference has them.

BOS artefacts, established by running the reference's tokenizer (transformers 4.48.3
``AutoTokenizer`` -> ``LlamaTokenizerFast`` converted from ``tokenizer.model``) on the tiny
``Step-Audio-TTS-3B`` folder and comparing with ``TextTokenizer`` id for id:

* Step-Audio-TTS-3B's ``tokenizer_config.json`` has no ``add_bos_token`` key and transformers 4.x
  defaults it to true, so **every** ``enc()`` call starts with a BOS: ``enc("system\n...")``,
  ``enc("human\n")`` and ``enc("assistant\n")`` each begin with 1, and the prompt carries a BOS
  right after each ``<|BOT|>``: ``[1, 4, 1, <system...>, 3, 4, 1, <human\n>, ...]`` -- six BOS ids in
  all (the leading one plus one per turn).  transformers 5 defaults ``add_bos_token`` to false when
  the key is absent and would silently drop those five; ``TextTokenizer`` keeps the 4.x default.
* ``enc(role + "\n")`` encodes the role with the prefix space: ``▁assistant`` (one piece in the
  tiny vocabulary), ``▁h um an`` -- not the bare ``assistant`` / ``human`` pieces the chat template
  produces right after ``<|BOT|>``.
* ``enc("\n")`` is ``[1, ▁, <0x0A>]`` (three ids), so ``T(x)`` removes the BOS, the lone ``▁`` and
  the newline, and ``x`` is encoded without a prefix space on its first word.  (The reference
  removes by count; so does this code, so a vocabulary where the newline merges with the following
  text would still come out as the reference has it.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepaudio.llm.text_tokenizer import TextTokenizer

__all__ = [
    "COMMON_DECODER",
    "MUSIC_DECODER",
    "SYS_PROMPT_FOR_RAP",
    "SYS_PROMPT_FOR_VOCAL",
    "SYS_PROMPT_WITH_SPK",
    "SYS_PROMPT_WO_SPK",
    "TtsPrompt",
    "build_tts_prompt",
    "decoder_for",
    "detect_instruction",
    "select_system_prompt",
    "tts_output_ids",
]

BOS_ID = 1
EOT_ID = 3
BOT_ID = 4
AUDIO_TOKEN_OFFSET = 65536
N_AUDIO_TOKENS = 5120


def tts_output_ids() -> list[int]:
    """What the flow decoder can voice and what ends a TTS reply: the audio ids and the stop id
    (a TTS LM's restricted head, ``Step1ForCausalLM.restrict_head``)."""
    return [EOT_ID, *range(AUDIO_TOKEN_OFFSET, AUDIO_TOKEN_OFFSET + N_AUDIO_TOKENS)]


COMMON_DECODER = "CosyVoice-300M-25Hz"
MUSIC_DECODER = "CosyVoice-300M-25Hz-Music"
MUSIC_TAGS = ("RAP", "哼唱")

SYS_PROMPT_FOR_RAP = "请参考对话历史里的音色，用RAP方式将文本内容大声说唱出来。"
SYS_PROMPT_FOR_VOCAL = "请参考对话历史里的音色，用哼唱的方式将文本内容大声唱出来。"

_SYS_PROMPT_BODY = (
    "作为一名卓越的声优演员，你的任务是根据文本中（）或()括号内标注的情感、语种或方言、音乐哼唱、语音调整等标签，"
    "以丰富细腻的情感和自然顺畅的语调来朗读文本。\n"
    "# 情感标签涵盖了多种情绪状态，包括但不限于：\n"
    '- "高兴1"\n'
    '- "高兴2"\n'
    '- "生气1"\n'
    '- "生气2"\n'
    '- "悲伤1"\n'
    '- "撒娇1"\n'
    "\n"
    "# 语种或方言标签包含多种语言或方言，包括但不限于：\n"
    '- "中文"\n'
    '- "英文"\n'
    '- "韩语"\n'
    '- "日语"\n'
    '- "四川话"\n'
    '- "粤语"\n'
    '- "广东话"\n'
    "\n"
    "# 音乐哼唱标签包含多种类型歌曲哼唱，包括但不限于：\n"
    '- "RAP"\n'
    '- "哼唱"\n'
    "\n"
    "# 语音调整标签，包括但不限于：\n"
    '- "慢速1"\n'
    '- "慢速2"\n'
    '- "快速1"\n'
    '- "快速2"\n'
    "\n"
)
_SYS_PROMPT_TAIL = (
    "根据这些情感标签的指示，调整你的情感、语气、语调和哼唱节奏，以确保文本的情感和意义得到准确而生动的传达，"
    "如果没有()或（）括号，则根据文本语义内容自由演绎。"
)
SYS_PROMPT_WO_SPK = _SYS_PROMPT_BODY + "请在朗读时，" + _SYS_PROMPT_TAIL
# Formatted with the speaker name: SYS_PROMPT_WITH_SPK.format("Tingting") -> "...使用[Tingting]的声音，..."
SYS_PROMPT_WITH_SPK = _SYS_PROMPT_BODY + "请在朗读时，使用[{}]的声音，" + _SYS_PROMPT_TAIL

SYS_PROMPTS = {
    "rap": SYS_PROMPT_FOR_RAP,
    "vocal": SYS_PROMPT_FOR_VOCAL,
    "wo_spk": SYS_PROMPT_WO_SPK,
    "with_spk": SYS_PROMPT_WITH_SPK,
}

# The leading tag: an opening ASCII or full-width paren, no ASCII paren inside, a closing paren.
# Only the first tag of a chain such as "(高兴1)(粤语)文本" is parsed; the rest is left to the LM.
_LEADING_TAG = re.compile(r"^([（(][^()]*[）)]).*$", re.DOTALL)


def detect_instruction(text: str) -> str:
    """The name inside the leading tag of ``text`` (parens stripped), or "" when there is none."""
    m = _LEADING_TAG.match(text)
    return m.group(1).strip("()（）") if m else ""


def select_system_prompt(text: str, speaker: str | None = None) -> tuple[str, str]:
    """(kind, system prompt) for ``text``: kind is "vocal", "rap", "with_spk" or "wo_spk".

    A leading RAP/哼唱 tag selects the vocal prompt if "哼唱" occurs anywhere in the text, else the
    rap prompt; otherwise a speaker name selects the prompt naming it, else the prompt without one."""
    if detect_instruction(text) in MUSIC_TAGS:
        return ("vocal", SYS_PROMPT_FOR_VOCAL) if "哼唱" in text else ("rap", SYS_PROMPT_FOR_RAP)
    if speaker:
        return "with_spk", SYS_PROMPT_WITH_SPK.format(speaker)
    return "wo_spk", SYS_PROMPT_WO_SPK


def decoder_for(text: str) -> str:
    """The speech decoder folder the leading tag routes to."""
    return MUSIC_DECODER if detect_instruction(text) in MUSIC_TAGS else COMMON_DECODER


@dataclass(frozen=True)
class TtsPrompt:
    ids: list[int]
    sys_prompt_kind: str  # "vocal" | "rap" | "with_spk" | "wo_spk"
    decoder: str  # COMMON_DECODER or MUSIC_DECODER
    instruction: str = ""  # the leading tag's name ("" when the text has none)


def build_tts_prompt(
    tokenizer: TextTokenizer,
    text: str,
    prompt_text: str,
    prompt_llm_ids: Sequence[int],
    speaker: str | None = None,
) -> TtsPrompt:
    """The TTS LM prompt for synthesising ``text`` in the voice of a prompt recording.

    ``prompt_text`` is the exact transcript of the prompt recording and ``prompt_llm_ids`` its audio
    tokens as LLM ids (65536 + N).  ``speaker`` names a built-in speaker (the reference blanks it for
    voice cloning, which selects the prompt without a speaker).  The ids end with the open assistant
    turn ``<|BOT|>assistant\\n``; generation continues from there and stops at ``<|EOT|>`` (3)."""
    codes = [int(i) for i in prompt_llm_ids]
    bad = [i for i in codes if not AUDIO_TOKEN_OFFSET <= i < AUDIO_TOKEN_OFFSET + N_AUDIO_TOKENS]
    if bad:
        raise ValueError(
            f"prompt_llm_ids must be audio token ids in [{AUDIO_TOKEN_OFFSET}, "
            f"{AUDIO_TOKEN_OFFSET + N_AUDIO_TOKENS}); got {bad[:5]}"
        )
    kind, sys_prompt = select_system_prompt(text, speaker)
    enc = tokenizer.encode  # the tokenizer's default BOS handling, as the reference's encode()

    def after_newline(x: str) -> list[int]:
        return enc("\n" + x)[len(enc("\n")) :]

    human = enc("human\n")
    assistant = enc("assistant\n")
    ids = [BOS_ID]
    ids += [BOT_ID, *enc("system\n" + sys_prompt), EOT_ID]
    ids += [BOT_ID, *human, *after_newline(prompt_text), EOT_ID]
    ids += [BOT_ID, *assistant, *codes, EOT_ID]
    ids += [BOT_ID, *human, *after_newline(text), EOT_ID]
    ids += [BOT_ID, *assistant]
    return TtsPrompt(ids=ids, sys_prompt_kind=kind, decoder=decoder_for(text), instruction=detect_instruction(text))
