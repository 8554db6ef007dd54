"""Prompt sets and the generation queue.

Prompt sets (``prompts/variable_sets.json``): a JSON list of objects, one per
prompt variant, in the order they are used::

    {"nation": "South_Korea", "category": "family", "prompt": "a South Korean family ..."}

``nation`` and ``category`` become folder and file-name parts
(``GENERATIONS/<nation>/<category>/<nation>_<category>_<n>.png``), so they must be
safe folder names (see ``is_safe_folder_name``). ``prompt`` is the scene only: the
photographic style suffix and the SDXL settings live in the payload template.
Several entries for the same (nation, category) are variants used in turn.

The queue: a list of ``QueueItem(nation, category, count)``, meaning images
1..count of that (nation, category). It comes from three places, all resolved
against the prompt sets so only known nations and categories get in:

- ``--add NATION:CATEGORY:COUNT`` (``parse_add``), e.g. ``south-korea:family:3``;
- a queue file (``load_queue``): a JSON list of
  ``{"nation": "Japan", "category": "family", "count": 2}``;
- interactive answers (``ask_queue``), read line by line, so piped answers work.

Nations are matched case-insensitively with spaces, hyphens and underscores
equivalent, or by their 1-based number in the numbered list (``format_nations``).
Every error is a one-line ``UsageError`` (``InputFileError`` for files) naming the
file and the 1-based entry number.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

from drawpipe.drawthings.payloads import read_json_file
from drawpipe.errors import InputFileError, UsageError

CATEGORIES = ("family", "working")

# The prompt sets shipped with the project (present in a source checkout).

PROMPT_FIELDS = ("nation", "category", "prompt")
QUEUE_FIELDS = ("nation", "category", "count")

# Besides path separators and control characters: a share may be served by
# Windows or a NAS over SMB, which refuses these in file names.
_UNSAFE_CHARACTERS = frozenset('/\\:*?"<>|')

_JSON_TYPE_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    type(None): "null",
}

_DONE_ANSWERS = frozenset({"done"})
# What _ask returns instead of a value when there is none:
_DONE = object()  # the answer was 'done'
_END = object()  # the answers ran out


@dataclass(frozen=True)
class QueueItem:
    """Images 1..``count`` of (``nation``, ``category``); names are canonical."""

    nation: str
    category: str
    count: int


@dataclass(frozen=True)
class PromptSets:
    """The prompt variants by (nation, category), in file order.

    ``nations`` and ``categories``: unique, in order of first appearance.
    ``prompts_by_pair``: (nation, category) -> its variants, in file order.
    """

    path: Path
    nations: list[str]
    categories: list[str]
    prompts_by_pair: dict[tuple[str, str], list[str]]

    def variants(self, nation: str, category: str) -> list[str]:
        """The prompts of canonical (nation, category); UsageError if it has none."""
        try:
            return list(self.prompts_by_pair[(nation, category)])
        except KeyError:
            raise UsageError(
                f"{self.path} has no prompt for {nation} {category}: add one or choose "
                "another category"
            ) from None

    def prompt_for(self, nation: str, category: str, index: int) -> str:
        """The prompt of image ``index`` (1-based): the variants are used in turn."""
        if index < 1:
            raise ValueError(f"image index starts at 1, got {index}")
        variants = self.variants(nation, category)
        return variants[(index - 1) % len(variants)]

    def resolve_nation(self, text: str, listed_above: bool = False) -> str:
        """``"south korea"``, ``"South-Korea"`` or its list number -> ``"South_Korea"``.
        ``listed_above``: the numbered list was just printed (the interactive questions),
        so an unknown name points at it rather than at --list-nations."""
        answer = text.strip()
        if not answer:
            raise UsageError(f"no nation given (type a number 1-{len(self.nations)} or a name)")
        if answer.isascii() and answer.isdigit():
            number = int(answer)
            if 1 <= number <= len(self.nations):
                return self.nations[number - 1]
            raise UsageError(
                f"there is no nation number {number} (the list goes from 1 to {len(self.nations)})"
            )
        by_folded = {_fold(nation): nation for nation in self.nations}
        nation = by_folded.get(_fold(answer))
        if nation is not None:
            return nation
        close = difflib.get_close_matches(_fold(answer), list(by_folded), n=3, cutoff=0.6)
        if close:
            hint = "did you mean: " + ", ".join(by_folded[c] for c in close) + "?"
        elif listed_above:
            hint = f"choose one of the {len(self.nations)} above, by number or name"
        else:
            hint = f"generate.py --list-nations lists the {len(self.nations)}"
        raise UsageError(f"unknown nation '{answer}' ({hint})")

    def resolve_category(self, text: str) -> str:
        """``"Family"`` -> ``"family"``; same matching rules as nations, no numbers."""
        by_folded = {_fold(category): category for category in self.categories}
        category = by_folded.get(_fold(text))
        if category is None:
            raise UsageError(f"unknown category '{text.strip()}' (choose {_either(self.categories)})")
        return category


def is_safe_folder_name(name: str) -> bool:
    """True if ``name`` can be one folder or file-name part under an output root.

    Refused: empty, ``.``/``..``, a leading dot (hidden files), leading or trailing
    spaces, path separators, ``:``, characters SMB servers refuse, NUL and other
    control characters.
    """
    return (
        name != ""
        and not name.startswith(".")
        and name == name.strip()
        and not any(ch in _UNSAFE_CHARACTERS for ch in name)
        and not any(unicodedata.category(ch) == "Cc" for ch in name)
    )


def load_prompt_sets(path: str | Path, categories: Sequence[str] = CATEGORIES) -> PromptSets:
    """Read and check a prompt-sets file; raises InputFileError naming file and entry."""
    entries = _read_json_list(path, PROMPT_FIELDS)
    nations: list[str] = []
    used_categories: list[str] = []
    prompts_by_pair: dict[tuple[str, str], list[str]] = {}
    # folded nation -> (canonical spelling, entry number): two spellings of one
    # nation would make two folders and an ambiguous --add.
    first_spelling: dict[str, tuple[str, int]] = {}
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: entry {number}"
        nation, category, prompt = _fields(entry, PROMPT_FIELDS, where)
        for what, name in (("nation", nation), ("category", category)):
            _require_str(name, what, where)
            if not is_safe_folder_name(name):
                raise InputFileError(f"{where}: {what} {_quote(name)} cannot be used as a folder name")
        _require_str(prompt, "prompt", where)
        if nation.isascii() and nation.isdigit():
            raise InputFileError(
                f"{where}: nation {_quote(nation)} cannot be a number (numbers pick nations "
                "from the list)"
            )
        if category not in categories:
            raise InputFileError(
                f"{where}: unknown category {_quote(category)} (expected {_either(categories)})"
            )
        if not prompt.strip():
            raise InputFileError(f'{where}: "prompt" is empty')
        spelling, first_number = first_spelling.setdefault(_fold(nation), (nation, number))
        if spelling != nation:
            raise InputFileError(
                f"{where}: nation {_quote(nation)} is spelled {_quote(spelling)} in entry "
                f"{first_number}; use one spelling"
            )
        if nation not in nations:
            nations.append(nation)
        if category not in used_categories:
            used_categories.append(category)
        prompts_by_pair.setdefault((nation, category), []).append(prompt.strip())
    return PromptSets(Path(path), nations, used_categories, prompts_by_pair)


def parse_count(text: str) -> int:
    """``"3"`` -> 3; anything but a positive whole number is a UsageError."""
    answer = text.strip()
    if answer.isascii() and answer.isdigit() and int(answer) > 0:
        return int(answer)
    raise UsageError(f"count must be a positive integer, got '{answer}'")


def parse_add(spec: str, sets: PromptSets) -> QueueItem:
    """``"NATION:CATEGORY:COUNT"`` (e.g. ``"south korea:family:3"``) -> QueueItem."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise UsageError(
            f"expected NATION:CATEGORY:COUNT (e.g. France:family:3), got '{spec}'"
        )
    nation = sets.resolve_nation(parts[0])
    category = sets.resolve_category(parts[1])
    count = parse_count(parts[2])
    sets.variants(nation, category)  # raises if the file has no prompt for this pair
    return QueueItem(nation, category, count)


