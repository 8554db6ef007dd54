"""python -m drawpipe.review: the real server on loopback (its own process), real
files made like generate.py's, driven in headless Chromium with Playwright.

The share holds France/family 1-4 (1 upscaled and cut out, 3 a blurred copy of
another picture) and Japan/working 1. The server runs as host "mac-a"; "mac-b" is
another Mac whose verdict file is written beside it, as on a shared folder.
"""

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from browser import LOAD_ALL_IMAGES, PageWatch, browser, skip_reason
from conftest import PROJECT_DIR, write_labelled_cutouts
from PIL import Image, ImageFilter

from drawpipe.curate.review import LISTENING
from drawpipe.curate.takes import seed_for, set_aside
from drawpipe.curate.verdicts import append_verdict, load_verdicts, reviews_path
from drawpipe.drawthings.provenance import provenance_chunks
from drawpipe.drawthings.simulator import encode_png, render_scene
from drawpipe.png import add_text_chunks

needs_browser = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
GEN = "GENERATIONS/{}.png".format
KEYS = ("France/family/France_family_1", "France/family/France_family_2",
        "France/family/France_family_3", "France/family/France_family_4",
        "Japan/working/Japan_working_1")
BLURRED = "France/family/France_family_3"


def write_generated(root: Path, key: str, picture: Image.Image) -> None:
    stem = key.rsplit("/", 1)[1]
    payload = {"prompt": f"a photo for {stem}", "negative_prompt": "blurry", "seed": seed_for(stem),
               "model": "sd_xl_base_1.0_f16.ckpt", "width": 1024, "height": 1024, "steps": 30,
               "sampler": "DPM++ 2M Karras"}
    path = root / GEN(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(add_text_chunks(encode_png(picture), provenance_chunks(payload)))


def build_share(root: Path) -> None:
    for number, key in enumerate(KEYS, 1):
        picture = render_scene(number, key, 1024, 1024)
        if key == BLURRED:
            picture = render_scene(7, "other", 1024, 1024).filter(ImageFilter.GaussianBlur(3))
        write_generated(root, key, picture)
    upscaled = root / "UPSCALED_IMAGES/France/family/France_family_1_upscaled.png"
    upscaled.parent.mkdir(parents=True)
    upscaled.write_bytes(encode_png(render_scene(1, KEYS[0], 256, 256)))
    cutouts = root / "CUTOUTS/France/family/France_family_1_upscaled"
    cutouts.mkdir(parents=True)
    for k in (1, 2):
        Image.new("RGBA", (40, 40), (200, 30 * k, 30, 255)).save(
            cutouts / f"France_family_1_upscaled_cutout_{k}.png")
    (cutouts / "cutouts.json").write_text(json.dumps({"cutouts": []}))


def sha256_of(root: Path, key: str) -> str:
    return hashlib.sha256((root / GEN(key)).read_bytes()).hexdigest()


class ReviewServer:
    """``python -m drawpipe.review`` in its own process; stopped (SIGTERM, then kill)."""

    def __init__(self, root: Path, cache_dir: Path, *args):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "drawpipe.review", "--root", str(root), "--port", "0",
             "--host-name", "mac-a", "--processes", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_DIR,
            env={**os.environ, "DRAWPIPE_CACHE_DIR": str(cache_dir)})
        self.lines = []
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith(LISTENING):
                self.url = line[len(LISTENING):].split()[0]
                break
        else:
            self.stop()
            raise AssertionError(f"no URL line: {self.lines} {self.process.stderr.read()}")
        parts = urlsplit(self.url)
        self.address = (parts.hostname, parts.port)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes]:
        """A raw request: the path is sent exactly as given (no ".." squashing)."""
        connection = http.client.HTTPConnection(*self.address, timeout=30)
        try:
            connection.putrequest(method, path, skip_host=True)
            headers = {"Host": f"{self.address[0]}:{self.address[1]}", **(headers or {})}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders(body)
            answer = connection.getresponse()
            return answer.status, answer.read()
        finally:
            connection.close()

    def post_verdict(self, **fields) -> tuple[int, dict]:
        status, body = self.request("POST", "/api/verdict", json.dumps(fields).encode(),
                                    {"Content-Type": "application/json"})
        return status, json.loads(body)

    def stop(self) -> str:
        """Stop it and return what it printed after the URL line."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        rest = self.process.stdout.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return rest


@pytest.fixture
def review_share(share) -> Path:
    build_share(share)
    return share


@pytest.fixture
def server(review_share, tmp_path):
    running = ReviewServer(review_share, tmp_path / "cache")
    try:
        yield running
    finally:
        running.stop()


def verdict_lines(root: Path, host: str = "mac-a") -> list[dict]:
    path = reviews_path(root, host)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def item(page, key: str):
    return page.locator(f'article[data-image="{GEN(key)}"]')


# --------------------------------------------------------------------------- in the browser


@needs_browser
def test_reject_and_accept_by_click_and_by_keyboard(server, review_share):
    root = review_share
    with browser() as chromium:
        page = chromium.new_page(viewport={"width": 1400, "height": 900})
        watch = PageWatch(page)
        page.goto(server.url)
        images = page.evaluate(LOAD_ALL_IMAGES)
        # 5 generated, 1 upscaled, 2 cut-outs: every one decoded.
        assert len(images) == 8 and all(width > 0 for _, width in images), images
        # The workers panel reads as a heading, not as an error (the cards' error line
        # is red): its colour is the other headings'.
        colours = page.evaluate(
            "[...document.querySelectorAll('h2')].map(h => getComputedStyle(h).color)")
        assert "no worker is running on this share" in page.locator("#workers").inner_text()
        assert len(colours) > 1 and len(set(colours)) == 1, colours

        # By mouse: a reason typed, then Reject; Accept on the next image.
        first = item(page, KEYS[0])
        first.locator("input.reason").fill("six fingers")
        first.locator("button.reject").click()
        page.wait_for_selector(f'article[data-image="{GEN(KEYS[0])}"].rejected')
        assert first.locator(".verdict").inner_text().startswith("rejected by mac-a, ")
        assert first.locator(".verdict").inner_text().endswith(" UTC: six fingers")
        item(page, KEYS[1]).locator("button.accept").click()
        page.wait_for_selector(f'article[data-image="{GEN(KEYS[1])}"].accepted')

        # By keyboard: the accept moved the selection to image 3; a accepts it and moves on.
        assert "current" in item(page, KEYS[2]).get_attribute("class")
        page.keyboard.press("a")
        page.wait_for_selector(f'article[data-image="{GEN(KEYS[2])}"].accepted')
        # Image 4 is current: r opens the reason, Enter rejects.
        page.keyboard.press("r")
        page.keyboard.type("wrong subject")
        page.keyboard.press("Enter")
        page.wait_for_selector(f'article[data-image="{GEN(KEYS[3])}"].rejected')
        # The reject moved on to image 5: k and the up arrow go back to image 3, j and the
        # left arrow forth and back again; r then Esc cancels.
        assert "current" in item(page, KEYS[4]).get_attribute("class")
        page.keyboard.press("k")
        page.keyboard.press("ArrowUp")
        page.keyboard.press("j")
        page.keyboard.press("ArrowLeft")
        assert "current" in item(page, KEYS[2]).get_attribute("class")
        page.keyboard.press("r")
        page.keyboard.type("never meant")
        page.keyboard.press("Escape")  # cancels the reject, and the reason typed for it
        assert item(page, KEYS[2]).locator("input.reason").input_value() == ""
        item(page, KEYS[2]).locator("button.reject").click()  # image 3 rejected, no reason
        page.wait_for_selector(f'article[data-image="{GEN(KEYS[2])}"].rejected')
        assert page.locator("#rejected").inner_text() == "3"
        assert page.locator("#accepted").inner_text() == "1"
    assert watch.errors == []

    lines = verdict_lines(root)
    assert [(line["image"], line["verdict"], line["reason"]) for line in lines] == [
        (GEN(KEYS[0]), "reject", "six fingers"), (GEN(KEYS[1]), "accept", ""),
        (GEN(KEYS[2]), "accept", ""), (GEN(KEYS[3]), "reject", "wrong subject"),
        (GEN(KEYS[2]), "reject", "")]
    assert all(line["sha256"] == sha256_of(root, line["image"][12:-4]) and line["host"] == "mac-a"
               for line in lines)
    index = load_verdicts(root)
    assert sorted(v.image for v in index.rejected()) == [GEN(KEYS[0]), GEN(KEYS[2]), GEN(KEYS[3])]


@needs_browser
def test_two_hosts_verdicts_merged_filters_and_suspects_first(server, review_share):
    root = review_share
    # mac-b (another Mac on the share) rejected image 2 before this page was opened.
    append_verdict(root, "mac-b", GEN(KEYS[1]), sha256_of(root, KEYS[1]), "reject", "blurry hands")
    with browser() as chromium:
        page = chromium.new_page(viewport={"width": 1400, "height": 900})
        watch = PageWatch(page)
        page.goto(server.url)
        assert item(page, KEYS[1]).locator(".verdict").inner_text().startswith("rejected by mac-b")
        item(page, KEYS[0]).locator("button.accept").click()
        page.wait_for_selector(f'article[data-image="{GEN(KEYS[0])}"].accepted')
        # mac-b reviews again meanwhile; a reload shows both hosts' files merged.
        append_verdict(root, "mac-b", GEN(KEYS[4]), sha256_of(root, KEYS[4]), "accept")
        page.reload()
        assert item(page, KEYS[0]).locator(".verdict").inner_text().startswith("accepted by mac-a")
        assert item(page, KEYS[4]).locator(".verdict").inner_text().startswith("accepted by mac-b")
        assert page.locator("#reviewed").inner_text() == "3"

        # Not yet reviewed: images 3 and 4 only.
        page.select_option('select[name="filter"]', "unreviewed")
        page.wait_for_url("**filter=unreviewed**")
        shown = page.locator("article.item").evaluate_all(
            "items => items.map(item => item.dataset.image)")
        assert shown == [GEN(KEYS[2]), GEN(KEYS[3])]
        # Suspect first: the blurred image leads, saying why.
        page.select_option('select[name="filter"]', "all")
        page.wait_for_url("**filter=all**")
        page.select_option('select[name="order"]', "suspect")
        page.wait_for_url("**order=suspect**")
        first = page.locator("article.item").first
        assert first.get_attribute("data-image") == GEN(BLURRED)
        assert first.locator("ul.suspect li").first.inner_text().startswith(
            "blurry: Laplacian variance ")
    assert watch.errors == []
    assert len(verdict_lines(root, "mac-a")) == 1 and len(verdict_lines(root, "mac-b")) == 2


# --------------------------------------------------------------------------- over HTTP


def test_files_are_served_by_path_and_nothing_outside_the_image_folders(server, review_share):
    status, body = server.request("GET", "/files/" + GEN(KEYS[0]))
    assert status == 200 and body == (review_share / GEN(KEYS[0])).read_bytes()
    status, body = server.request("GET", "/thumbs/" + GEN(KEYS[0]))
    assert status == 200 and body[:3] == b"\xff\xd8\xff"  # a JPEG
    append_verdict(review_share, "mac-b", GEN(KEYS[0]), sha256_of(review_share, KEYS[0]), "accept")
    (review_share / "secret.png").write_bytes(b"not for the page")
    for path in ("/files/GENERATIONS/../reviews/mac-b.jsonl", "/files/GENERATIONS/../secret.png",
                 "/files/GENERATIONS/%2e%2e/secret.png", "/files/reviews/mac-b.jsonl",
                 "/files//etc/passwd", "/thumbs/GENERATIONS/..%2fsecret.png", "/files/secret.png"):
        status, _ = server.request("GET", path)
        assert status == 403, path
    # A link inside an image folder leading out of the share is refused as well.
    (review_share / "GENERATIONS/France/family/link.png").symlink_to(review_share / "secret.png")
    assert server.request("GET", "/files/GENERATIONS/France/family/link.png")[0] == 403
    assert server.request("GET", "/files/GENERATIONS/France/family/absent.png")[0] == 404
    assert server.request("GET", "/", headers={"Host": "evil.example:80"})[0] == 403


def test_bad_verdicts_get_one_line_and_write_nothing(server, review_share):
    sha = sha256_of(review_share, KEYS[0])
    assert server.post_verdict(image=GEN(KEYS[0]), sha256=sha, verdict="maybe") == (
        400, {"error": "verdict 'maybe' is not one of accept, reject"})
    assert server.post_verdict(image="reviews/mac-a.jsonl", sha256=sha, verdict="reject")[0] == 400
    stale = hashlib.sha256(b"the take before").hexdigest()
    assert server.post_verdict(image=GEN(KEYS[0]), sha256=stale, verdict="reject") == (
        409, {"error": f"{GEN(KEYS[0])} changed since this page showed it (a new take?): "
                       "reload the page and review it again"})
    (review_share / GEN(KEYS[4])).unlink()
    assert server.post_verdict(image=GEN(KEYS[4]), sha256=sha, verdict="reject") == (
        404, {"error": f"{GEN(KEYS[4])} no longer exists: reload the page"})
    status, _ = server.request("POST", "/api/verdict", b"verdict=reject",
                               {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415  # a form from another site cannot post a verdict
    assert not reviews_path(review_share, "mac-a").exists()
    assert server.post_verdict(image=GEN(KEYS[0]), sha256=sha, verdict="reject",
                               reason="melted face")[0] == 200
    assert [line["reason"] for line in verdict_lines(review_share)] == ["melted face"]


def served_page(root: Path, tmp_path: Path) -> str:
    """The review page of ``root``, from a server started for it alone."""
    running = ReviewServer(root, tmp_path / "cache")
    try:
        status, body = running.request("GET", "/")
    finally:
        running.stop()
    assert status == 200
    return body.decode()


def served_article(root: Path, tmp_path: Path, key: str, page: str | None = None) -> str:
    """The <article> of image ``key`` on the review page (of ``page``, else served now)."""
    page = page or served_page(root, tmp_path)
    article = page[page.index(f'data-image="{GEN(key)}"'):]
    return article[:article.index("</article>")]


def test_a_remade_image_shows_its_take_and_why_the_one_before_was_rejected(review_share, tmp_path):
    root = review_share
    append_verdict(root, "mac-b", GEN(KEYS[0]), sha256_of(root, KEYS[0]), "reject", "six fingers")
    # generate.py set take 1 aside and made take 2 (its provenance records the take).
    set_aside(root, GEN(KEYS[0]), 1)
    payload = {"prompt": "a photo, again", "seed": seed_for("France_family_1", take=2),
               "width": 1024, "height": 1024}
    (root / GEN(KEYS[0])).write_bytes(add_text_chunks(
        encode_png(render_scene(11, "take 2", 256, 256)), provenance_chunks(payload, take=2)))
    page = served_page(root, tmp_path)
    article = served_article(root, tmp_path, KEYS[0], page)
    assert "take 2 · seed " in article
    assert re.search(r'<p class="earlier">take 1 rejected by mac-b, \d{4}-\d\d-\d\d '
                     r'\d\d:\d\d:\d\d UTC: six fingers</p>', article), article
    assert "not reviewed" in article  # take 2 itself is not reviewed yet
    assert "take 1 · seed " in served_article(root, tmp_path, KEYS[1], page)


def test_a_review_for_a_removed_image_is_one_note(review_share, tmp_path):
    gone = "GENERATIONS/France/family/France_family_9.png"
    append_verdict(review_share, "mac-b", gone, hashlib.sha256(b"x").hexdigest(), "reject")
    with open(reviews_path(review_share, "mac-b"), "ab") as stream:
        stream.write(b'{"image": "GENERATIONS/Fra')  # mac-b crashed mid-line
    running = ReviewServer(review_share, tmp_path / "cache")
    try:
        status, page = running.request("GET", "/")
    finally:
        printed = running.lines
        running.stop()
    assert status == 200
    notes = [line for line in printed if line.startswith("note: ")]
    assert notes == [
        "note: reviews/mac-b.jsonl line 2: cut off (the Mac stopped while writing it); skipped\n",
        f"note: {gone}: reviewed (by mac-b) but no longer exists; its verdicts are kept and "
        "ignored\n"]
    assert b"reviewed (by mac-b) but no longer exists" in page


def test_a_port_in_use_is_one_line_and_exit_2(server, review_share, tmp_path):
    port = str(server.address[1])
    result = subprocess.run([sys.executable, "-m", "drawpipe.review", "--root", str(review_share),
                             "--port", port, "--host-name", "mac-a", "--processes", "1"],
                            capture_output=True, text=True, cwd=PROJECT_DIR, timeout=120,
                            env={**os.environ, "DRAWPIPE_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port} (")
    assert result.stderr.endswith("): choose another --port, or --port 0 for a free one\n")
    assert result.stderr.count("\n") == 1


def test_the_cutouts_show_their_names(review_share, tmp_path):
    """segment.py --label's names under the cut-outs, the whole label on hover, and the
    objects left out as background in the caption."""
    write_labelled_cutouts(review_share / "CUTOUTS/France/family/France_family_1_upscaled",
                           [("chair", 0.8123, True, "table", 0.0712),
                            ("red <lamp>", 0.31, False, "vase", 0.2)], ["wall", "sky"])
    article = served_article(review_share, tmp_path, KEYS[0])
    assert ' title="chair 0.81 (runner-up: table 0.07)"' in article
    assert 'alt="cut-out 1: chair"><span class="name">chair</span>' in article
    assert '<span class="name">red &lt;lamp&gt;?</span>' in article  # not trusted, escaped
    assert "2 cut-outs · 2 left out as background: sky, wall" in article
