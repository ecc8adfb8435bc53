from captcha_lit.alphabet import ALPHANUMERIC, DIGITS, decode, encode, label_problem


def test_encode_decode_round_trip():
    assert encode("a0z9", ALPHANUMERIC) == [10, 0, 35, 9]
    assert decode([10, 0, 35, 9], ALPHANUMERIC) == "a0z9"
    assert decode(encode("7", DIGITS), DIGITS) == "7"


def test_label_problems():
    assert label_problem("ab12", 4, ALPHANUMERIC) is None
    assert "length 3" in label_problem("ab1", 4, ALPHANUMERIC)
    assert "not in the alphabet" in label_problem("AB12", 4, ALPHANUMERIC)
    assert "not in the alphabet" in label_problem("a", 1, DIGITS)  # task1 is digits only
