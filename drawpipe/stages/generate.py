"""The generate stage: a queue of (nation, category, count) -> txt2img PNGs.

Image n of (nation, category) is
``<root>/GENERATIONS/<Nation>/<category>/<Nation>_<category>_<n>.png``; its seed
comes from its file name, so every run and every Mac sends the identical request
for the same file, and asking for a larger count makes only the missing ones.

An image rejected in review (curate/verdicts.py) is not done: its job sets it aside into
REJECTED/ with what was made from it, and makes the next take, whose seed comes from
the file name and the take number (curate/takes.py).
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from drawpipe.curate.takes import Freshness, Rejections, recorded_take, set_aside, takes_set_aside
from drawpipe.drawthings import api as drawthings
from drawpipe.drawthings.client import ClientSettings, SdapiClient, sampled_process
from drawpipe.drawthings.payloads import effective_parameters, fill_prompt, preflight
from drawpipe.drawthings.provenance import provenance_chunks
from drawpipe.engine.jobs import Job, JobResult, WorkerContext
from drawpipe.layout import GENERATIONS_FOLDER, cutouts_path, image_name, upscaled_path
from drawpipe.png import add_text_chunks, read_text_chunks
from drawpipe.stages.prompts import PromptSets, QueueItem

SEED_LIMIT = 2**32  # Draw Things takes seeds 0..4294967295


def seed_for(name: str, offset: int = 0, take: int = 1) -> int:
    """A stable seed from a file stem, e.g. ``France_family_3`` (plus ``offset``); a
    later take of the same file gets its own (``France_family_3_take2``)."""
    text = name if take == 1 else f"{name}_take{take}"
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return (int.from_bytes(digest[:4], "big") + offset) % SEED_LIMIT


@dataclass(frozen=True)
class Planned:
    """A generate job's context: which queue entry and prompt variant."""

    nation: str
    category: str
    number: int
    prompt: str


class GenerateStage:
    name = "generate"
    extra_columns = ("server",)

    def __init__(self, root: Path, queue: list[QueueItem], prompt_sets: PromptSets,
                 template: dict, client_settings: ClientSettings, seed_offset: int = 0,
                 template_source: str = "the txt2img template", overrides: tuple[str, ...] = (),
                 on_warning: Callable[[str], None] | None = None,
                 freshness: Freshness | None = None,
                 on_notice: Callable[[str], None] | None = None):
        """``template``: checked, with any --set ``overrides`` (their texts, kept in each
        image's provenance) applied; ``on_warning(line)``: what the preflight finds the
        app would do without a word; ``freshness``: this Mac's hash cache (curate/takes.py);
        ``on_notice(line)``: a rejected take set aside."""
        self.root = root
        self.freshness = freshness or Freshness(None)
        self.on_notice = on_notice
        self.rejections: Rejections | None = None
        self._take_after_set_aside: dict[str, int] = {}  # job key -> the take to make
        self.template_source = template_source
        self.overrides = tuple(overrides)
        self.on_warning = on_warning
        self.queue = queue
        self.prompt_sets = prompt_sets
        self.template = template
        self.client_settings = client_settings
        self.seed_offset = seed_offset

    def plan(self) -> list[Job]:
        """Every image of the queue; ``seed``: the take a job would make now (the next
        one after those in REJECTED/, or after the one there if it is rejected)."""
        jobs = []
        folder = self.root / GENERATIONS_FOLDER
        self.rejections = Rejections(self.root, self.freshness)
        for item in self.queue:
            for number in range(1, item.count + 1):
                name = image_name(item.nation, item.category, number)
                output = folder / item.nation / item.category / name
                key = output.relative_to(self.root).as_posix()
                prompt = self.prompt_sets.prompt_for(item.nation, item.category, number)
                jobs.append(Job(
                    key=key,
                    output=output,
                    seed=seed_for(output.stem, self.seed_offset, self.next_take(key)),
                    context=Planned(item.nation, item.category, number, prompt),
                ))
        return jobs

    def is_current(self, job: Job) -> bool:
        """An image is done unless a reviewer rejected the take that is there."""
        return not self.rejections.is_rejected(job.key)

    def next_take(self, key: str) -> int:
        """The take a job for ``key`` makes: one after the rejected take there, else one
        after the takes set aside."""
        if self.rejections.is_rejected(key):
            return self._take_there(key) + 1
        return takes_set_aside(self.root, key) + 1

    def _take_there(self, key: str) -> int:
        try:
            recorded = recorded_take(read_text_chunks(self.root / key))
        except (OSError, ValueError):
            recorded = 1
        return max(recorded, takes_set_aside(self.root, key) + 1)

    def set_aside(self, job: Job) -> None:
        """Move the rejected take, and what upscale.py and segment.py made of it, into
        REJECTED/ (called with the job's claim held)."""
        take = self._take_there(job.key)
        self._take_after_set_aside[job.key] = take + 1
        upscaled = upscaled_path(self.root, job.output)
        moved = []
        for path in (job.output, upscaled, cutouts_path(self.root, upscaled)):
            target = set_aside(self.root, path.relative_to(self.root).as_posix(), take)
            if target is not None:
                moved.append(target.relative_to(self.root).as_posix())
        if self.on_notice is not None and moved:
            self.on_notice(f"rejected: {job.key} (take {take}) moved to {', '.join(moved)}; "
                           f"making take {take + 1}")

    def jobs_by_entry(self) -> list[tuple[QueueItem, list[Job]]]:
        """The plan grouped by queue entry, for --dry-run."""
        jobs = self.plan()
        grouped, start = [], 0
        for item in self.queue:
            grouped.append((item, jobs[start:start + item.count]))
            start += item.count
        return grouped

    def payload_for(self, job: Job, seed: int | None = None) -> dict:
        payload = dict(self.template)
        payload["prompt"] = fill_prompt(self.template.get("prompt", ""), job.context.prompt)
        payload["seed"] = job.seed if seed is None else seed
        return payload

    def process_to_sample(self, server: str) -> str | None:
        """Draw Things' process, when ``server`` is this machine."""
        return sampled_process(server, self.client_settings)

    def make_worker(self, server: str, context: WorkerContext):
        """Preflight the server (``GET /``) and return this worker's job runner."""
        client = SdapiClient(server, self.client_settings, sleep=context.sleep,
                             on_resend=context.resent, before_send=context.checkpoint)
        app_configuration = preflight(client, [(self.template, self.template_source)],
                                      self.on_warning)
        expected_size = drawthings.output_size(
            effective_parameters(self.template, app_configuration))

        def run(job: Job, scratch: Path) -> JobResult:
            # Under the claim, after any rejected take was set aside: the take to make.
            take = (self._take_after_set_aside.pop(job.key, None)
                    or takes_set_aside(self.root, job.key) + 1)
            seed = seed_for(job.output.stem, self.seed_offset, take)
            payload = self.payload_for(job, seed)
            answer = client.generate("txt2img", payload, expected_size)
            png = add_text_chunks(answer.png, provenance_chunks(
                payload, overrides=list(self.overrides), take=take))
            return JobResult(data=png, attempts=answer.attempts, extra={"server": server},
                             seed=seed)

        return run
