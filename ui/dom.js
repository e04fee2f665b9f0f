// Building and updating the page without a framework.
//
// Views are pure functions from data to a fresh DOM tree built with h().
// morph() then brings the live page in line with that tree, touching only
// what changed: rows keep their identity (data-key), a focused button stays
// focused, an open <details> stays open, text the user selected stays put.
// That is what makes the live refresh flicker-free. Text always goes in as
// text nodes, never as HTML, so no payload can inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Appends children (strings, numbers, nodes, arrays, null/false skipped). */
function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    el.setAttribute(name, value === true ? "" : String(value));
  }
}

/** An HTML element: h("a", {href: "#/"}, "text", child, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** An SVG element, same shape as h(). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function keyOf(node) {
  return node.nodeType === Node.ELEMENT_NODE ? node.getAttribute("data-key") : null;
}

function sameKind(a, b) {
  return a.nodeType === b.nodeType && a.nodeName === b.nodeName && keyOf(a) === keyOf(b);
}

function morphAttrs(from, to) {
  for (const { name } of Array.from(from.attributes)) {
    // The browser owns <details open> and <dialog open> once the user
    // toggled them; keep their choice.
    if (name === "open" && (from.nodeName === "DETAILS" || from.nodeName === "DIALOG")) continue;
    if (!to.hasAttribute(name)) from.removeAttribute(name);
  }
  for (const { name, value } of Array.from(to.attributes)) {
    if (from.getAttribute(name) !== value) from.setAttribute(name, value);
  }
  // Form state lives in properties, not attributes: leave what the user typed.
}

/** Makes `from` (live) look like `to` (fresh), reusing matching nodes. */
export function morph(from, to) {
  if (from.nodeType === Node.TEXT_NODE) {
    if (from.nodeValue !== to.nodeValue) from.nodeValue = to.nodeValue;
    return;
  }
  morphAttrs(from, to);
  morphChildren(from, to);
}

/** Morphs the children of `parent` to be those of `next`. */
export function morphChildren(parent, next) {
  const wanted = Array.from(next.childNodes);
  const keyed = new Map();
  for (const child of Array.from(parent.childNodes)) {
    const key = keyOf(child);
    if (key !== null) keyed.set(key, child);
  }
  let cursor = parent.firstChild;
  for (const fresh of wanted) {
    const key = keyOf(fresh);
    let live = null;
    if (key !== null) {
      const found = keyed.get(key);
      if (found && sameKind(found, fresh)) live = found;
    } else if (cursor && keyOf(cursor) === null && sameKind(cursor, fresh)) {
      live = cursor;
    }
    if (live) {
      if (live !== cursor) parent.insertBefore(live, cursor);
      else cursor = cursor.nextSibling;
      morph(live, fresh);
      if (key !== null) keyed.delete(key);
    } else {
      parent.insertBefore(fresh, cursor);
    }
  }
  // Whatever is left after the cursor was not wanted.
  while (cursor) {
    const next = cursor.nextSibling;
    parent.removeChild(cursor);
    cursor = next;
  }
}
