// The web page: keep the API key in sessionStorage, upload with progress, long-poll the job,
// show the reading, the probability against the threshold, the heatmap and the model version;
// a banner when the film is outside the validated population, and a refused film's reasons;
// a reader confirms or corrects a finished reading (POST .../feedback); the scope and the
// operating point that answered are stated; the client's recent X-rays are listed and reopened.
"use strict";

const KEY_STORAGE = "cxr-api-key";
const WAIT_SECONDS = 20;
const RECENT_JOBS = 10;
const $ = (id) => document.getElementById(id);
let objectUrls = [];
let currentJob = null;

// Scope reasons (the service's stable codes) in words.
const REFUSED_CODE = "not_a_chest_radiograph";
const REASON_WORDS = {
  not_chest_radiograph: "It does not look like a chest radiograph (another body part, CT, MR, ultrasound, a photograph or a document).",
  blank_image: "The image is blank: (nearly) every pixel has the same value.",
  noise_image: "The image is noise: it shows no anatomical structure.",
  colour_image: "The image is in colour (a photograph or a screenshot), not an X-ray.",
  lateral_view: "It is a lateral (side) view; the model reads frontal PA or AP views only.",
  rotated: "The film is not upright (rotated).",
  inverted: "The film's grey levels are inverted (bone appears dark).",
  adult: "The patient is an adult; the model was validated on children.",
  atypical_image: "The image differs from the films the model was validated on.",
};

class Refusal extends Error {
  constructor(reasons) { super("Not analysed"); this.reasons = reasons || []; }
}

function listReasons(list, reasons) {
  list.replaceChildren(...reasons.map((reason) => {
    const item = document.createElement("li");
    item.textContent = REASON_WORDS[reason] || reason;
    item.dataset.reason = reason;
    return item;
  }));
}

function showRefusal(reasons) {
  // null hides the box; a refusal shows it, with whatever reasons it names.
  listReasons($("refusal-reasons"), reasons || []);
  $("refusal").hidden = reasons === null;
}

function apiKey() { return sessionStorage.getItem(KEY_STORAGE); }
function authHeaders() { return { Authorization: `Bearer ${apiKey()}` }; }

function showKeyState() {
  const hasKey = Boolean(apiKey());
  $("key-form").hidden = hasKey;
  $("key-status").hidden = !hasKey;
  $("analyse").disabled = !hasKey || !$("file").files.length;
  $("jobs-section").hidden = !hasKey;
  if (hasKey) { loadModelInfo(); loadJobs(); }
}

function setStatus(text) { $("status").textContent = text; }

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

async function problemText(response) {
  // RFC 7807 problem details carry a human-readable `detail`; anything else gets the status.
  // A refused film (code not_a_chest_radiograph) throws a Refusal with its reasons instead.
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (body && body.code === REFUSED_CODE) throw new Refusal(body.reasons);
  if (body && body.detail) return `${body.title || response.status}: ${body.detail}`;
  return `The service answered ${response.status} ${response.statusText}.`;
}

function handleUnauthorized() {
  sessionStorage.removeItem(KEY_STORAGE);
  showKeyState();
  $("api-key").focus();
}

async function loadModelInfo() {
  const response = await fetch("/v1/models/current", { headers: authHeaders() });
  if (!response.ok) return;
  const model = await response.json();
  $("model-info").textContent = model.version == null
    ? `Model: ${model.name} (no version is being served right now)`
    : `Model: ${model.name} version ${model.version}, decision threshold ${model.threshold?.toFixed(3) ?? "unknown"}`;
}

function upload(file) {
  // XMLHttpRequest, not fetch: only it reports upload progress.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.open("POST", "/v1/predictions");
    xhr.setRequestHeader("Authorization", `Bearer ${apiKey()}`);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) $("upload-progress").value = (100 * event.loaded) / event.total;
    };
    xhr.onload = () => resolve(new Response(xhr.responseText, {
      status: xhr.status, statusText: xhr.statusText,
      headers: { "Content-Type": xhr.getResponseHeader("Content-Type") || "" },
    }));
    xhr.onerror = () => reject(new Error("The upload failed: the service could not be reached."));
    xhr.send(form);
  });
}

async function waitForJob(jobId) {
  for (;;) {
    const response = await fetch(`/v1/predictions/${encodeURIComponent(jobId)}?wait=${WAIT_SECONDS}`,
                                 { headers: authHeaders() });
    if (response.status === 401) { handleUnauthorized(); throw new Error(await problemText(response)); }
    if (!response.ok) throw new Error(await problemText(response));
    const job = await response.json();
    if (job.status === "succeeded" || job.status === "failed") return job;
    setStatus(job.status === "running" ? "Reading the X-ray..." : "Waiting in the queue...");
  }
}

function scopeStatement(scope) {
  if (!scope) return "This film was not screened for the validated population.";
  if (scope.in_validated_population) {
    return "In scope: the film lies in the population the model was validated on " +
      "(frontal chest X-rays of children).";
  }
  return "Out of scope: the film lies outside the population the model was validated on " +
    "(reasons above).";
}

