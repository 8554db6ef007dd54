"""The HTML pages' templates: one Jinja2 environment for the report and the review page.

    render(template_name, **context)   the page as a string
    anchor(prefix, key)                an HTML id made of an image key
    meta_view(entry)                   what the gallery shows of an image's PNG metadata
    cutout_names(entry, cutout, k)     a cut-out tile's name, hover text and alt text
    cutouts_caption(entry, seconds)    "8 cut-outs · 12.5 s · 2 left out as background: sky, wall"
    counted(n, noun)                   "1 image", "3 images": a count as pages and lines say it
                                       (the templates' ``counted`` filter too)

Templates live in ``drawpipe/templates/``: ``base.html`` (the page frame, the shared
``style.css`` inlined so a page needs no other file), ``gallery.html`` (macros for an
image's generated, upscaled and cut-out pictures and its metadata, used by both
pages), ``report.html`` (the report's index), ``nation.html`` (a nation's images) and
``review.html`` (+ ``review.js``, inlined).

Autoescaping is on for every template: a prompt or an error message holding ``<`` or
``"`` is shown as text, never read as markup. The ``url`` filter percent-encodes a
path for ``src``/``href`` (spaces, ``#``, ``?`` in file names), keeping ``/``.
"""

import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def url_path(relative: str) -> str:
    return quote(str(relative), safe="/")


def anchor(prefix: str, key: str) -> str:
    """An HTML id from ``key``: "i-France-family-France_family_1"."""
    return prefix + re.sub(r"[^A-Za-z0-9_-]", "-", key)


def counted(n: int, noun: str) -> str:
    """3, "row" -> "3 rows"; 1, "row" -> "1 row" (thousands with commas)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def meta_view(entry) -> dict:
    """{name, facts, prompt, negative_prompt} of an image (inventory.ImageEntry) from
    its PNG metadata: what templates/gallery.html shows under each image."""
    meta = entry.meta
    facts = [f"take {meta['take']}" if meta.get("take") else None,
             f"seed {meta['seed']}" if meta.get("seed") else None, meta.get("model"),
             meta.get("size"), f"{meta['steps']} steps" if meta.get("steps") else None,
             meta.get("sampler"), f"CFG {meta['cfg_scale']}" if meta.get("cfg_scale") else None]
    return {"name": entry.name, "facts": [fact for fact in facts if fact],
            "prompt": meta.get("prompt", ""), "negative_prompt": meta.get("negative_prompt", "")}


def cutout_names(entry, cutout, number: int) -> dict:
    """{name, title, alt} of a cut-out tile (inventory.ImageEntry, its ImageFile, its
    number): the label segment.py --label gave it ("chair", "chair?" when the model did
    not trust it), the label in full on hover; only ``alt`` for a cut-out without one."""
    label = entry.cutout_labels.get(cutout.path)
    if not label or not label.get("name"):
        return {"name": "", "title": "", "alt": f"cut-out {number}"}
    name = label["name"] if label.get("trusted") else f"{label['name']}?"
    title = name
    if isinstance(label.get("score"), (int, float)):
        title += f" {label['score']:.2f}"
        if label.get("runner_up") and isinstance(label.get("runner_up_score"), (int, float)):
            title += f" (runner-up: {label['runner_up']} {label['runner_up_score']:.2f})"
    return {"name": name, "title": title, "alt": f"cut-out {number}: {name}"}


def cutouts_caption(entry, seconds: str = "") -> str:
    """Under an image's cut-outs: how many, the time it took, and the objects named as
    background and left out (segment.py --label)."""
    caption = counted(len(entry.cutouts), "cut-out") + (f" · {seconds}" if seconds else "")
    if entry.background:
        names = ", ".join(sorted(set(entry.background)))
        caption += f" · {len(entry.background)} left out as background: {names}"
    return caption


@lru_cache(maxsize=1)
def environment():
    import jinja2  # imported when a page is made, not by every script

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every template, .html, .css and .js alike
        trim_blocks=False,
        keep_trailing_newline=True,
    )
    env.filters["url"] = url_path
    env.filters["counted"] = counted
    return env


def render(template_name: str, **context) -> str:
    return environment().get_template(template_name).render(**context)
