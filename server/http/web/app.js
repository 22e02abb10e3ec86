// The dcf page: list the functions, send one a file or text, show its answer.
//
// Calls go through XMLHttpRequest: it is the one browser API that reports upload
// progress, and its progress events also hand over the response as it arrives,
// so an NDJSON answer (ssd-video) is parsed line by line while it streams.
// The answer is rendered for what it is, from its content type and shape:
// detections over the picture, images with a download link, frames in a live
// table with a chart, text as text.

const LOW_THRESHOLD = "0.2";       // asked of image detectors, so the confidence slider can go low
const MAX_TEXT_BYTES = 8 << 20;    // text answers are shown on the page only up to this size
const TOKEN_KEY = "dcf-token";

const $ = (selector) => document.querySelector(selector);
const ui = {
  form: $("#call"),
  functions: $("#functions"),
  file: $("#file"),
  drop: $("#drop"),
  fileName: $("#file-name"),
  clearFile: $("#clear-file"),
  text: $("#text"),
  params: $("#params"),
  paramsBox: $("#params-box"),
  token: $("#token"),
  run: $("#run"),
  cancel: $("#cancel"),
  progressBox: $("#progress-box"),
  upload: $("#upload"),
  uploadText: $("#upload-text"),
  status: $("#status"),
  output: $("#output"),
};

const state = { functions: [], file: null, xhr: null, objectUrl: null };

