"""A DataTable updated by row key: live data without losing the operator's place."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from textual.binding import Binding
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist, RowKey


class KeyedTable(DataTable[Any]):
    """A row-cursor table whose rows are replaced by :meth:`sync`.

    ``columns`` is a list of ``(key, label, width)``; a width of None sizes the
    column to its content.
    """

    BINDINGS = [
        Binding("k", "cursor_up", "Up", show=False, id="table.up"),
        Binding("j", "cursor_down", "Down", show=False, id="table.down"),
    ]

    def __init__(self, columns: Sequence[tuple[str, str, int | None]], **kwargs: Any) -> None:
        kwargs.setdefault("cursor_type", "row")
        kwargs.setdefault("zebra_stripes", False)
        super().__init__(**kwargs)
        self._column_specs = list(columns)
        self._rendered_widths: list[int] = []

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        # Textual (8.2) caches rendered cells by the table's update count, not by the
        # widths of their columns: a row painted before the idle pass that measured it
        # (a busy console paints first) kept its cells cut to the old width ("While p")
        # until something else changed. New widths, cells rendered anew.
        super()._update_dimensions(new_rows)
        widths = [column.content_width for column in self.ordered_columns]
        if widths != self._rendered_widths:
            self._rendered_widths = widths
            self._update_count += 1
            self._clear_caches()
            self.refresh()

    def on_mount(self) -> None:
        for key, label, width in self._column_specs:
            self.add_column(label, key=key, width=width)

    @property
    def column_keys(self) -> list[str]:
        return [key for key, _, _ in self._column_specs]

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, or None when the table is empty."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None

    def keys(self) -> list[str]:
        return [str(row.key.value) for row in self.ordered_rows]

    def sync(self, rows: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Show exactly ``rows`` (key, cells) in this order.

        Rows that stayed are updated cell by cell, gone rows removed and new rows
        appended; only when the order of surviving rows changed (say a priority-1
        message arrived at the top) is the table rebuilt. The cursor stays on the
        row it was on, or at the same position when that row is gone.
        """
        cursor_key = self.cursor_key
        cursor_index = self.cursor_row
        wanted = [key for key, _ in rows]
        wanted_set = set(wanted)
        current = self.keys()
        survivors = [key for key in current if key in wanted_set]
        appended_only = survivors == wanted[: len(survivors)]
        with self.app.batch_update():
            if appended_only:
                for key in current:
                    if key not in wanted_set:
                        self.remove_row(key)
                columns = self.column_keys
                # Auto-sized columns must grow with longer values (a new last reply,
                # say); DataTable keeps a column's width on update_cell unless asked.
                auto = {key for key, _, width in self._column_specs if width is None}
                for key, cells in rows:
                    if key in self.rows:
                        old = self.get_row(key)
                        for column, before, after in zip(columns, old, cells, strict=False):
                            if before != after:
                                self.update_cell(key, column, after, update_width=column in auto)
                    else:
                        self.add_row(*cells, key=key)
            else:
                self.clear()
                for key, cells in rows:
                    self.add_row(*cells, key=key)
            self._restore_cursor(cursor_key, cursor_index)

    def _restore_cursor(self, key: str | None, index: int) -> None:
        if not self.row_count:
            return
        target = min(index, self.row_count - 1)
        if key is not None:
            try:
                target = self.get_row_index(key)
            except RowDoesNotExist:
                pass
        if target != self.cursor_row:
            self.move_cursor(row=target, animate=False, scroll=True)

    def select_key(self, key: str) -> bool:
        try:
            self.move_cursor(row=self.get_row_index(key), animate=False)
        except RowDoesNotExist:
            return False
        return True
