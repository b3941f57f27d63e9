// The web wallet's page (cardnet wallet ui, docs/web-wallet.md). It logs in with the one-time token of the link it
// was opened with (in the URL's fragment, which the browser never sends to a server), keeps the session secret it
// gets for this tab in sessionStorage (this origin's, scheme + host + port: no page of another port reads it) and
// sends it as `Authorization: Bearer ...` with every API request; no cookie is used. It polls /api/state every
// second and redraws when its version moved. Text from the card (ticket bodies) is only ever set as textContent,
// never parsed as HTML.
"use strict";

const POLL_MS = 1000;
const KEY = "cardnet-wallet-session";
const NOT_LOGGED_IN = "This tab is not logged in: open the login link `cardnet wallet ui` printed (it works once, in "
  + "one tab), or press “Open in another tab” in a tab of this wallet that is logged in.";
const TOO_LONG = "What you typed is too long for the wallet (it takes at most 4 KiB an order): check what you pasted; "
  + "a card's Uid is 33 characters, a ticket's or voucher's id 32, a server's address http://HOST:PORT.";
let session = stored();
let shown = -1;
let busy = false;

const $ = (id) => document.getElementById(id);

function stored() {
  try { return sessionStorage.getItem(KEY); } catch (e) { return null; }
}

function keep(secret) {
  session = secret;
  try {
    if (secret) sessionStorage.setItem(KEY, secret);
    else sessionStorage.removeItem(KEY);
  } catch (e) { /* storage refused: the session lives in this page's memory only (a reload loses it) */ }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

// One request to the wallet's API: JSON in and out; with this tab's session unless `auth` is false (the login).
async function api(path, body, auth = true) {
  const init = { credentials: "omit", cache: "no-store", headers: {} };
  if (auth) {
    if (!session) throw new Error(NOT_LOGGED_IN);
    init.headers.Authorization = `Bearer ${session}`;
  }
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new Error("the wallet server does not answer: is `cardnet wallet ui` still running? Start it again and "
      + "open the login link it prints.");
  }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    if (auth && r.status === 401) keep(null); // the wallet does not know this tab's session (restarted?)
    const words = r.status === 413 ? TOO_LONG : (data && data.message); // (413: the HTTP server's words, in bytes)
    const err = new Error(words || `the wallet answered ${r.status}: reload the page`);
    err.data = data;
    throw err;
  }
  return data;
}

function say(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "error";
  m.hidden = false;
}

function short(uid) {
  return uid ? uid : "";
}

function renderOffers(offers) {
  const list = $("offers");
  list.replaceChildren();
  for (const o of offers) {
    const item = el("li", { "data-kind": o.kind, "data-id": o.kind === "exchange" ? o.id : o.oid });
    if (o.kind === "exchange") {
      item.append(
        el("p", {}, "Card ", el("code", {}, o.peer), " offers you ",
          el("strong", { class: "get" }, o.get_body || "(no description)"), " (", el("code", {}, o.get_oid), ")"),
        el("p", {}, "for your ", el("strong", { class: "give" }, o.give_body || "(not on this card)"),
          " (", el("code", {}, o.give_oid), ")"),
      );
      if (!o.holds_it) {
        item.append(el("p", { class: "help" }, "You do not hold that voucher usable now: accepting will be refused."));
      }
      item.append(
        el("button", { type: "button", className: "accept", onclick: () => act("/api/exchange/accept", { id: o.id }) },
          "Accept"),
        el("button", { type: "button", className: "reject", onclick: () => act("/api/exchange/reject", { id: o.id }) },
          "Reject"),
      );
    } else {
      item.append(
        el("p", {}, "Card ", el("code", {}, o.peer || "?"), " sends you ", el("strong", {}, o.body || "(no description)"),
          " (", el("code", {}, o.oid), ")"),
        el("button", { type: "button", className: "accept", onclick: () => act("/api/ticket/accept", { oid: o.oid }) },
          "Accept"),
        el("button", { type: "button", className: "reject", onclick: () => act("/api/ticket/reject", { oid: o.oid }) },
          "Reject"),
      );
    }
    list.append(item);
  }
  $("no-offers").hidden = offers.length > 0;
}

function renderTickets(tickets) {
  const body = $("tickets").tBodies[0];
  body.replaceChildren();
  for (const t of tickets) {
    const state = el("td", { class: "state" }, t.state);
    if (t.hint) state.append(el("div", { class: "help" }, t.hint));
    body.append(el("tr", { "data-oid": t.oid, "data-status": t.status, "data-body": t.body },
      el("td", { class: "id", title: t.oid }, `${t.oid.slice(0, 12)}…`),
      el("td", { class: "body", title: t.body }, t.what), state));
  }
  $("tickets").hidden = tickets.length === 0;
  $("no-tickets").hidden = tickets.length > 0;
  for (const id of ["send-oid", "enter-oid", "offer-give"]) {
    const select = $(id);
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "" }, "choose a ticket"));
    for (const t of tickets.filter((t) => t.movable)) {
      const what = t.what.length > 48 ? `${t.what.slice(0, 47)}…` : t.what;
      select.append(el("option", { value: t.oid }, `${what || "(no description)"} (${t.oid.slice(0, 8)}…)`));
    }
    select.value = tickets.some((t) => t.movable && t.oid === chosen) ? chosen : "";
  }
}