def load_queue(path: str | Path, sets: PromptSets) -> list[QueueItem]:
    """Read a queue file, a JSON list of ``{"nation", "category", "count"}``, in file order."""
    items = []
    for number, entry in enumerate(_read_json_list(path, QUEUE_FIELDS), start=1):
        where = f"{path}: entry {number}"
        nation, category, count = _fields(entry, QUEUE_FIELDS, where)
        _require_str(nation, "nation", where)
        _require_str(category, "category", where)
        # bool is an int in Python, but `true` is no count
        if type(count) is not int or count < 1:
            raise InputFileError(
                f"{where}: count must be a positive integer, got {json.dumps(count, ensure_ascii=False)}"
            )
        try:
            item = QueueItem(sets.resolve_nation(nation), sets.resolve_category(category), count)
            sets.variants(item.nation, item.category)
        except UsageError as error:
            raise InputFileError(f"{where}: {error}") from None
        items.append(item)
    return items


def merge_queue(items: Iterable[QueueItem]) -> list[QueueItem]:
    """One item per (nation, category), with the largest count, in order of first appearance.

    Counts are not added: count n means "images 1..n exist", so asking for 3 and
    then 5 means 5.
    """
    counts: dict[tuple[str, str], int] = {}
    for item in items:
        key = (item.nation, item.category)
        counts[key] = max(item.count, counts.get(key, 0))
    return [QueueItem(nation, category, count) for (nation, category), count in counts.items()]