function operatingPointStatement(result) {
  const point = result.operating_point;
  const t = result.threshold.toFixed(3);
  if (!point) return `Answered at the model's own decision threshold, ${t}.`;
  if (point.calibrated_by === "site") {
    const fitted = point.fitted_at ? `, fitted ${point.fitted_at.slice(0, 10)}` : "";
    return `Answered at site ${point.site}'s own operating point: probability calibrated on ` +
      `the site's films and threshold ${t}${fitted}.`;
  }
  return `Answered at the model's own operating point (threshold ${t}): site ${point.site} ` +
    "has no operating point of its own for this model version.";
}

function renderResult(job) {
  const result = job.result;
  const outside = result.scope && !result.scope.in_validated_population;
  listReasons($("scope-reasons"), outside ? result.scope.reasons : []);
  $("scope-banner").hidden = !outside;
  const p = result.pneumonia_probability;
  const t = result.threshold;
  $("result-label").textContent = result.label;
  $("result-label").dataset.label = result.label;
  $("result-subtype").textContent = result.subtype ? `(${result.subtype} pattern most likely)` : "";
  $("probability-text").textContent =
    `Probability of pneumonia ${p.toFixed(3)}; decision threshold ${t.toFixed(3)} ` +
    `(${p >= t ? "at or above" : "below"} the threshold).`;
  $("bar-fill").style.width = `${(100 * p).toFixed(1)}%`;
  $("bar-threshold").style.left = `calc(${(100 * t).toFixed(1)}% - 1px)`;
  $("probability-bar").setAttribute("aria-label",
    `Probability ${p.toFixed(3)} against threshold ${t.toFixed(3)}`);
  $("result-model").textContent = `${result.model.name} version ${result.model.version}`;
  const c = result.class_probabilities;
  $("result-classes").textContent =
    `normal ${c.normal.toFixed(3)}, bacterial ${c.bacterial.toFixed(3)}, viral ${c.viral.toFixed(3)}`;
  $("result-job").textContent = job.job_id;
  $("scope-statement").textContent = scopeStatement(result.scope);
  $("operating-point").textContent = operatingPointStatement(result);
  currentJob = job;
  prepareFeedback(job);
  $("result").hidden = false;
}

async function showOriginal(job) {
  // The service draws the stored film as PNG, so a DICOM upload shows too.
  const response = await fetch(`${job.links.self}/original`, { headers: authHeaders() });
  if (!response.ok) { $("original-figure").hidden = true; return; }
  $("original-image").src = remember(URL.createObjectURL(await response.blob()));
  $("original-figure").hidden = false;
}

async function showHeatmap(job) {
  if (!job.heatmap_url) { $("heatmap-figure").hidden = true; return; }
  const response = await fetch(job.heatmap_url, { headers: authHeaders() });
  if (!response.ok) { $("heatmap-figure").hidden = true; return; }
  $("heatmap-image").src = remember(URL.createObjectURL(await response.blob()));
  $("heatmap-figure").hidden = false;
}

function prepareFeedback(job) {
  // The form starts at the reading on record: the reader's earlier verdict, else the model's.
  const current = job.feedback || job.result;
  $("feedback-label").value = current.label;
  $("feedback-subtype").value = current.subtype || "";
  $("feedback-subtype").disabled = current.label !== "PNEUMONIA";
  if (job.feedback) $("feedback-reader").value = job.feedback.reader;
  $("feedback-comment").value = job.feedback?.comment || "";
  updateFeedbackButton();
  showFeedbackState(job);
  showFeedbackError("");
}

function showFeedbackState(job) {
  const feedback = job.feedback;
  $("feedback-status").textContent = !feedback ? "" :
    `${feedback.agrees ? "Confirmed" : "Corrected"} as ${feedback.label}` +
    `${feedback.subtype ? ` (${feedback.subtype})` : ""} by ${feedback.reader}` +
    ` (verdict ${feedback.revision}).`;
}

function updateFeedbackButton() {
  const label = $("feedback-label").value;
  const pneumonia = label === "PNEUMONIA";
  $("feedback-subtype").disabled = !pneumonia;
  if (!pneumonia) $("feedback-subtype").value = "";
  const agrees = currentJob && label === currentJob.result.label;
  $("feedback-submit").textContent = agrees ? "Confirm the reading" : "Correct the reading";
}

function showFeedbackError(text) {
  $("feedback-error").textContent = text;
  $("feedback-error").hidden = !text;
}

async function sendFeedback(event) {
  event.preventDefault();
  if (!currentJob || !apiKey()) return;
  showFeedbackError("");
  const label = $("feedback-label").value;
  const body = {
    label,
    subtype: label === "PNEUMONIA" ? ($("feedback-subtype").value || null) : null,
    reader: $("feedback-reader").value.trim(),
    comment: $("feedback-comment").value.trim() || null,
  };
  $("feedback-submit").disabled = true;
  try {
    const response = await fetch(currentJob.links.feedback, {
      method: "POST", body: JSON.stringify(body),
      headers: { ...authHeaders(), "Content-Type": "application/json" },
    });
    if (response.status === 401) { handleUnauthorized(); throw new Error(await problemText(response)); }
    if (response.status !== 201) throw new Error(await problemText(response));
    currentJob = await response.json();
    showFeedbackState(currentJob);
    loadJobs();
  } catch (error) {
    showFeedbackError(error.message);
  } finally {
    $("feedback-submit").disabled = false;
  }
}