// ---------------------------------------------------------------- helpers

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "for") {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = bytes;
  let unit = -1;
  do {
    value /= 1024;
    unit += 1;
  } while (value >= 1024 && unit < units.length - 1);
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function percent(confidence) {
  return `${Math.round(confidence * 100)}%`;
}

// A stable, readable colour per label.
function colourOf(label) {
  let hash = 0;
  for (const char of label) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 85% 45%)`;
}

function authHeaders() {
  const token = ui.token.value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function setStatus(message) {
  ui.status.textContent = message;
}

function showOutput(kind, ...nodes) {
  if (state.objectUrl) {
    URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = null;
  }
  ui.output.replaceChildren(...nodes);
  ui.output.dataset.kind = kind;
}

function showError(code, message, httpStatus) {
  showOutput(
    "error",
    el("div", { class: "error", role: "alert", "data-code": code },
      el("p", { class: "error-code" },
        el("strong", { text: code }),
        httpStatus ? el("span", { class: "muted", text: ` HTTP ${httpStatus}` }) : null),
      el("p", { class: "error-message", text: message })),
  );
  ui.output.dataset.state = "error";
  ui.output.dataset.code = code;
}

// ---------------------------------------------------------------- functions

// A function answering one JSON document of boxes, filtered by a threshold param
// (ssd): the page asks it for weak boxes too, and its slider filters them.
function wantsLowThreshold(fn) {
  return fn.output_content_type === "application/json" && "threshold" in (fn.params ?? {});
}

function selectedFunction() {
  const checked = ui.functions.querySelector("input[name=function]:checked");
  if (!checked) return null;
  return state.functions.find((fn) => fn.name === checked.value) ?? { name: checked.value, params: {} };
}

async function loadFunctions() {
  let reply;
  try {
    reply = await fetch("/v1/functions", { headers: authHeaders() });
  } catch {
    ui.functions.replaceChildren(el("p", { class: "error-message", text: "Cannot reach the server." }));
    return;
  }
  if (!reply.ok) {
    const body = await reply.json().catch(() => ({}));
    ui.functions.replaceChildren(
      el("p", { class: "error-message", text: `${body.code ?? reply.status}: ${body.message ?? ""}` }),
      el("p", { class: "muted", text: "Give an access token below, then reload the list." }),
      el("button", { type: "button", class: "button secondary", text: "Reload", onclick: loadFunctions }),
    );
    return;
  }
  state.functions = await reply.json();
  renderFunctions(new URLSearchParams(location.search).get("function"));
}

function renderFunctions(wanted) {
  const choices = state.functions.map((fn) => functionChoice(fn.name, fn.description,
    `${fn.input_content_type} → ${fn.output_content_type}`));
  const known = state.functions.some((fn) => fn.name === wanted || fn.aliases.includes(wanted));
  if (wanted && !known) {
    // A name from the address that the server does not list: let the server say so.
    choices.push(functionChoice(wanted, "Not listed by the server.", ""));
  }
  ui.functions.replaceChildren(...choices);
  const target = state.functions.find((fn) => fn.name === wanted || fn.aliases.includes(wanted));
  const name = target ? target.name : wanted || state.functions[0]?.name;
  const input = [...ui.functions.querySelectorAll("input")].find((item) => item.value === name);
  if (input) input.checked = true;
  functionChanged();
}

function functionChoice(name, description, types) {
  const id = `fn-${name.replace(/[^a-zA-Z0-9_-]/g, "_")}`;
  return el("div", { class: "fn" },
    el("input", { type: "radio", name: "function", id, value: name, onchange: functionChanged }),
    el("label", { for: id },
      el("span", { class: "fn-name", text: name }),
      el("span", { class: "fn-desc", text: description }),
      types ? el("span", { class: "fn-types", text: types }) : null));
}

function functionChanged() {
  const fn = selectedFunction();
  if (!fn) return;
  const params = Object.entries(fn.params ?? {});
  ui.paramsBox.hidden = params.length === 0;
  ui.params.replaceChildren(...params.map(([name, description]) => {
    const id = `param-${name}`;
    const hint = name === "threshold" && wantsLowThreshold(fn)
      ? ` Left empty, the page asks for ${LOW_THRESHOLD}, and its slider filters the boxes.` : "";
    return el("div", { class: "param" },
      el("label", { for: id, class: "label", text: name }),
      el("input", { id, name, "data-param": name, autocomplete: "off", "aria-describedby": `${id}-help` }),
      el("small", { id: `${id}-help`, class: "muted", text: description + hint }));
  }));
  ui.file.accept = fn.input_content_type && fn.input_content_type !== "application/octet-stream"
    ? fn.input_content_type : "";
  const url = new URL(location.href);
  url.searchParams.set("function", fn.name);
  history.replaceState(null, "", url);
}

// ---------------------------------------------------------------- input

function setFile(file) {
  state.file = file;
  ui.fileName.textContent = file ? `${file.name} (${formatBytes(file.size)})` : "No file chosen";
  ui.clearFile.hidden = !file;
  ui.drop.classList.toggle("has-file", Boolean(file));
}

ui.file.addEventListener("change", () => setFile(ui.file.files[0] ?? null));
ui.clearFile.addEventListener("click", () => {
  ui.file.value = "";
  setFile(null);
  ui.file.focus();
});
for (const type of ["dragenter", "dragover"]) {
  ui.drop.addEventListener(type, (event) => {
    event.preventDefault();
    ui.drop.classList.add("dragging");
  });
}
for (const type of ["dragleave", "drop"]) {
  ui.drop.addEventListener(type, () => ui.drop.classList.remove("dragging"));
}
ui.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer?.files?.[0];
  if (file) setFile(file);
});

ui.token.value = sessionStorage.getItem(TOKEN_KEY) ?? "";
ui.token.addEventListener("change", () => {
  sessionStorage.setItem(TOKEN_KEY, ui.token.value.trim());
  loadFunctions();
});

// ---------------------------------------------------------------- calling

function callUrl(fn) {
  const query = new URLSearchParams();
  for (const input of ui.params.querySelectorAll("input[data-param]")) {
    if (input.value.trim() !== "") query.set(input.dataset.param, input.value.trim());
  }
  if (wantsLowThreshold(fn) && !query.has("threshold")) query.set("threshold", LOW_THRESHOLD);
  const search = query.toString();
  return `/v1/functions/${encodeURIComponent(fn.name)}${search ? `?${search}` : ""}`;
}

function busy(running) {
  ui.run.disabled = running;
  ui.cancel.disabled = !running;
  ui.output.setAttribute("aria-busy", String(running));
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const fn = selectedFunction();
  if (!fn) {
    setStatus("Pick a function first.");
    return;
  }
  const body = state.file ?? (ui.text.value ? new Blob([ui.text.value], { type: "text/plain" }) : null);
  if (!body) {
    setStatus("Choose a file, drop one, or type some text first.");
    ui.file.focus();
    return;
  }
  if (fn.output_content_type?.startsWith("text/") && body.size > MAX_TEXT_BYTES) {
    setStatus(`The page shows text answers up to ${formatBytes(MAX_TEXT_BYTES)}; use curl for larger inputs.`);
    return;
  }
  call(fn, body);
  if (matchMedia("(max-width: 760px)").matches) {
    ui.output.closest("section").scrollIntoView({ block: "start" });
  }
});

ui.cancel.addEventListener("click", () => state.xhr?.abort());

function call(fn, body) {
  const xhr = new XMLHttpRequest();
  state.xhr = xhr;
  const image = state.file && state.file.type.startsWith("image/") ? state.file : null;
  let renderer = null;
  let seen = 0;

  ui.output.dataset.state = "running";
  delete ui.output.dataset.code;
  showOutput("waiting", el("p", { class: "muted", text: `Calling ${fn.name}…` }));
  busy(true);
  ui.progressBox.hidden = false;
  ui.upload.value = 0;
  ui.uploadText.textContent = `0 of ${formatBytes(body.size)}`;
  setStatus(`Sending ${formatBytes(body.size)} to ${fn.name}…`);
  const started = performance.now();

  xhr.open("POST", callUrl(fn));
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.setRequestHeader("Content-Type", body.type || "application/octet-stream");

  xhr.upload.addEventListener("progress", (event) => {
    if (!event.lengthComputable) return;
    ui.upload.value = (100 * event.loaded) / event.total;
    ui.uploadText.textContent = `${formatBytes(event.loaded)} of ${formatBytes(event.total)}`;
  });
  xhr.upload.addEventListener("load", () => {
    ui.upload.value = 100;
    setStatus(`Uploaded; ${fn.name} is working…`);
  });

  xhr.addEventListener("readystatechange", () => {
    if (xhr.readyState !== XMLHttpRequest.HEADERS_RECEIVED || xhr.status !== 200) return;
    const type = (xhr.getResponseHeader("Content-Type") ?? "").split(";")[0].trim();
    renderer = rendererFor(type, fn, image);
    if (renderer.binary) xhr.responseType = "blob";
  });

  // Hand each complete line of a streamed answer over as soon as it is here.
  const feedLines = (final) => {
    if (!renderer?.line) return;
    const text = xhr.responseText;
    let end;
    while ((end = text.indexOf("\n", seen)) !== -1) {
      const line = text.slice(seen, end).trim();
      seen = end + 1;
      if (line) renderer.line(line);
    }
    if (final && text.slice(seen).trim()) renderer.line(text.slice(seen).trim());
  };
  xhr.addEventListener("progress", () => {
    if (xhr.status === 200) feedLines(false);
  });

  xhr.addEventListener("load", () => {
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    if (xhr.status !== 200) {
      let code = `HTTP_${xhr.status}`;
      let message = xhr.statusText || "the server refused the call";
      try {
        const body = JSON.parse(xhr.responseText);
        code = body.code ?? code;
        message = body.message ?? message;
      } catch { /* not JSON: keep the HTTP status */ }
      showError(code, message, xhr.status);
      setStatus(`${fn.name} answered ${code}.`);
    } else {
      feedLines(true);
      Promise.resolve(renderer.done(renderer.binary ? xhr.response : xhr.responseText)).then(() => {
        if (ui.output.dataset.state === "running") ui.output.dataset.state = "done";
        setStatus(`${fn.name} answered in ${seconds} s.`);
        finish();
      });
      return;
    }
    finish();
  });
  xhr.addEventListener("error", () => {
    showError("UNAVAILABLE", "The connection failed, or the answer was cut off before its end (the server log tells why).");
    setStatus("The call failed.");
    finish();
  });
  xhr.addEventListener("abort", () => {
    ui.output.dataset.state = "cancelled";
    setStatus("Cancelled; the server stops the call too.");
    finish();
  });

  xhr.send(body);
}

function finish() {
  state.xhr = null;
  busy(false);
}

// ---------------------------------------------------------------- renderers

function rendererFor(type, fn, image) {
  if (type === "application/x-ndjson") return framesRenderer();
  if (type === "application/json" || type.endsWith("+json")) return jsonRenderer(image);
  if (type.startsWith("text/")) return textRenderer(type);
  return blobRenderer(type, fn);
}

function textRenderer(type) {
  return {
    done(text) {
      showOutput("text",
        el("p", { class: "muted", text: `${type}, ${text.length} characters` }),
        el("pre", { class: "text", id: "text-answer", text }));
    },
  };
}

function blobRenderer(type, fn) {
  return {
    binary: true,
    done(blob) {
      const url = URL.createObjectURL(blob);
      const extension = (type.split("/")[1] || "bin").replace(/[^a-z0-9]/gi, "") || "bin";
      const filename = `${fn.name}.${extension}`;
      const link = el("a", { class: "button secondary", href: url, download: filename, text: `Download ${filename}` });
      const caption = el("p", { class: "muted", text: `${type}, ${formatBytes(blob.size)}` });
      if (type.startsWith("image/")) {
        showOutput("image",
          el("figure", { class: "picture" },
            el("img", { id: "answer-image", src: url, alt: `The answer of ${fn.name} (${type})` }),
            el("figcaption", {}, caption, link)));
      } else {
        showOutput("binary", caption, link);
      }
      state.objectUrl = url;
    },
  };
}

function jsonRenderer(image) {
  return {
    done(text) {
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch {
        showOutput("text", el("pre", { class: "text", text }));
        return undefined;
      }
      if (Array.isArray(parsed?.detections) && parsed.width && parsed.height) {
        return detectionsView(parsed, image);
      } else {
        showOutput("json", el("pre", { class: "text", text: JSON.stringify(parsed, null, 2) }));
      }
      return undefined;
    },
  };
}

// ------------------------------------------------ detections on the picture

async function detectionsView(result, imageFile) {
  const detections = result.detections;
  const labels = [...new Set(detections.map((d) => d.label))].sort();
  const minimum = Math.min(Number(LOW_THRESHOLD), ...detections.map((d) => d.confidence));

  const canvas = el("canvas", { id: "canvas", width: result.width, height: result.height,
    role: "img", "aria-label": "The picture with the detected objects boxed" });
  const slider = el("input", { type: "range", id: "confidence", min: String(Math.floor(minimum * 100) / 100),
    max: "1", step: "0.01", value: "0.5" });
  const sliderValue = el("output", { for: "confidence", id: "confidence-value", text: "50%" });
  const toggles = labels.map((label) => {
    const id = `label-${label.replace(/[^a-zA-Z0-9_-]/g, "_")}`;
    const count = detections.filter((d) => d.label === label).length;
    return el("div", { class: "toggle" },
      el("input", { type: "checkbox", id, checked: true, "data-label": label }),
      el("label", { for: id },
        el("span", { class: "swatch", style: `background:${colourOf(label)}` }),
        `${label} (${count})`));
  });
  const list = el("ul", { id: "boxes", class: "boxes", "aria-live": "polite" });
  const summary = el("p", { class: "muted", id: "detections-summary" });

  showOutput("detections",
    el("div", { class: "viz" }, canvas),
    el("div", { class: "controls" },
      el("div", { class: "slider" },
        el("label", { for: "confidence", class: "label" }, "Minimum confidence ", sliderValue),
        slider),
      labels.length
        ? el("fieldset", { class: "labels" }, el("legend", { text: "Labels" }), ...toggles)
        : el("p", { class: "muted", text: "No objects found." })),
    summary, list);

  let bitmap = null;
  if (imageFile) {
    try {
      bitmap = await createImageBitmap(imageFile, { imageOrientation: "from-image" });
    } catch { /* not an image the browser reads (base64 text, TIFF): boxes on a blank */ }
  }

  const draw = () => {
    const threshold = Number(slider.value);
    sliderValue.textContent = percent(threshold);
    const shown = new Set(toggles.map((t) => t.querySelector("input")).filter((i) => i.checked)
      .map((i) => i.dataset.label));
    const visible = detections.filter((d) => d.confidence >= threshold && shown.has(d.label));
    drawBoxes(canvas, bitmap, result, visible);
    list.replaceChildren(...visible.map((d) => el("li", {
      "data-label": d.label, "data-confidence": String(d.confidence),
    }, el("span", { class: "swatch", style: `background:${colourOf(d.label)}` }),
    `${d.label} ${percent(d.confidence)} at (${d.xmin}, ${d.ymin})–(${d.xmax}, ${d.ymax})`)));
    canvas.dataset.drawn = String(visible.length);
    canvas.dataset.labels = [...new Set(visible.map((d) => d.label))].join(",");
    summary.textContent = `${visible.length} of ${detections.length} boxes shown, ` +
      `${result.width}×${result.height} pixels.`;
  };
  slider.addEventListener("input", draw);
  for (const toggle of toggles) toggle.querySelector("input").addEventListener("change", draw);
  draw();
}

function drawBoxes(canvas, bitmap, result, detections) {
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (bitmap) {
    context.drawImage(bitmap, 0, 0, result.width, result.height);
  } else {
    context.fillStyle = "#eef0f3";
    context.fillRect(0, 0, canvas.width, canvas.height);
  }
  const line = Math.max(2, Math.round(Math.max(result.width, result.height) / 250));
  const fontSize = Math.max(12, Math.round(Math.max(result.width, result.height) / 40));
  context.font = `600 ${fontSize}px system-ui, sans-serif`;
  context.textBaseline = "top";
  for (const d of detections) {
    const colour = colourOf(d.label);
    const width = d.xmax - d.xmin;
    const height = d.ymax - d.ymin;
    context.lineWidth = line;
    context.strokeStyle = colour;
    context.strokeRect(d.xmin + line / 2, d.ymin + line / 2, width - line, height - line);
    const text = `${d.label} ${percent(d.confidence)}`;
    const textWidth = context.measureText(text).width + fontSize * 0.6;
    const textHeight = fontSize * 1.35;
    const y = d.ymin >= textHeight ? d.ymin - textHeight : d.ymin;
    const x = Math.min(d.xmin, canvas.width - textWidth);
    context.fillStyle = colour;
    context.fillRect(x, y, textWidth, textHeight);
    context.fillStyle = "#fff";
    context.fillText(text, x + fontSize * 0.3, y + fontSize * 0.18);
  }
}

// ------------------------------------------------ frames as they arrive

function framesRenderer() {
  const rows = el("tbody");
  const chart = el("div", { class: "chart", id: "chart", role: "img", "aria-label": "Objects per frame" });
  const legend = el("p", { class: "chart-legend muted" },
    el("span", { class: "swatch person" }), "people ",
    el("span", { class: "swatch other" }), "other objects");
  const summary = el("p", { id: "video-summary", class: "summary", text: "Waiting for the first frame…" });
  const table = el("table", { id: "frames", class: "frames" },
    el("caption", { text: "Detections per frame, as each frame is done" }),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col", text: "Frame" }),
      el("th", { scope: "col", text: "Objects" }),
      el("th", { scope: "col", text: "What" }))),
    rows);
  const bars = [];
  let frames = 0;
  let objects = 0;
  showOutput("frames", summary, el("div", { class: "chart-box" }, chart, legend),
    el("div", { class: "table-box" }, table));

  const rescale = () => {
    const most = Math.max(1, ...bars.map((b) => b.total));
    for (const bar of bars) {
      bar.node.style.setProperty("--total", String(bar.total / most));
      bar.node.style.setProperty("--people", String(bar.total ? bar.people / bar.total : 0));
    }
  };

  return {
    line(text) {
      let item;
      try {
        item = JSON.parse(text);
      } catch {
        rows.append(el("tr", {}, el("td", { colSpan: 3, text })));
        return;
      }
      if (item.error) {
        ui.output.append(el("div", { class: "error", role: "alert", "data-code": item.error.code },
          el("p", { class: "error-code" }, el("strong", { text: item.error.code }),
            el("span", { class: "muted", text: " after the answer began" })),
          el("p", { class: "error-message", text: item.error.message })));
        ui.output.dataset.state = "error";
        ui.output.dataset.code = item.error.code;
        return;
      }
      if (Number.isInteger(item.frame)) {
        const found = item.detections ?? [];
        const people = found.filter((d) => d.label === "person").length;
        const counts = new Map();
        for (const d of found) counts.set(d.label, (counts.get(d.label) ?? 0) + 1);
        const what = [...counts].map(([label, n]) => (n > 1 ? `${label} ×${n}` : label)).join(", ") || "nothing";
        rows.append(el("tr", { "data-frame": String(item.frame), "data-at": String(Math.round(performance.now())) },
          el("td", { text: String(item.frame) }),
          el("td", { text: String(found.length) }),
          el("td", { text: what })));
        const node = el("div", { class: "bar", title: `frame ${item.frame}: ${found.length} objects, ${people} people` });
        chart.append(node);
        bars.push({ node, total: found.length, people });
        rescale();
        frames += 1;
        objects += found.length;
        summary.textContent = `${frames} frame${frames === 1 ? "" : "s"} so far, ${objects} objects.`;
        return;
      }
      if ("frames_read" in item || "fps" in item) {
        const size = item.width && item.height ? `${item.width}×${item.height}` : "";
        const fps = item.fps ? ` at ${Number(item.fps).toFixed(1)} fps` : "";
        summary.textContent = `${frames} frames analysed, ${objects} objects. Video ${size}${fps}` +
          (item.frames_read !== undefined ? `, ${item.frames_read} frames read.` : ".");
        summary.dataset.final = "true";
        return;
      }
      rows.append(el("tr", {}, el("td", { colSpan: 3, text })));
    },
    done() {},
  };
}

loadFunctions();
