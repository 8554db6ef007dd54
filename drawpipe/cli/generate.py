"""Generate the dataset's images with Draw Things' txt2img, resumably, on one or more Macs.

Examples:
  python generate.py                                   # asks nation, category, count
  printf '12\\nfamily\\n3\\ndone\\n' | python generate.py
  python generate.py --add France:family:10 --add Japan:working:10 --root /path/to/share
  python generate.py --queue prompts/example_queue.json --dry-run
  python generate.py --queue q.json --server http://10.0.0.5:7860 --server http://127.0.0.1:7860
  python generate.py --add Japan:family:2 --set steps=40 --set sampler="DPM++ SDE Karras"
  python generate.py --queue q.json --server grpcs://gpu-box:7859 --shared-secret-env DT_SECRET
"""

import argparse
import sys
from pathlib import Path

from drawpipe import bundled
from drawpipe.cli.common import (CommonSettings, PlanWords, job_states, local_takes,
                                 notice_printer, print_plan, resolve_settings, run_and_summarise,
                                 script_main, warning_printer)
from drawpipe.cli.options import add_setting_arguments
from drawpipe.drawthings.payloads import parse_override
from drawpipe.layout import GENERATIONS_FOLDER
from drawpipe.settings import GLANCE, QUARANTINE, RUN, SERVER, SHARE
from drawpipe.stages.generate import GenerateStage, load_template, with_overrides
from drawpipe.stages.prompts import (ask_queue, format_queue, load_prompt_sets, load_queue,
                                     merge_queue, parse_add, queue_repeats)

# drawpipe/settings.py: the flags it takes
SETTINGS = ("seed_offset",) + SHARE + RUN + SERVER + QUARANTINE + GLANCE


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queue", action="append", metavar="FILE",
                        help='JSON list of {"nation", "category", "count"}; repeatable')
    parser.add_argument("--add", action="append", metavar="NATION:CATEGORY:COUNT",
                        help="queue one entry; repeatable")
    add_setting_arguments(parser, ("seed_offset",))
    parser.add_argument("--payload", metavar="FILE", help="txt2img template "
                        "(default payloads/txt2img.json)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one key of the template (a Draw Things API key; VALUE "
                             "is JSON or text); repeatable. Images already made are not redone")
    parser.add_argument("--prompts", metavar="FILE", help="prompt sets "
                        "(default prompts/variable_sets.json)")
    parser.add_argument("--list-nations", action="store_true", help="print the nations and exit")
    add_setting_arguments(parser, SHARE + RUN + SERVER + QUARANTINE + GLANCE)
    return parser.parse_args(argv)


def run(args, project_dir: Path, stdin=None, stdout=None) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    settings = resolve_settings(args, project_dir, SETTINGS, stdin, stdout)
    prompt_sets = load_prompt_sets(Path(args.prompts) if args.prompts
                                   else bundled.PROMPT_SETS)
    template = load_template(Path(args.payload) if args.payload else bundled.TXT2IMG_TEMPLATE)
    template = with_overrides(template, [parse_override(text) for text in args.set or []])
    warn = warning_printer()
    for line in template.warnings:
        warn(line)

    if args.list_nations:
        for number, nation in enumerate(prompt_sets.nations, 1):
            print(f"{number:3d}. {nation}", file=stdout)
        return 0
    queue = []
    for queue_file in args.queue or []:
        queue += load_queue(Path(queue_file), prompt_sets)
    queue += [parse_add(spec, prompt_sets) for spec in args.add or []]
    if not queue:
        queue = ask_queue(prompt_sets, stdin, stdout)  # says so of repeats as they come
    else:
        for line in queue_repeats(queue):
            print(line, file=stdout)
    queue = merge_queue(queue)
    print(format_queue(queue), file=stdout)

    takes = local_takes(settings.root)
    stage = GenerateStage(settings.root, queue, prompt_sets, template,
                          settings.server_settings, settings.seed_offset, warn, takes,
                          notice_printer())
    if template.overrides:
        print("overrides: " + ", ".join(f"--set {o.text}" for o in template.overrides),
              file=stdout)
    if settings.dry_run:
        return _print_generate_plan(stage, settings, stdout)
    verdicts = takes.reload()
    verdicts.check_images(lambda image: (settings.root / image).exists())
    for line in verdicts.problems:
        warn(line)
    summary = run_and_summarise(stage, settings, takes, stdout)
    print(f"images are in {settings.root / GENERATIONS_FOLDER}", file=stdout)
    return summary.exit_code


def _print_generate_plan(stage: GenerateStage, settings: CommonSettings, out) -> int:
    """Per queue entry: to make, to re-make (rejected in review), done, claimed by whom;
    then a total."""
    groups = [(f"{item.nation}/{item.category}", jobs,
               job_states(settings.root, stage, jobs, settings.lease_seconds))
              for item, jobs in stage.jobs_by_entry()]

    def explain_redo(job) -> str:
        take = stage.takes.take_there(job.key)
        return (f"rejected in review: take {take} will be set aside to REJECTED/ (with what "
                f"upscale.py and segment.py made of it) and re-made as take {take + 1}")

    words = PlanWords("make", "claimed by other workers", "to re-make (rejected in review)",
                      explain_redo)
    counts = print_plan(groups, words, out)
    remakes = f" ({counts.redo} of them re-made: rejected in review)" if counts.redo else ""
    print(f"dry run: {counts.to_do} image(s) to make into {settings.root / GENERATIONS_FOLDER}"
          f"{remakes}; nothing was sent", file=out)
    return 0


def main(argv=None, project_dir: Path | None = None) -> int:
    """generate.py (and drawpipe-generate): see cli.common.script_main."""
    return script_main(run, parse_arguments, argv, project_dir)
