"""drawpipe: resumable batch scripts over Draw Things' HTTP API (sdapi).

Modules, one job each:
  errors      the exception hierarchy and exit codes
  drawthings  what Draw Things' HTTP API accepts: keys, aliases, ranges
  sdapi       the HTTP client (one session, timeouts, retries, PNG checks)
  simulator   a local stand-in for Draw Things' HTTP API
  payloads    payload templates: load, validate, merge
  prompts     prompt sets and the generation queue
  claims      shared-folder work claims (exclusive create, heartbeat, take-over)
  stage       the shared job loop (scan, claim, run, atomic write, metrics, progress)
  metrics     CPU/RAM sampling and the per-host CSV logs
  pngmeta     PNG text chunks written without re-encoding
  config      drawpipe.toml profiles
  cli, commands   the scripts' edge: options, profiles, each script's body
  generation, upscaling, segmentation   the three stages
  mask_generator, cutouts, checkpoints  SAM without its waste; masks -> cut-outs; downloads
  report, report_stats, report_data, report_html   python -m drawpipe.report
  demo        make demo
"""

__version__ = "0.1.0"
