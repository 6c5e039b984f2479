"""Who may delegate to an agent: properties of the delegators matcher and may_act."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.identity.delegation import may_act_allows, may_delegate
from gateway.identity.idp import Human

ISSUER = "https://idp.example.com/"
local = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789.+-_"), min_size=1, max_size=12)
domain = st.from_regex(r"[a-z]{1,8}\.(com|org|example)", fullmatch=True)
email = st.builds(lambda name, d: f"{name}@{d}", local, domain)
entries = st.lists(
    st.one_of(email, st.builds(lambda d: f"*@{d}", domain), st.builds(lambda s: f"{ISSUER}|{s}", local)), max_size=5
)


def human(address: str | None, subject: str = "sub-1", may_act: object = None) -> Human:
    return Human(issuer=ISSUER, subject=subject, email=address, may_act=may_act)


@given(entries, local)
def test_nobody_without_a_verified_email_matches_an_email_entry(delegators, subject):
    email_entries = [e for e in delegators if "|" not in e]
    assert not may_delegate(email_entries, human(None, subject))


@given(email, email)
def test_an_exact_email_entry_admits_that_person_only(entry, address):
    assert may_delegate([entry], human(entry.upper()))
    assert may_delegate([entry], human(address)) == (entry.lower() == address.lower())


@given(local, domain, domain)
def test_a_domain_glob_admits_exactly_that_domain(name, allowed, other):
    assert may_delegate([f"*@{allowed}"], human(f"{name}@{allowed}"))
    assert may_delegate([f"*@{allowed}"], human(f"{name}@{other}")) == (allowed == other)
    assert not may_delegate([f"*@{allowed}"], human(f"{name}@sub.{allowed}"))


@given(local, local, email)
def test_an_iss_sub_entry_admits_that_subject_and_never_matches_by_email(subject, other, address):
    assert may_delegate([f"{ISSUER}|{subject}"], human(None, subject))
    assert may_delegate([f"{ISSUER}|{subject}"], human(address, other)) == (subject == other)
    assert not may_delegate([f"https://other.example/|{subject}"], human(address, subject))


@given(email)
def test_an_empty_allow_list_lets_nobody_delegate(address):
    assert not may_delegate([], human(address))


@given(
    st.one_of(st.none(), st.text(max_size=5), st.dictionaries(st.sampled_from(["sub", "iss"]), st.text(max_size=10)))
)
def test_may_act_allows_only_when_absent_or_naming_the_agent(may_act):
    expected = may_act is None or (isinstance(may_act, dict) and may_act.get("sub") == "helper-bot")
    assert may_act_allows(may_act, "helper-bot") == expected
