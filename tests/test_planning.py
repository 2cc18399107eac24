"""Pure planning: text preparation, token estimates, batching, assembly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rerank_cache import ConfigurationError, Doc
from rerank_cache.planning import (
    ModelLimits,
    assemble,
    collect,
    estimate_tokens,
    limits_for,
    plan_batches,
    prepare_text,
    trim_to_tokens,
)
from rerank_cache.testing import count_tokens

GTE = limits_for("gte-rerank-v2")


def test_limits_known_and_default() -> None:
    """Known models get their documented limits; unknown models get conservative ones."""
    assert ModelLimits(500, 4_000, 30_000) == GTE
    assert limits_for("qwen3-vl-rerank").max_documents == 100
    assert limits_for("some-future-model").max_documents <= 100


def test_model_limits_reject_nonsense() -> None:
    """A limit below 1 is a clear error, not an infinite loop later."""
    with pytest.raises(ValueError, match="max_documents"):
        ModelLimits(0, 10, 10)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_estimate_never_below_server_count(text: str) -> None:
    """The client's estimate is at least the local server's token count for any text."""
    assert estimate_tokens(text) >= count_tokens(text)


def test_estimate_counts_cjk_per_character() -> None:
    """CJK text counts one token per character, so CJK batches never overflow."""
    assert estimate_tokens("向量数据库") == 5
    assert estimate_tokens("abc def") == 2
    assert estimate_tokens("2026") == 4


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=1, max_value=60))
def test_trim_respects_budget_and_is_prefix(text: str, budget: int) -> None:
    """Trimming gives a prefix whose estimate fits the budget."""
    trimmed = trim_to_tokens(text, budget)
    assert text.startswith(trimmed)
    assert estimate_tokens(trimmed) <= budget
    if estimate_tokens(text) <= budget:
        assert trimmed == text


def test_prepare_text_skips_blank_and_none() -> None:
    """None, empty, whitespace-only and non-string values are skipped; strings are stripped."""
    assert prepare_text(None, GTE) is None
    assert prepare_text("  \n ", GTE) is None
    assert prepare_text("", GTE) is None
    assert prepare_text("  hello ", GTE) == "hello"
    assert prepare_text(42, GTE) is None  # only a str is text
    assert prepare_text(0, GTE) is None


def test_prepare_text_replaces_lone_surrogates() -> None:
    """Text UTF-8 cannot encode is made encodable instead of failing inside the SDK."""
    text = prepare_text("ok \ud800 there", GTE)
    assert text is not None
    text.encode("utf-8")
    assert text.startswith("ok ")


def test_prepare_text_trims_overlong() -> None:
    """A document over the model's per-item token limit is trimmed to fit it."""
    text = prepare_text("word " * 20_000, GTE)
    assert text is not None
    assert estimate_tokens(text) <= GTE.max_item_tokens
    assert len(text) > 1_000


def test_collect_dedupes_ids_and_texts() -> None:
    """First occurrence of an id wins; identical texts under different ids are listed once."""
    lists = [
        [Doc("a", fields={"t": "alpha"}), Doc("b", fields={"t": "beta"})],
        [Doc("a", fields={"t": "other"}), Doc("c", fields={"t": "alpha"}), None],
    ]
    got = collect(lists, "t", GTE)
    assert [doc.id for doc, _ in got.candidates] == ["a", "b", "c"]
    assert [text for _, text in got.candidates] == ["alpha", "beta", "alpha"]
    assert got.texts == ("alpha", "beta")
    assert got.seen == 4


def test_collect_skips_textless_but_later_copy_counts() -> None:
    """A copy of a document without the field does not hide a later copy that has it."""
    lists = {"v1": [Doc("a", fields={})], "v2": [Doc("a", fields={"t": "x"})]}
    got = collect(lists, "t", GTE)
    assert [text for _, text in got.candidates] == ["x"]


def test_collect_rejects_wrong_shapes() -> None:
    """A bare list of documents or a string is a TypeError with a clear message."""
    with pytest.raises(TypeError, match="list of lists"):
        collect("nope", "t", GTE)
    with pytest.raises(TypeError, match=r"query_results\[0\]"):
        collect([Doc("a")], "t", GTE)


