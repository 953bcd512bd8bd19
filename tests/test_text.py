"""asymcert.text: the short lists of one-line messages."""

from asymcert.text import first_few


def test_first_few_shows_k_items_then_how_many_more():
    assert first_few(["a", "b", "c"], 2, repr) == "'a', 'b' and 1 more"
    assert first_few(["a", "b"], 2, repr) == "'a', 'b'"
    assert first_few([], 3) == ""
    assert first_few([1, 2, 3, 4, 5], 1) == "1 and 4 more"
    assert first_few(["u", "v"], 1, lambda s: f"`{s}`") == "`u` and 1 more"
