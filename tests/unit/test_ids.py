"""Engine ids: ULIDs in Crockford base32, sorting in creation order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loyalty.adapters.ids import encode_ulid, new_id

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _digit_by_digit(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


@given(now_ms=st.integers(0, 2**48 - 1), rand=st.integers(0, 2**80 - 1))
def test_a_ulid_is_its_time_then_its_random_bits_in_crockford_digits(now_ms, rand):
    assert encode_ulid(now_ms, rand) == _digit_by_digit(now_ms, 10) + _digit_by_digit(rand, 16)


def test_ids_made_one_after_another_sort_in_that_order():
    made = [new_id("evt") for _ in range(2_000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(len(i) == 4 + 26 and set(i[4:]) <= set(ALPHABET) for i in made)
