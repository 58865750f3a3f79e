// Helpers both status pages share, inlined into each where it is served.
const TIERS = ["light", "full", "mongo", "log"];

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function cell(row, content, cls) {
  const td = el("td", cls);
  if (content instanceof Node) td.appendChild(content); else td.textContent = content == null ? "" : String(content);
  row.appendChild(td);
  return td;
}
function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    const tr = el("tr");
    const td = el("td", "empty", empty);
    td.colSpan = columns;
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
  for (const r of rows) tbody.appendChild(r);
}
function pill(text, kind) { return el("span", "pill " + kind, text); }
