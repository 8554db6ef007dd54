"""drawpipe: resumable batch scripts over Draw Things' HTTP API (sdapi).

The layers, lowest first. A module imports modules of lower layers and of its own
package; packages of one layer do not import each other (the base modules may);
the entry points may import anything. tests/test_architecture.py reads this table
and holds the code to it:

  layer         modules
  base          errors, files, png, layout, settings, pages, bundled
  services      engine, drawthings, sam
  inventory     inventory
  curate        curate
  stages        stages
  report        report
  command line  cli
  entry points  __main__, review, export, report.__main__, demo, simulator, status

What each holds:

  errors        the exceptions a user sees, one line each, with their exit codes
  files, png    atomic writes and "done" checks; PNG chunks without decoding
  layout        the share's folders and file names
  settings      every setting once: flag, profile key, default, unit, help
  pages         the HTML templates (templates/) of the report and the review page
  bundled       the shipped payload templates, recipes and prompt sets
  engine/       the job loop, claims, the share guard, stop signals, metrics; status and
                control files on the share, quarantine of servers, messages
  drawthings/   the API table and its rules, the HTTP and gRPC clients (backends.py
                chooses by the URL), templates, the simulators
  sam/          Segment Anything: settings, models, the lean mask generator, cut-outs
  inventory     what is on a share: images, cut-outs, metadata, verdict files, logs
  curate/       verdicts, takes (rejects re-made, stale outputs, the seed), quality
                signals, the review page, the export
  stages/       generate (+ prompts), upscale (recipes), segment; server (what the two
                stages that talk to Draw Things share)
  report/       figures, gallery, contact sheets, the per-image table, the night at a glance
  cli/          every command's options and main; the drawpipe command; profiles; dry runs
  __main__, review, export, report.__main__, demo, simulator, status   python -m entry points
"""

__version__ = "0.1.0"