def test_plan_batches_respects_both_limits() -> None:
    """Every batch stays within the document limit and the token budget."""
    limits = ModelLimits(max_documents=3, max_item_tokens=50, max_request_tokens=100)
    texts = [f"doc {i} " + "word " * (i % 7) for i in range(20)]
    batches = plan_batches("find words", texts, limits, budget_fraction=1.0)
    assert sorted(i for b in batches for i in b) == list(range(20))
    q = estimate_tokens("find words")
    for batch in batches:
        assert len(batch) <= 3
        assert sum(q + estimate_tokens(texts[i]) for i in batch) <= 100


def test_plan_batches_counts_instruct_once() -> None:
    """The instruct text counts once per request against the budget."""
    limits = ModelLimits(max_documents=100, max_item_tokens=50, max_request_tokens=20)
    texts = ["aaa"] * 10  # 1 token + 1 query token each
    without = plan_batches("q", texts, limits, budget_fraction=1.0)
    with_instruct = plan_batches("q", texts, limits, instruct="x" * 30, budget_fraction=1.0)
    assert len(without) == 1
    assert len(with_instruct) == 2


def test_assemble_sorts_stably_and_cuts() -> None:
    """Best first, ties keep input order, topn applied, caller's type kept."""
    lists = [
        [Doc("a", 0.1, fields={"t": "x"}), Doc("b", fields={"t": "y"}), Doc("c", fields={"t": "z"})]
    ]
    got = collect(lists, "t", GTE)
    out = assemble(got.candidates, {"x": 0.5, "y": 0.9, "z": 0.5}, 2)
    assert [(d.id, d.score) for d in out] == [("b", 0.9), ("a", 0.5)]
    assert all(isinstance(d, Doc) for d in out)
    assert lists[0][0].score == 0.1  # inputs untouched


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, -0.0]), max_size=1_500),
    st.integers(min_value=1, max_value=40),
)
def test_assemble_equals_a_stable_sort(values: list[float], topn: int) -> None:
    """Whichever ranking ``assemble`` uses (a heap for many candidates, a sort for few),
    the result is a stable sort by score, best first, cut to ``topn``; many ties."""
    docs = [Doc(f"d{i}", fields={"t": f"text {i}"}) for i in range(len(values))]
    got = collect([docs], "t", GTE)
    scores = {f"text {i}": v for i, v in enumerate(values)}
    out = assemble(got.candidates, scores, topn)
    expected = sorted(range(len(values)), key=lambda i: values[i], reverse=True)[:topn]
    assert [(d.id, d.score) for d in out] == [(f"d{i}", values[i]) for i in expected]


def test_doc_replace_copies_and_checks() -> None:
    """``Doc._replace`` returns a new document with its own dicts; unknown names raise."""
    d = Doc("a", 0.1, vectors={"v": [1.0]}, fields={"t": "x"})
    e = d._replace(score=0.9)
    assert (e.id, e.score, e.fields, e.vectors) == ("a", 0.9, {"t": "x"}, {"v": [1.0]})
    e.fields["t"] = "changed"
    e.vectors["w"] = [2.0]
    assert (d.score, d.fields, d.vectors) == (0.1, {"t": "x"}, {"v": [1.0]})
    assert d._replace(id="b", fields={"u": 1}).fields == {"u": 1}
    with pytest.raises(TypeError, match="nope"):
        d._replace(nope=1)


def _reference_estimate(text: str) -> int:
    """The unit-by-unit definition the fast estimator must equal."""
    from rerank_cache.planning import _UNIT, _unit_tokens

    return sum(_unit_tokens(m.group()) for m in _UNIT.finditer(text))


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200) | st.sampled_from(["a\u2003b", "x\x1cy", "\U0001f600!", "\ud800"]))
def test_fast_estimate_equals_definition(text: str) -> None:
    """The fast estimator counts exactly what the unit-by-unit definition counts."""
    assert estimate_tokens(text) == _reference_estimate(text)