function remember(url) { objectUrls.push(url); return url; }

function resetResult() {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  currentJob = null;
  $("result").hidden = true;
  $("original-figure").hidden = true;
  $("heatmap-figure").hidden = true;
  showError("");
  showRefusal(null);
}

function readingOf(job) {
  if (job.status === "succeeded") return job.feedback ? `${job.feedback.label} (reader)` : job.result.label;
  if (job.status === "failed") return job.failure?.code === REFUSED_CODE ? "not analysed" : "failed";
  return "";
}

function cell(text, label) {
  const td = document.createElement("td");
  td.textContent = text;
  if (label) td.dataset.label = label;
  return td;
}

function jobRow(job) {
  const row = document.createElement("tr");
  row.dataset.jobId = job.job_id;
  const sent = new Date(job.created_at);
  const p = job.result ? job.result.pneumonia_probability.toFixed(3) : "";
  const label = job.status === "succeeded" ? (job.feedback || job.result).label : "";
  row.append(cell(sent.toLocaleString()), cell(job.filename || job.job_id), cell(job.status),
             cell(readingOf(job), label), cell(p));
  const open = document.createElement("td");
  if (job.status === "succeeded" || job.status === "failed") {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Show";
    button.setAttribute("aria-label", `Show ${job.filename || job.job_id}`);
    button.addEventListener("click", () => openJob(job.job_id));
    open.append(button);
  }
  row.append(open);
  return row;
}

async function loadJobs() {
  // The client's own jobs, newest first (GET /v1/predictions).
  if (!apiKey()) return;
  const response = await fetch(`/v1/predictions?limit=${RECENT_JOBS}`, { headers: authHeaders() });
  const box = $("jobs-error");
  if (response.status === 401) { handleUnauthorized(); return; }
  if (!response.ok) { box.textContent = await problemText(response); box.hidden = false; return; }
  box.hidden = true;
  const page = await response.json();
  $("jobs-body").replaceChildren(...page.items.map(jobRow));
  $("jobs-empty").hidden = page.items.length > 0;
  $("jobs-table").hidden = page.items.length === 0;
}

async function showJob(job) {
  if (job.status === "failed" && job.failure?.code === REFUSED_CODE) {
    throw new Refusal(job.failure.reasons);
  }
  if (job.status === "failed") {
    throw new Error(`The X-ray could not be read: ${job.failure?.message ?? "unknown reason"}`);
  }
  renderResult(job);
  await Promise.all([showOriginal(job), showHeatmap(job)]);
}

async function openJob(jobId) {
  resetResult();
  try {
    const response = await fetch(`/v1/predictions/${encodeURIComponent(jobId)}`,
                                 { headers: authHeaders() });
    if (!response.ok) throw new Error(await problemText(response));
    await showJob(await response.json());
    setStatus("");
    $("result").scrollIntoView();
  } catch (error) {
    if (error instanceof Refusal) showRefusal(error.reasons);
    else showError(error.message);
  }
}

async function analyse(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file || !apiKey()) return;
  resetResult();
  $("analyse").disabled = true;
  $("upload-progress").value = 0;
  try {
    setStatus("Uploading...");
    const response = await upload(file);
    if (response.status === 401) { handleUnauthorized(); throw new Error(await problemText(response)); }
    if (response.status !== 202) throw new Error(await problemText(response));
    const accepted = await response.json();
    setStatus("Waiting in the queue...");
    const job = await waitForJob(accepted.job_id);
    loadJobs();
    await showJob(job);
    setStatus("Done.");
  } catch (error) {
    setStatus("");
    if (error instanceof Refusal) showRefusal(error.reasons);
    else showError(error.message);
  } finally {
    $("analyse").disabled = !apiKey() || !$("file").files.length;
  }
}

function chooseFile(files) {
  if (!files || !files.length) return;
  if (files !== $("file").files) {
    const transfer = new DataTransfer();
    transfer.items.add(files[0]);
    $("file").files = transfer.files;
  }
  $("file-name").textContent = files[0].name;
  $("analyse").disabled = !apiKey();
}

function wireDropZone() {
  const zone = $("drop-zone");
  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
  }));
  zone.addEventListener("drop", (event) => chooseFile(event.dataTransfer.files));
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    showKeyState();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    showKeyState();
  });
  $("file").addEventListener("change", () => chooseFile($("file").files));
  $("upload-form").addEventListener("submit", analyse);
  $("feedback-form").addEventListener("submit", sendFeedback);
  $("feedback-label").addEventListener("change", updateFeedbackButton);
  wireDropZone();
  showKeyState();
});
