"""``--help`` with options in titled groups: a click Command subclass and a flag -> group map.

An option missing from the map (one added later) is listed under "Other options", so adding an
option never breaks the help; the order of groups is the map's, options keep their declaration order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import click

OTHER = "Other options"


class GroupedCommand(click.Command):
    """A click command whose ``--help`` lists options under group titles.

    ``groups`` is a sequence of (title, description, flags); a flag is any of an option's names
    (``--out`` for ``--out/-o``).
    """

    def __init__(self, *args: object, groups: Sequence[tuple[str, str, Sequence[str]]] = (),
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.groups = tuple(groups)

    def group_of(self, param: click.Parameter) -> str:
        """The title of the group listing ``param`` (``OTHER`` when no group names it)."""
        names = set(param.opts) | set(param.secondary_opts)
        for title, _, flags in self.groups:
            if names & set(flags):
                return title
        return OTHER

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: dict[str, list[tuple[str, str]]] = {title: [] for title, _, _ in self.groups}
        rows[OTHER] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                rows[self.group_of(param)].append(record)
        descriptions: Mapping[str, str] = {title: text for title, text, _ in self.groups}
        for title, records in rows.items():
            if not records:
                continue
            with formatter.section(title):
                if descriptions.get(title):
                    formatter.write_text(descriptions[title])
                formatter.write_dl(records)
