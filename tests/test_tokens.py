import numpy as np

from stepaudio.tokenizer import tokens


def test_interleave_groups_and_offsets():
    vq02 = np.array([1, 2, 3, 4, 5])  # 2 full groups + leftover
    vq06 = np.array([10, 11, 12, 13, 14, 15, 16])  # 2 full groups + leftover
    n = tokens.interleave(vq02, vq06)
    assert n.tolist() == [1, 2, 1034, 1035, 1036, 3, 4, 1037, 1038, 1039]
    assert tokens.interleave(vq02, vq06, 1).tolist() == [3, 4, 1037, 1038, 1039]
    assert tokens.interleave(vq02, vq06, 2).tolist() == []


def test_string_roundtrip_and_llm_ids():
    n = [0, 1023, 1024, 5119]
    s = tokens.token_string(n)
    assert s == "<audio_0><audio_1023><audio_1024><audio_5119>"
    assert tokens.parse_token_string(s) == n
    assert tokens.llm_ids(np.array(n)).tolist() == [65536, 66559, 66560, 70655]


def test_group_count():
    assert tokens.n_complete_groups(5, 9) == 2
    assert tokens.n_complete_groups(0, 9) == 0
