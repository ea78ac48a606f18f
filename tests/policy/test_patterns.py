"""Domain patterns and normalization (SPEC.md section 2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpgate.policy import DomainPattern, PatternError, PatternKind, normalize_domain


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Example.COM", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.Example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("example.com.", "example.com"),
        ("", ""),
        # Undecodable input falls back to lower case instead of raising.
        ("Under_Score.example", "under_score.example"),
        ("bü_x.Example", "bü_x.example"),
        ("[192.0.2.1]", "[192.0.2.1]"),
    ],
)
def test_normalize_domain(raw: str, normalized: str) -> None:
    assert normalize_domain(raw) == normalized


def test_star_matches_everything_including_null_sender() -> None:
    star = DomainPattern.parse("*")
    assert star.kind is PatternKind.ANY
    assert all(star.matches(d) for d in ("", "example.com", "a.b.c", "[192.0.2.1]"))


def test_null_sender_matched_only_by_star() -> None:
    for text in ("example.com", "*.example.com", "a"):
        assert not DomainPattern.parse(text).matches("")


def test_exact_pattern_matches_only_that_domain() -> None:
    pattern = DomainPattern.parse("example.com")
    assert pattern.matches("example.com")
    assert not pattern.matches("mail.example.com")
    assert not pattern.matches("example.com.evil")
    assert not pattern.matches("notexample.com")


def test_subdomain_pattern_excludes_the_domain_itself() -> None:
    pattern = DomainPattern.parse("*.example.com")
    assert pattern.matches("mail.example.com")
    assert pattern.matches("a.b.example.com")
    assert not pattern.matches("example.com")
    assert not pattern.matches("badexample.com")
    assert not pattern.matches(".example.com")


def test_idna_forms_are_the_same_pattern() -> None:
    unicode_form = DomainPattern.parse("bücher.example")
    a_label = DomainPattern.parse("xn--bcher-kva.example")
    for pattern in (unicode_form, a_label):
        assert pattern.matches(normalize_domain("bücher.example"))
        assert pattern.matches(normalize_domain("XN--BCHER-KVA.EXAMPLE"))
    assert DomainPattern.parse("*.bücher.example").matches("mx.xn--bcher-kva.example")


def test_uppercase_pattern_matches_lowercase_domain_and_keeps_text() -> None:
    pattern = DomainPattern.parse("*.EXAMPLE.Com")
    assert pattern.matches(normalize_domain("MX.Example.COM"))
    assert pattern.text == "*.EXAMPLE.Com"
    assert str(pattern) == "*.EXAMPLE.Com"


def test_pattern_length_limit_is_200_characters() -> None:
    # 200 characters, valid labels of at most 63.
    labels = ["a" * 63, "b" * 63, "c" * 63, "d" * 8]
    text_200 = ".".join(labels)
    assert len(text_200) == 200
    assert DomainPattern.parse(text_200).matches(text_200)
    with pytest.raises(PatternError, match="longer than 200"):
        DomainPattern.parse(text_200 + "e")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("*.", "no domain"),
        ("**", r"'\*' is allowed only"),
        ("*.*.example.com", r"'\*' is allowed only"),
        ("mail.*.example", r"'\*' is allowed only"),
        ("a*.example", r"'\*' is allowed only"),
        ("example.*", r"'\*' is allowed only"),
        ("exa mple.com", "not a valid domain"),
        ("under_score.example", "not a valid domain"),
        ("-dash.example", "not a valid domain"),
        ("a..b", "not a valid domain"),
        ("xn--zz.example", "not a valid domain"),
        ("a" * 64 + ".example", "not a valid domain"),
        (" example.com", "white space"),
        ("[192.0.2.1]", "not a valid domain"),
    ],
)
def test_malformed_patterns_are_rejected(text: str, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        DomainPattern.parse(text)


def test_pattern_error_is_a_value_error() -> None:
    assert issubclass(PatternError, ValueError)


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join)


def _random_case(text: str, flips: list[bool]) -> str:
    return "".join(
        c.upper() if f else c for c, f in zip(text, flips + [False] * len(text), strict=False)
    )


@given(_domain, st.lists(st.booleans(), max_size=100), st.lists(st.booleans(), max_size=100))
def test_exact_pattern_matches_itself_in_any_case(
    domain: str, pattern_case: list[bool], domain_case: list[bool]
) -> None:
    pattern = DomainPattern.parse(_random_case(domain, pattern_case))
    assert pattern.matches(normalize_domain(_random_case(domain, domain_case)))


@given(_domain, _label)
def test_subdomain_pattern_matches_children_not_parent(domain: str, child: str) -> None:
    pattern = DomainPattern.parse("*." + domain)
    assert pattern.matches(f"{child}.{domain}")
    assert not pattern.matches(domain)
    assert not pattern.matches(child + domain)


@given(st.text(max_size=80))
def test_normalize_never_raises(raw: str) -> None:
    assert isinstance(normalize_domain(raw), str)


_unicode_label = st.text(alphabet="abcxyzäöüßéñ", min_size=1, max_size=15)


@given(st.lists(_unicode_label, min_size=1, max_size=3).map(".".join))
def test_normalized_domain_is_a_fixed_point_and_matches_its_pattern(domain: str) -> None:
    once = normalize_domain(domain)
    assert normalize_domain(once) == once
    assert once.isascii()
    assert DomainPattern.parse(domain).matches(once)
