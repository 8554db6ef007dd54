"use strict";
// The review page's keyboard, buttons and verdict requests (templates/review.html).
(() => {
  const settings = JSON.parse(document.getElementById("settings").textContent);
  const items = [...document.querySelectorAll("article.item[data-image]")];
  let current = -1;

  function select(index, scroll = true) {
    if (!items.length) return;
    index = Math.max(0, Math.min(items.length - 1, index));
    if (current >= 0) items[current].classList.remove("current");
    current = index;
    items[current].classList.add("current");
    if (scroll) items[current].scrollIntoView({block: "nearest"});
  }

  function describe(verdict) {
    const word = verdict.verdict === "reject" ? "rejected" : "accepted";
    const when = verdict.time.slice(0, 19).replace("T", " ");
    return `${word} by ${verdict.host}, ${when} UTC` + (verdict.reason ? `: ${verdict.reason}` : "");
  }

  function show(item, verdict) {
    item.classList.remove("unreviewed", "rejected", "accepted");
    const box = item.querySelector(".verdict");
    box.classList.remove("accept", "reject");
    if (verdict) {
      item.classList.add(verdict.verdict === "reject" ? "rejected" : "accepted");
      box.classList.add(verdict.verdict);
      box.textContent = describe(verdict);
    } else {
      item.classList.add("unreviewed");
      box.textContent = "not reviewed";
    }
    item.dataset.verdict = verdict ? JSON.stringify(verdict) : "";
    count();
  }

  function count() {
    const rejected = items.filter(item => item.classList.contains("rejected")).length;
    const accepted = items.filter(item => item.classList.contains("accepted")).length;
    // Counted over the images on this page: with a filter, reload for the whole share.
    document.getElementById("rejected").textContent = rejected.toLocaleString("en");
    document.getElementById("accepted").textContent = accepted.toLocaleString("en");
    document.getElementById("reviewed").textContent = (rejected + accepted).toLocaleString("en");
  }

  async function decide(item, verdict) {
    const status = item.querySelector(".status");
    const reason = verdict === "reject" ? item.querySelector("input.reason").value.trim() : "";
    status.textContent = "saving…";
    try {
      const answer = await fetch("/api/verdict", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({image: item.dataset.image, sha256: item.dataset.sha256, verdict, reason}),
      });
      const body = await answer.json();
      if (!answer.ok) throw new Error(body.error || `HTTP ${answer.status}`);
      status.textContent = "";
      show(item, body.verdict);
      const index = items.indexOf(item);
      if (index === current) select(index + 1);
    } catch (error) {
      status.textContent = `not saved: ${error.message}`;
    }
  }

  function startReject(item) {
    const box = item.querySelector("input.reason");
    box.focus();
    box.select();
  }

  // What a reason box held before the user started typing in it (Esc puts it back).
  document.addEventListener("focusin", event => {
    if (event.target.matches("input.reason")) event.target.dataset.before = event.target.value;
  });

  document.addEventListener("keydown", event => {
    if (event.metaKey || event.ctrlKey || event.altKey) return;
    const target = event.target;
    if (target.matches("input.reason")) {
      const item = target.closest("article.item");
      if (event.key === "Enter") {
        event.preventDefault();
        select(items.indexOf(item), false);
        target.blur();
        decide(item, "reject");
      } else if (event.key === "Escape") {
        // Cancelled: the box goes back to what it held, so a later click on Reject
        // cannot send the reason typed for the reject that was called off.
        target.value = target.dataset.before ?? "";
        target.blur();
      }
      return;
    }
    if (target.matches("input, textarea, select, button")) return;
    if (current < 0) select(0);
    const handlers = {
      j: () => select(current + 1), ArrowDown: () => select(current + 1),
      ArrowRight: () => select(current + 1),
      k: () => select(current - 1), ArrowUp: () => select(current - 1),
      ArrowLeft: () => select(current - 1),
      a: () => decide(items[current], "accept"),
      r: () => startReject(items[current]),
    };
    const handler = handlers[event.key];
    if (handler && items.length) {
      event.preventDefault();  // no scrolling by the arrows, no "r" typed into the reason
      handler();
    }
  });

  for (const [index, item] of items.entries()) {
    item.addEventListener("click", () => select(index, false));
    item.querySelector("button.accept").addEventListener("click", event => {
      event.currentTarget.blur();
      select(index, false);
      decide(item, "accept");
    });
    item.querySelector("button.reject").addEventListener("click", event => {
      event.currentTarget.blur();
      select(index, false);
      decide(item, "reject");
    });
  }

  // Other Macs review too: their verdicts appear without a reload.
  async function refresh() {
    try {
      const answer = await fetch("/api/verdicts");
      if (!answer.ok) return;
      const {verdicts} = await answer.json();
      const byTake = new Map(verdicts.map(verdict => [`${verdict.image}\n${verdict.sha256}`, verdict]));
      for (const item of items) {
        const verdict = byTake.get(`${item.dataset.image}\n${item.dataset.sha256}`) || null;
        const shown = item.dataset.verdict ? JSON.parse(item.dataset.verdict) : null;
        if (JSON.stringify(verdict) !== JSON.stringify(shown)) show(item, verdict);
      }
    } catch (error) {
      // the server stopped or the network blinked: try again at the next tick
    }
  }
  setInterval(refresh, settings.refresh_ms);
  select(0, false);
})();
