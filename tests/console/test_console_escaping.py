"""Whatever an agent or a tool server chooses as text, the console's templates render it as that text."""

from __future__ import annotations

from html.parser import HTMLParser

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.console.auth import Operator
from gateway.console.catalog import DiffRow, ServerRow, ToolRow
from gateway.console.web import templates
from gateway.store.base import SessionRecord

ENV = templates()
OPERATOR = Operator("admin", "admin_token", "sid", "csrf-token", 0.0)
# Text as HTML would read it: no NUL, and CR or CRLF as the parser (like a browser) keeps them.
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00\r"), max_size=80)


class Cells(HTMLParser):
    """The text of every element with a given class, and every tag seen."""

    def __init__(self, wanted: str) -> None:
        super().__init__(convert_charrefs=True)
        self.wanted = wanted
        self.tags: list[str] = []
        self.found: list[str] = []
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if self._depth:
            self._depth += 1
        elif self.wanted in (dict(attrs).get("class") or "").split():
            self._depth = 1
            self.found.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth:
            self.found[-1] += data


def _parse(html: str, wanted: str) -> Cells:
    cells = Cells(wanted)
    cells.feed(html)
    cells.close()
    return cells


@given(task=TEXT, agent=TEXT, human=TEXT)
@example(task='<script>alert(1)</script><img src=x onerror="alert(2)">', agent='a"><b>', human="</td><td>")
def test_a_session_row_shows_agent_chosen_text_as_text(task, agent, human):
    session = SessionRecord(
        sid="s1",
        agent=agent,
        owner="o@example.com",
        on_behalf_of=human or None,
        task=task or None,
        grant_version="g",
        state="active",
        created_at=0.0,
        expires_at=1.0,
        max_expires_at=1.0,
        idle_timeout=1.0,
        last_seen=0.0,
    )
    html = ENV.get_template("_session_rows.html").render(
        base="/console", operator=OPERATOR, sessions=[session], now=0.0
    )
    cells = _parse(html, "task")
    assert cells.found == [task or "-"]
    assert _parse(html, "agent").found == [agent]
    assert not {"script", "img", "b"} & set(cells.tags)


@given(name=TEXT, before=TEXT, after=TEXT)
@example(name="<img src=x onerror=alert(1)>", before="</td></tr><script>x()</script>", after="<!--")
def test_a_quarantined_tools_name_and_definitions_render_as_text(name, before, after):
    tool = ToolRow(
        name or "t", "quarantined", "sha256:" + "0" * 64, "sha256:" + "1" * 64, [DiffRow("replace", before, after)]
    )
    html = ENV.get_template("tools.html").render(
        base="/console",
        operator=OPERATOR,
        page="tools",
        notice=None,
        require_pins=False,
        servers=[ServerRow("s", None, True, [tool])],
    )
    assert _parse(html, "name").found == [name or "t"]
    assert _parse(html, "pinned").found == [before]
    assert _parse(html, "served").found == [after]
    tags = _parse(html, "pinned").tags
    assert tags.count("script") == 1 and "img" not in tags  # the page's own script element only