function renderAdmissions(a) {
  const body = $("admissions").tBodies[0];
  body.replaceChildren();
  for (const r of a.rows) {
    const verdict = r.verdict === "admitted" ? "" : " (the gate's acknowledgement was on its way)";
    body.append(el("tr", { "data-oid": r.oid, "data-gate": r.gate, "data-at": r.at },
      el("td", { class: "id", title: r.oid }, `${r.oid.slice(0, 12)}…`),
      el("td", { class: "id", title: r.gate }, short(r.gate)),
      el("td", {}, `${r.at.replace("T", " ").replace("Z", "")}${verdict}`)));
  }
  $("admissions-part").hidden = a.rows.length === 0;
  $("admissions-more").hidden = a.earlier === 0;
  $("admissions-more").textContent = `${a.earlier} earlier: \`cardnet wallet list --json\` lists them all`;
  $("admissions-problem").hidden = !a.problem;
  $("admissions-problem").textContent = a.problem || "";
}

function renderUnderWay(rows) {
  const body = $("under-way").tBodies[0];
  body.replaceChildren();
  for (const r of rows) {
    const state = el("td", {}, r.state);
    if (r.can_give_up) {
      state.append(" ", el("button", { type: "button", className: "give-up",
        onclick: () => act("/api/exchange/give-up", { id: r.id }) }, "Take back"));
    }
    if (r.what === "ticket delivery" && r.url) { // a paid sale whose ticket did not arrive (the page's own purchase)
      state.append(" ", el("button", { type: "button", className: "deliver",
        onclick: () => act("/api/deliver", { url: r.url, poid: r.id }) }, "Finish the delivery"));
    }
    if (r.next) state.append(el("div", { class: "help next" }, `next: ${r.next}`));
    if (r.problem) state.append(el("div", { class: "problem" }, r.problem));  // e.g. the other card cannot write
    const what = el("td", {}, r.what);
    if (r.give && r.want) {
      what.append(el("div", { class: "help" }, `your ${r.give.slice(0, 8)}… for ${r.want.slice(0, 8)}…`));
    }
    body.append(el("tr", { "data-id": r.id },
      what, el("td", { class: "id" }, r.id), el("td", { class: "id" }, short(r.peer)), state));
  }
  $("under-way").hidden = rows.length === 0;
  $("nothing-under-way").hidden = rows.length > 0;
}

function render(s) {
  $("card").textContent = s.card;
  renderOffers(s.offers);
  renderTickets(s.tickets);
  renderAdmissions(s.admissions);
  renderUnderWay(s.under_way);
  if (s.purse === null) $("purse").textContent = "This card has no e-purse.";
  else if (!s.purse.keyed) $("purse").textContent = "Not loaded yet: Load fetches its key from your broker first.";
  else $("purse").textContent = s.purse.balances.length ? s.purse.balances.join(", ") : "empty";
  $("load-form").hidden = s.purse === null;
}

let timer = null;
let polling = false;
let again = false;

function notLoggedIn(text) {
  clearTimeout(timer);
  $("link").textContent = "not logged in";
  $("link").className = "link down";
  if (text) say(text, false);
  else if ($("message").hidden) say(NOT_LOGGED_IN, false);
}

async function poll() {
  if (!session) { notLoggedIn(); return; }
  if (polling) { again = true; return; } // (one request at a time; asked again meanwhile: once more after it)
  polling = true;
  clearTimeout(timer);
  try {
    const s = await api("/api/state");
    $("link").textContent = "live";
    $("link").className = "link live";
    $("read-at").textContent = s.read_at;
    if (s.version !== shown) {
      shown = s.version;
      render(s);
    }
  } catch (e) {
    $("link").textContent = e.message;
    $("link").className = "link down";
    if (!session) notLoggedIn(e.message);
  } finally {
    polling = false;
    if (!session) again = false;
    else if (again) { again = false; timer = setTimeout(poll, 0); } else timer = setTimeout(poll, POLL_MS);
  }
}

async function act(path, body, onError) {
  if (busy) {
    say("Wait a moment: the last order is still under way.", false);
    return null;
  }
  busy = true;
  for (const b of document.querySelectorAll("button")) b.disabled = true;
  try {
    const got = await api(path, body);
    say(got.message, true);
    return got;
  } catch (e) {
    say(e.message, false);
    if (onError) onError(e.data || {});
    return null;
  } finally {
    busy = false;
    for (const b of document.querySelectorAll("button")) b.disabled = false;
    shown = -1; // redraw with what the card says now, at once
    poll();
  }
}

