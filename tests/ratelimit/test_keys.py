"""Counter keys are injective: distinct (domain, descriptor) pairs never share a counter (property + fuzz)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from ratelimit_service.decision import DescriptorInput, plan
from ratelimit_service.keys import MAX_PLAIN_BASE, cluster_tag, counter_base, split, window
from ratelimit_service.limits import LimitTable, Node
from tests.ratelimit.helpers import T0

# Separators, escapes and braces are what an encoding gets wrong: draw them often, and any text too.
TRICKY = st.text(alphabet=st.sampled_from("ab_\\#:{}-"), max_size=8)
PART = st.one_of(TRICKY, st.text(max_size=12))
ENTRIES = st.lists(st.tuples(PART, PART), min_size=1, max_size=4).map(tuple)
DESCRIPTOR = st.tuples(PART.filter(bool), ENTRIES)
WINDOW = st.one_of(st.integers(min_value=0, max_value=2**40).map(str), st.just("tb")).flatmap(
    lambda start: st.sampled_from(["", ":minute", ":hour"]).map(lambda suffix: window(start, suffix)))


def test_the_issue_example_no_longer_collides() -> None:
    # Issue 11: one client's `tier=free_user_id_X, user_id=x` shared a counter with another's
    # `tier=free, user_id=X_user_id_x` (envoyproxy/ratelimit's cache_key.go joins with `_` unescaped).
    one = counter_base("outrider", (("tier", "free_user_id_X"), ("user_id", "x")))
    other = counter_base("outrider", (("tier", "free"), ("user_id", "X_user_id_x")))
    assert one != other


@settings(max_examples=400, deadline=None)
@given(DESCRIPTOR, DESCRIPTOR, WINDOW, WINDOW)
def test_distinct_descriptors_never_share_a_counter(a: tuple, b: tuple, wa: str, wb: str) -> None:
    (domain_a, entries_a), (domain_b, entries_b) = a, b
    key_a = counter_base(domain_a, entries_a) + wa
    key_b = counter_base(domain_b, entries_b) + wb
    if (domain_a, entries_a, wa) != (domain_b, entries_b, wb):
        assert key_a != key_b
    else:
        assert key_a == key_b


def _cut(text: str, cuts: list[int]) -> tuple[str, tuple[tuple[str, str], ...]]:
    pieces, last = [], 0
    for at in sorted(cuts):
        pieces.append(text[last:at])
        last = at + 1
    pieces.append(text[last:])
    return pieces[0], tuple(zip(pieces[1::2], pieces[2::2], strict=True))


@st.composite
def same_joined_text(draw: st.DrawFn) -> tuple[tuple, tuple]:
    """Two descriptors made by cutting one text at different `_`: the pairs a plain `_` join confuses."""
    text = draw(st.text(alphabet=st.sampled_from("a_\\"), min_size=5, max_size=16))
    seps = [i for i, c in enumerate(text) if c == "_"]
    even = st.integers(min_value=1, max_value=max(1, len(seps) // 2)).map(lambda n: 2 * n)
    n = draw(even.filter(lambda n: n <= len(seps))) if len(seps) >= 2 else 0
    if n == 0:
        return ("d", (("k", text),)), ("d", (("k", text),))
    first = draw(st.lists(st.sampled_from(seps), min_size=n, max_size=n, unique=True))
    second = draw(st.lists(st.sampled_from(seps), min_size=n, max_size=n, unique=True))
    return _cut(text, first), _cut(text, second)


@settings(max_examples=300, deadline=None)
@given(same_joined_text())
def test_descriptors_that_join_to_the_same_text_keep_apart(pair: tuple[tuple, tuple]) -> None:
    (domain_a, entries_a), (domain_b, entries_b) = pair
    same = (domain_a, entries_a) == (domain_b, entries_b)
    assert (counter_base(domain_a, entries_a) == counter_base(domain_b, entries_b)) == same


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.tuples(DESCRIPTOR, DESCRIPTOR), same_joined_text()))
def test_the_planner_gives_distinct_descriptors_distinct_counters(pair: tuple[tuple, tuple]) -> None:
    """The same through plan(): a limit sent with the descriptor applies to any entries of a known domain."""
    a, b = pair
    (domain_a, entries_a), (domain_b, entries_b) = a, b
    table = LimitTable({domain_a: Node(), domain_b: Node()})
    keys = []
    for domain, entries in (a, b):
        laid_out = plan(table, domain, [DescriptorInput(entries, 1, (10, "minute"))], T0)
        keys.append(laid_out.checks[0].keys[0])
    assert (keys[0] == keys[1]) == ((domain_a, entries_a) == (domain_b, entries_b))


@settings(max_examples=1000, deadline=None)
@given(PART.filter(bool), ENTRIES, WINDOW)
def test_fuzz_the_key_encoder_reads_back_exactly(domain: str, entries: tuple, win: str) -> None:
    """Fuzz target: any parts encode without error and decode to exactly what went in (or to the digest
    form, whose odd token count no plain key has)."""
    key = counter_base(domain, entries) + win
    parts = split(key)
    flat = [domain, *[x for entry in entries for x in entry], win]
    if len(parts) == 3:  # digested: a plain key has 2 + 2n parts, n >= 1
        assert parts[0] == domain and parts[1].startswith("#") and len(parts[1]) == 65 and parts[2] == win
    else:
        assert parts == flat
        assert len(parts) % 2 == 0


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=300, max_size=2000))
def test_a_huge_value_gives_a_bounded_key(value: str) -> None:
    key = counter_base("outrider", (("user_id", value),))
    assert len(key) < MAX_PLAIN_BASE
    assert key != counter_base("outrider", (("user_id", value + "x"),))


@settings(max_examples=300, deadline=None)
@given(PART, PART.filter(bool), PART.filter(bool), ENTRIES, ENTRIES)
def test_cluster_tags_keep_a_domain_in_one_slot_and_stay_injective(prefix: str, domain: str, other: str,
                                                                   e1: tuple, e2: tuple) -> None:
    tag = cluster_tag(prefix, domain)
    k1, k2 = tag + counter_base(domain, e1) + "1", tag + counter_base(domain, e2) + "1"
    # Redis Cluster hashes what lies between the first `{` and the first `}` after it: the whole tag.
    assert k1.index("}") == len(tag) - 1 and len(tag) > 2
    assert key_slot(k1.encode()) == key_slot(k2.encode())
    if other != domain:
        assert cluster_tag(prefix, other) != tag
