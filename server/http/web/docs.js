// The API's description, rendered from /openapi.json: every route with its parameters,
// bodies and answers, then the shapes they use. Nothing is fetched from another host,
// and every text from the document is set as text, never parsed as HTML.

const METHODS = ["get", "post", "put", "patch", "delete"];
const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// "#/components/parameters/RequestId" -> that object; anything else as it is.
function resolve(spec, item) {
  if (!item || typeof item.$ref !== "string" || !item.$ref.startsWith("#/")) return item;
  return item.$ref
    .slice(2)
    .split("/")
    .reduce((node, key) => (node ? node[key.replace(/~1/g, "/").replace(/~0/g, "~")] : undefined), spec);
}

function refName(ref) {
  return ref.split("/").pop();
}

// Text with `code` spans, as the document writes them: each span a <code>, all as text.
function prose(tag, text, attributes = {}) {
  const node = el(tag, attributes);
  String(text || "")
    .split("`")
    .forEach((part, index) => {
      if (part) node.append(index % 2 ? el("code", { text: part }) : document.createTextNode(part));
    });
  return node;
}

function slug(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
}

function schemaText(schema) {
  if (!schema) return "";
  if (schema.$ref) return refName(schema.$ref);
  if (schema.enum && !schema.type) return schema.enum.map(String).join(" | ");
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "any";
  return schema.items ? `${type} of ${schemaText(schema.items)}` : type;
}

function rangeText(schema) {
  if (!schema) return "";
  if (schema.enum) return schema.enum.map(String).join(", ");
  const low = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? `> ${schema.exclusiveMinimum}` : undefined);
  const high = schema.maximum;
  if (low !== undefined && high !== undefined) return `${low} .. ${high}`;
  if (low !== undefined) return typeof low === "string" ? low : `≥ ${low}`;
  if (high !== undefined) return `≤ ${high}`;
  return "";
}

function schemaLink(schema) {
  if (schema && schema.$ref) {
    const name = refName(schema.$ref);
    return el("a", { href: `#schema-${slug(name)}`, text: name });
  }
  return el("span", { text: schemaText(schema) });
}

// ---------------------------------------------------------------- an operation

