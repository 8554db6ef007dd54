"""The generate stage: a queue of (nation, category, count) -> txt2img PNGs.

Image n of (nation, category) is
``<root>/GENERATIONS/<Nation>/<category>/<Nation>_<category>_<n>.png``; its seed
comes from its file name, so every run and every Mac sends the identical request
for the same file, and asking for a larger count makes only the missing ones.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import drawthings
from .payloads import check_against_app, effective_parameters, fill_prompt
from .pngmeta import add_text_chunks, provenance_chunks
from .prompts import PromptSets, QueueItem
from .sdapi import ClientSettings, SdapiClient
from .stage import Job, JobResult, WorkerContext

GENERATIONS_FOLDER = "GENERATIONS"
SEED_LIMIT = 2**32  # Draw Things takes seeds 0..4294967295


def seed_for(name: str, offset: int = 0) -> int:
    """A stable seed from a file stem, e.g. ``France_family_3`` (plus ``offset``)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return (int.from_bytes(digest[:4], "big") + offset) % SEED_LIMIT


def image_name(nation: str, category: str, number: int) -> str:
    return f"{nation}_{category}_{number}.png"


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
                 on_warning: Callable[[str], None] | None = None):
        """``template``: checked, with any --set ``overrides`` (their texts, kept in each
        image's provenance) applied; ``on_warning(line)``: what the preflight finds the
        app would do without a word."""
        self.root = root
        self.template_source = template_source
        self.overrides = tuple(overrides)
        self.on_warning = on_warning
        self.queue = queue
        self.prompt_sets = prompt_sets
        self.template = template
        self.client_settings = client_settings
        self.seed_offset = seed_offset

    def plan(self) -> list[Job]:
        jobs = []
        folder = self.root / GENERATIONS_FOLDER
        for item in self.queue:
            for number in range(1, item.count + 1):
                name = image_name(item.nation, item.category, number)
                output = folder / item.nation / item.category / name
                prompt = self.prompt_sets.prompt_for(item.nation, item.category, number)
                jobs.append(Job(
                    key=output.relative_to(self.root).as_posix(),
                    output=output,
                    seed=seed_for(output.stem, self.seed_offset),
                    context=Planned(item.nation, item.category, number, prompt),
                ))
        return jobs

    def jobs_by_entry(self) -> list[tuple[QueueItem, list[Job]]]:
        """The plan grouped by queue entry, for --dry-run."""
        jobs = self.plan()
        grouped, start = [], 0
        for item in self.queue:
            grouped.append((item, jobs[start:start + item.count]))
            start += item.count
        return grouped

    def payload_for(self, job: Job) -> dict:
        payload = dict(self.template)
        payload["prompt"] = fill_prompt(self.template.get("prompt", ""), job.context.prompt)
        payload["seed"] = job.seed
        return payload

    def make_worker(self, server: str, context: WorkerContext):
        """Preflight the server (``GET /``) and return this worker's job runner."""
        client = SdapiClient(server, self.client_settings, sleep=context.sleep,
                             on_resend=context.resent)
        app_configuration = client.check_server()
        for line in check_against_app(self.template, self.template_source, app_configuration,
                                      server):
            if self.on_warning is not None:
                self.on_warning(line)
        expected_size = drawthings.output_size(
            effective_parameters(self.template, app_configuration))

        def run(job: Job, scratch: Path) -> JobResult:
            payload = self.payload_for(job)
            answer = client.generate("txt2img", payload, expected_size)
            png = add_text_chunks(answer.png,
                                  provenance_chunks(payload, overrides=list(self.overrides)))
            return JobResult(data=png, attempts=answer.attempts, extra={"server": server})

        return run