$("new-tab").addEventListener("click", async () => {
  const got = await act("/api/link", {});
  if (!got) return;
  const tab = window.open(`${location.origin}/#login=${got.token}`, "_blank");
  if (tab) tab.opener = null;
  else say("Your browser blocked the new tab: allow pop-ups for this page and press “Open in another tab” again.", false);
});

$("send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const oid = $("send-oid").value;
  const to = $("send-to").value.trim();
  if (!oid) { say("Choose the ticket to send.", false); return; }
  if (!to) { say("Give the receiving card's Uid (its owner sees it at the top of their wallet).", false); return; }
  const got = await act("/api/send", { oid, to });
  if (got) $("send-to").value = "";
});

$("enter-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const oid = $("enter-oid").value;
  const gate = $("enter-gate").value.trim();
  if (!oid) { say("Choose the ticket to show at the gate.", false); return; }
  if (!gate) { say("Give the gate's Uid (the gate shows it).", false); return; }
  say("Showing the ticket at the gate…", true);
  await act("/api/enter", { oid, gate });
});

$("offer-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const give = $("offer-give").value;
  const want = $("offer-want").value.trim();
  const to = $("offer-to").value.trim();
  if (!give) { say("Choose the voucher you give.", false); return; }
  if (!want) { say("Give the id of the voucher you want (its owner sees it in their list).", false); return; }
  if (!to) { say("Give the other card's Uid (its owner sees it at the top of their wallet).", false); return; }
  const got = await act("/api/exchange/offer", { give, want, to });
  if (got) { $("offer-want").value = ""; $("offer-to").value = ""; }
});

$("load-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const amount = $("load-amount").value.trim();
  if (!amount) { say("Give the amount to load, like 10.00 EUR.", false); return; }
  say("Loading: your broker pays it from your account…", true);
  const got = await act("/api/load", { amount });
  if (got) $("load-amount").value = "";
});

$("recover-button").addEventListener("click", async () => {
  say("Recovering: resending what is under way (this can take some seconds)…", true);
  const got = await act("/api/recover", {});
  const list = $("recovered");
  list.replaceChildren();
  for (const r of (got && got.recovered) || []) list.append(el("li", {}, `${r.what} ${r.id}: ${r.outcome}`));
});

let shop = null; // the ticketing server's events, as /api/shop read them

function showSeats() {
  const event = shop.events.find((e) => e.id === $("buy-event").value);
  const seats = $("buy-seat");
  seats.replaceChildren();
  for (const seat of (event && event.free) || []) seats.append(el("option", { value: seat }, seat));
  let price = "";
  if (event && event.free.length) {
    price = event.more ? `${event.price} (the first ${event.free.length} of ${event.free_count} free seats)` : event.price;
  } else if (event) {
    price = event.more ? `${event.free_count} free seats, none among the first ones listed` : "sold out";
  }
  $("buy-price").textContent = price;
  $("buy-button").disabled = !event || event.free.length === 0;
}

$("shop-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const got = await act("/api/shop", { url: $("shop-url").value.trim() });
  if (!got) return;
  shop = got;
  $("message").hidden = true;
  $("shop-name").textContent = got.events.length ? got.name : `${got.name}: no events on sale`;
  const events = $("buy-event");
  events.replaceChildren();
  for (const e of got.events) events.append(el("option", { value: e.id }, `${e.name} (${e.date})`));
  $("buy-form").hidden = false;
  $("deliver-form").hidden = false;
  showSeats();
});

$("buy-event").addEventListener("change", showSeats);

$("deliver-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  say("Receiving the ticket of your paid sale…", true);
  await act("/api/deliver", { url: shop.url, poid: $("deliver-poid").value.trim() });
});

$("buy-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  say("Buying: paying through your broker, then receiving the ticket…", true);
  const got = await act("/api/buy", { url: shop.url, event: $("buy-event").value, seat: $("buy-seat").value },
    (data) => {
      if (data.error === "not_delivered" && data.poid) {
        $("deliver-poid").value = data.poid;
        $("deliver-form").hidden = false;
      }
    });
  if (got) {
    const event = shop.events.find((e) => e.id === $("buy-event").value);
    if (event) event.free = event.free.filter((s) => s !== $("buy-seat").value);
    showSeats();
  }
});

// The login link's token: taken out of the address bar at once (a reload, a bookmark or the history never hold it),
// then exchanged for this tab's session (the token is spent by it).
function linkToken() {
  const found = /^#login=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  return found ? found[1] : null;
}

async function start() {
  const token = linkToken();
  if (token) {
    try {
      const got = await api("/api/login", { token }, false);
      keep(got.session);
      shown = -1;
      $("message").hidden = true;
    } catch (e) {
      say(session ? `${e.message} (this tab is still logged in)` : e.message, false);
    }
  }
  poll();
}

window.addEventListener("hashchange", start); // a login link pasted into this tab's address bar
start();