function parametersTable(spec, parameters) {
  const rows = parameters.map((raw) => {
    const p = resolve(spec, raw) || {};
    const schema = p.schema || {};
    return el(
      "tr",
      {},
      el("td", {}, el("code", { text: p.name }), p.required ? el("span", { class: "required", text: " required" }) : null),
      el("td", { text: p.in }),
      el("td", { text: schemaText(schema) }),
      el("td", { text: rangeText(schema) }),
      el("td", { text: schema.default !== undefined ? String(schema.default) : "" }),
      prose("td", p.description),
    );
  });
  const head = el(
    "tr",
    {},
    ...["Name", "In", "Type", "Range or choices", "Default", "What"].map((text) => el("th", { scope: "col", text })),
  );
  return el("div", { class: "table-scroll" }, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function contentList(content) {
  const list = el("ul", { class: "content-types" });
  for (const [type, media] of Object.entries(content || {})) {
    const item = el("li", {}, el("code", { text: type }));
    if (media && media.schema) item.append(" ", schemaLink(media.schema));
    list.append(item);
  }
  return list;
}

function responsesList(spec, responses) {
  const list = el("dl", { class: "responses" });
  for (const [status, raw] of Object.entries(responses || {})) {
    const response = resolve(spec, raw) || {};
    const kind = status.startsWith("2") ? "status-ok" : "status-error";
    list.append(el("dt", { class: kind, text: status }));
    const detail = el("dd", {}, prose("span", response.description));
    if (response.content) detail.append(contentList(response.content));
    list.append(detail);
  }
  return list;
}

function operationSection(spec, path, method, pathItem, operation) {
  const id = `op-${slug(operation.operationId || `${method}-${path}`)}`;
  const section = el(
    "section",
    { class: "panel operation", id, "aria-labelledby": `${id}-title` },
    el(
      "h3",
      { id: `${id}-title` },
      el("span", { class: `method method-${method}`, text: method.toUpperCase() }),
      " ",
      el("code", { text: path }),
    ),
  );
  if (operation.summary) section.append(prose("p", operation.summary, { class: "summary" }));
  if (operation.description) section.append(prose("p", operation.description));
  const parameters = [...(pathItem.parameters || []), ...(operation.parameters || [])];
  if (parameters.length) {
    section.append(el("h4", { text: "Parameters" }), parametersTable(spec, parameters));
  }
  if (operation.requestBody) {
    const body = resolve(spec, operation.requestBody);
    section.append(el("h4", { text: "Request body" }));
    if (body.description) section.append(prose("p", body.description));
    section.append(contentList(body.content));
  }
  section.append(el("h4", { text: "Answers" }), responsesList(spec, operation.responses));
  return { id, section };
}

// ---------------------------------------------------------------- the page

function render(spec) {
  const info = spec.info || {};
  $("#title").textContent = info.title || "dcf";
  document.title = `${info.title || "dcf"} ${info.version || ""}: HTTP API`;
  const summary = $("#summary");
  summary.replaceChildren(
    prose("span", `${info.summary || ""} Version ${info.version || "?"}. `),
    prose("span", info.description ? `${info.description} ` : ""),
    el("a", { href: "/openapi.json", text: "/openapi.json" }),
  );

  const byTag = new Map((spec.tags || []).map((tag) => [tag.name, { tag, items: [] }]));
  for (const [path, pathItem] of Object.entries(spec.paths || {})) {
    for (const method of METHODS) {
      const operation = pathItem[method];
      if (!operation) continue;
      const tagName = (operation.tags || ["other"])[0];
      if (!byTag.has(tagName)) byTag.set(tagName, { tag: { name: tagName }, items: [] });
      byTag.get(tagName).items.push(operationSection(spec, path, method, pathItem, operation));
    }
  }

  const contents = el("ol", { class: "contents" });
  const body = $("#operations");
  body.replaceChildren();
  for (const { tag, items } of byTag.values()) {
    if (!items.length) continue;
    const groupId = `tag-${slug(tag.name)}`;
    const links = el("ol");
    for (const { id, section } of items) {
      const title = section.querySelector("h3").textContent;
      links.append(el("li", {}, el("a", { href: `#${id}`, text: title })));
    }
    contents.append(el("li", {}, el("a", { href: `#${groupId}`, text: tag.name }), links));
    const group = el(
      "section",
      { class: "group", "aria-labelledby": groupId },
      el("h2", { id: groupId, text: tag.name }),
      tag.description ? prose("p", tag.description, { class: "muted" }) : null,
      ...items.map((item) => item.section),
    );
    body.append(group);
  }

  const schemas = (spec.components && spec.components.schemas) || {};
  if (Object.keys(schemas).length) {
    contents.append(el("li", {}, el("a", { href: "#schemas", text: "shapes" })));
    const group = el("section", { class: "group", "aria-labelledby": "schemas" }, el("h2", { id: "schemas", text: "shapes" }));
    for (const [name, schema] of Object.entries(schemas)) {
      group.append(
        el(
          "section",
          { class: "panel schema", id: `schema-${slug(name)}` },
          el("h3", {}, el("code", { text: name })),
          el("pre", { text: JSON.stringify(schema, null, 2) }),
        ),
      );
    }
    body.append(group);
  }
  $("#contents").replaceChildren(contents);
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
}

async function main() {
  try {
    const reply = await fetch("/openapi.json", { headers: { accept: "application/json" } });
    if (!reply.ok) throw new Error(`${reply.status} ${reply.statusText}`);
    render(await reply.json());
  } catch (error) {
    $("#contents").replaceChildren(
      el("p", { class: "error", role: "alert", text: `Cannot read /openapi.json: ${error.message}` }),
    );
  }
}

main();