def queue_repeats(items: Iterable[QueueItem]) -> list[str]:
    """A line for each (nation, category) asked for more than once, saying what
    merge_queue made of its counts: "France family asked for 2 and 5 images: 5 ..."."""
    counts: dict[tuple[str, str], list[int]] = {}
    for item in items:
        counts.setdefault((item.nation, item.category), []).append(item.count)
    return [f"{nation} {category}: {_merged_counts(given)}"
            for (nation, category), given in counts.items() if len(given) > 1]


def _merged_counts(given: list[int]) -> str:
    kept = max(given)
    asked = ", ".join(map(str, given[:-1])) + f" and {given[-1]}"
    return (f"asked for {asked} images: {kept} kept, images 1 to {kept}; a count is how many "
            "images there are, not how many to add")


def format_nations(sets: PromptSets, width: int = 80) -> str:
    """The numbered nation list in columns, numbered down each column like ``ls``."""
    number_width = len(str(len(sets.nations)))
    cells = [f"{n:>{number_width}}  {nation}" for n, nation in enumerate(sets.nations, start=1)]
    cell_width = max(len(cell) for cell in cells) + 2
    columns = max(1, width // cell_width)
    rows = -(-len(cells) // columns)
    lines = []
    for row in range(rows):
        line = "".join(cell.ljust(cell_width) for cell in cells[row::rows])
        lines.append(line.rstrip())
    return "\n".join(lines)


def format_queue(items: Sequence[QueueItem]) -> str:
    """A listing for the terminal, e.g.::

        Queue: 2 entries, 5 images
          Japan        family   2 images
          South_Korea  working  3 images
    """
    if not items:
        return "Queue: empty"
    total = sum(item.count for item in items)
    nation_width = max(len(item.nation) for item in items)
    category_width = max(len(item.category) for item in items)
    lines = [f"Queue: {_plural(len(items), 'entry', 'entries')}, {_plural(total, 'image')}"]
    for item in items:
        lines.append(
            f"  {item.nation:<{nation_width}}  {item.category:<{category_width}}  "
            f"{_plural(item.count, 'image')}"
        )
    return "\n".join(lines)


def ask_queue(sets: PromptSets, answers: TextIO, out: TextIO) -> list[QueueItem]:
    """Ask nation, category and count until 'done' or end of input; the merged queue.

    ``answers`` is read one line per question, so answers may be piped, e.g.
    ``printf '12\\nfamily\\n3\\ndone\\n'``. A bad answer prints the reason and the
    same question is asked again. End of input counts as 'done' once something is
    queued; with nothing queued, 'done' or end of input is a UsageError.
    """
    out.write(format_nations(sets) + "\n\n")
    items: list[QueueItem] = []
    category_question = f"Category ({'/'.join(sets.categories)}): "
    while True:
        nation = _ask("Nation (number or name, 'done' to finish): ",
                      lambda text: sets.resolve_nation(text, listed_above=True),
                      answers, out, done_allowed=True)
        if nation is _DONE:
            if items:
                break
            raise UsageError(
                "no images queued: choose a nation, a category and a number of images "
                "before 'done', or use --add NATION:CATEGORY:COUNT or --queue FILE"
            )
        if nation is _END:
            break
        category = _ask(category_question, lambda text: _category_with_prompts(sets, nation, text),
                        answers, out)
        count = _END if category is _END else _ask("Number of images: ", parse_count, answers, out)
        if count is _END:
            if items:
                out.write(f"  input ended before {nation} was complete; it is not queued\n")
            break
        earlier = [item.count for item in items if (item.nation, item.category) == (nation, category)]
        items.append(QueueItem(nation, category, count))
        out.write(f"  queued: {nation} {category}, {_plural(count, 'image')}"
                  + (f" ({_merged_counts([*earlier, count])})" if earlier else "") + "\n")
    if not items:
        raise UsageError(
            "no images queued: the input ended before a nation, a category and a number "
            "of images were given; answer the questions (or pipe the answers, e.g. "
            "printf 'France\\nfamily\\n3\\ndone\\n'), or use --add NATION:CATEGORY:COUNT "
            "or --queue FILE"
        )
    return merge_queue(items)


# ---------------------------------------------------------------- helpers

def _ask(question: str, parse: Callable[[str], Any], answers: TextIO, out: TextIO, done_allowed: bool = False) -> Any:
    """Ask until ``parse`` accepts an answer; _DONE or _END instead of a value."""
    while True:
        out.write(question)
        out.flush()  # the question must show before readline blocks
        line = answers.readline()
        if line == "":
            # Piped answers echo nothing, so end the question's line ourselves.
            out.write("\n")
            out.flush()
            return _END
        if done_allowed and line.strip().casefold() in _DONE_ANSWERS:
            return _DONE
        try:
            return parse(line.strip())
        except UsageError as error:
            out.write(f"  {error}\n")


def _category_with_prompts(sets: PromptSets, nation: str, text: str) -> str:
    """The category ``text`` names, if the prompt sets have a prompt for it with ``nation``."""
    category = sets.resolve_category(text)
    sets.variants(nation, category)
    return category


def _read_json_list(path: str | Path, fields: Sequence[str]) -> list:
    """The top-level JSON list of ``path``; InputFileError for anything else."""
    data = read_json_file(path)
    shape = "{" + ", ".join(f'"{field}"' for field in fields) + "}"
    if not isinstance(data, list):
        raise InputFileError(f"{path}: expected a JSON list of {shape} objects, got {_type_name(data)}")
    if not data:
        raise InputFileError(f"{path}: the list is empty; expected {shape} objects")
    return data


def _fields(entry: Any, fields: Sequence[str], where: str) -> list[Any]:
    """The values of ``fields`` in ``entry``, which must have exactly those keys."""
    if not isinstance(entry, dict):
        raise InputFileError(f"{where}: expected an object, got {_type_name(entry)}")
    for field in fields:
        if field not in entry:
            raise InputFileError(f'{where}: missing "{field}"')
    for key in entry:
        if key not in fields:
            expected = ", ".join(f'"{field}"' for field in fields)
            raise InputFileError(f"{where}: unknown key {_quote(key)} (expected {expected})")
    return [entry[field] for field in fields]


def _require_str(value: Any, field: str, where: str) -> None:
    if not isinstance(value, str):
        raise InputFileError(f'{where}: "{field}" must be a string')


def _fold(text: str) -> str:
    """The matching key of a name: case-folded, runs of spaces/hyphens/underscores -> "_"."""
    return re.sub(r"[\s_-]+", "_", text.strip()).casefold()


def _quote(name: str) -> str:
    # JSON quoting shows control characters as escapes, keeping the message on one line.
    return json.dumps(name, ensure_ascii=False)


def _type_name(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _either(names: Sequence[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b or c"``."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _plural(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"