# Pieces that meet at every class boundary the estimator counts across: letter runs of each
# length modulo three, lone and repeated spaces next to other whitespace, control characters
# that str.isspace() calls space, "?" (what non-ASCII characters are classed with), CJK,
# astral characters and a lone surrogate.
_PIECES = ["a", "bc", "def", "ghij", " ", "  ", "\n", "\t ", "\r\n\n", "\x1c", "\x00", "7", "?"]
_PIECES += ["é", "向", "\U0001f600", "\ud800", "\x7f", "Z"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=60).map("".join))
def test_estimate_equals_definition_across_class_boundaries(text: str) -> None:
    """Texts built from pieces at every class boundary: still exactly the definition, and
    never below the server's count."""
    assert estimate_tokens(text) == _reference_estimate(text)
    assert estimate_tokens(text) >= count_tokens(text)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("abc", 1),
        ("abcd", 2),
        ("abcdefg hi", 4),
        ("a b", 2),  # a lone space is free
        ("a  b", 3),  # two spaces are one token
        ("a\nb", 3),  # any other whitespace costs
        ("a     b", 4),  # five spaces: ceil(5 / 4)
        ("\x1c", 1),  # str.isspace() says space; the definition says control character
        ("?é", 2),
        ("\U0001f600", 2),
        ("\ud800", 1),
    ],
)
def test_estimate_known_values(text: str, tokens: int) -> None:
    """Hand-counted values, each equal to the definition."""
    assert estimate_tokens(text) == tokens == _reference_estimate(text)


def _reference_trim(text: str, max_tokens: int) -> str:
    """The walk over every unit from the start, which trim_to_tokens must equal."""
    from rerank_cache.planning import _LETTERS_PER_TOKEN, _UNIT, _unit_tokens

    used = 0
    for match in _UNIT.finditer(text):
        unit = match.group()
        cost = _unit_tokens(unit)
        if used + cost > max_tokens:
            end = match.start()
            if unit[0].isascii() and unit[0].isalpha():
                end += max((max_tokens - used) * _LETTERS_PER_TOKEN, 0)
            return text[:end].rstrip()
        used += cost
    return text


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(["word", "a", " ", "  ", "\n", "42", "!", "向", "\x01", "xyzzy"]),
        max_size=200,
    ).map("".join),
    st.integers(min_value=1, max_value=120),
)
def test_trim_equals_the_full_walk(text: str, budget: int) -> None:
    """Starting the walk from a guess gives exactly the cut of walking from the start."""
    assert trim_to_tokens(text, budget) == _reference_trim(text, budget)


class _BadStr(str):
    """A field value whose own methods raise (a caller's str subclass gone wrong)."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    def strip(self, chars: str | None = None) -> str:
        raise RuntimeError("no text for you")


class _RaisingField:
    id = "r"

    def field(self, name: str) -> object:
        raise RuntimeError(f"cannot read {name}")


_ODD_ENTRIES = st.one_of(
    st.builds(lambda v: Doc(v, fields={"t": "x"}), st.lists(st.integers(), max_size=2)),
    st.builds(lambda v: Doc(v, fields={"t": "x"}), st.dictionaries(st.text(max_size=2), st.none())),
    st.builds(lambda v: Doc(v, fields={"t": "x"}), st.sets(st.integers(), max_size=2)),
    st.integers(),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.just(object()),
    st.just(_RaisingField()),
    st.builds(lambda: Doc("s", fields={"t": _BadStr("text")})),
)


@settings(max_examples=150, deadline=None)
@given(
    before=st.integers(min_value=0, max_value=3),
    odd=_ODD_ENTRIES,
    as_dict=st.booleans(),
)
def test_odd_entries_are_configuration_errors_naming_their_place(
    before: int, odd: object, as_dict: bool
) -> None:
    """Anything in a list that is not a usable document is a ConfigurationError saying where."""
    docs = [Doc(f"ok{i}", fields={"t": f"text {i}"}) for i in range(before)] + [odd]
    results: object = {"first": docs} if as_dict else [[], docs]
    place = f"query_results['first'][{before}]" if as_dict else f"query_results[1][{before}]"
    with pytest.raises(ConfigurationError) as info:
        collect(results, "t", GTE)
    assert str(info.value).startswith(place)
