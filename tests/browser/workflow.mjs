// A person's whole path through the dashboard in headless Chromium, for tests/integration/test_dashboard_workflow.py:
// sign in, upload a file with a bad line (and read which), upload good ones (one large enough to go in parts),
// preview and create a job, watch it succeed, read its before/after table, chat with base and fine-tuned model
// side by side, and download a GGUF export. axe-core checks each page.
// usage: FTSERVE_API_KEY=sk-... node workflow.mjs SERVER_URL MODEL BAD_FILE TRAIN_FILE VALID_FILE LARGE_FILE
// Prints one JSON object of what it saw; a step that never happens fails with its reason on stderr (exit 1).
// Screenshots go to FTSERVE_ARTIFACTS_DIR, downloads to FTSERVE_DOWNLOADS_DIR; CHROMIUM names another browser.
import {mkdirSync, readFileSync} from "node:fs";
import {createRequire} from "node:module";
import {basename, join} from "node:path";
import {chromium} from "playwright-core";

const [server, model, badFile, trainFile, validFile, largeFile] = process.argv.slice(2);
const key = process.env.FTSERVE_API_KEY;
const artifacts = process.env.FTSERVE_ARTIFACTS_DIR ?? new URL("../artifacts", import.meta.url).pathname;
const downloads = process.env.FTSERVE_DOWNLOADS_DIR ?? artifacts;
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WAIT_MS = 15_000;
const TRAIN_MS = 90_000;
mkdirSync(artifacts, {recursive: true});
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

const seen = {screenshots: [], pageErrors: [], accessibility: {}};
const browser = await chromium.launch({executablePath: chromiumPath});
const context = await browser.newContext({viewport: {width: 1200, height: 900}, acceptDownloads: true});
const page = await context.newPage();
page.setDefaultTimeout(WAIT_MS);
page.on("pageerror", (error) => seen.pageErrors.push(error.message));

// The page's screenshot, and axe-core's serious and critical findings on it. The page's CSP refuses
// injected <script>s and eval, so axe's source is evaluated through the debugging protocol, which it does not govern.
async function shot(name) {
  const path = join(artifacts, `dashboard-${name}.png`);
  await page.screenshot({path, fullPage: true});
  seen.screenshots.push(path);
  if (!await page.evaluate(() => Boolean(window.axe))) await page.evaluate(axeSource);
  const found = await page.evaluate(async () => {
    const result = await window.axe.run(document, {resultTypes: ["violations"]});
    return result.violations.filter((v) => ["serious", "critical"].includes(v.impact))
      .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join("; ")})`);
  });
  seen.accessibility[name] = found;
}

async function uploadThrough(path) {
  await page.goto(`${server}/dashboard/#/upload`);
  await page.getByLabel("Purpose").selectOption("fine-tune");
  await page.locator("#upload-file").setInputFiles(path);
  await page.waitForFunction((name) => document.querySelector("[role=status]")?.textContent.startsWith(name), basename(path));
}

try {
  // Sign in with the project's key.
  await page.goto(`${server}/dashboard/`);
  await page.getByLabel("API key").fill(key);
  await shot("sign-in");
  await page.getByRole("button", {name: "Sign in"}).click();
  await page.getByRole("heading", {name: "Fine-tuning jobs"}).waitFor();

  // A file with a bad line: the API's refusal, which names the line, is shown.
  await uploadThrough(badFile);
  seen.badFileAlert = (await page.locator("[role=alert]:visible").textContent()).trim();
  await shot("upload-refused");

  // A large file goes in parts; the bar reaches its end.
  await uploadThrough(largeFile);
  seen.largeFile = {progress: await page.locator("#upload-progress").evaluate((bar) => bar.value / bar.max),
    cells: await page.locator("#main dl dd").allTextContents()};

  // The validation and training files.
  await uploadThrough(validFile);
  seen.validFileId = (await page.locator("#main dl dd").first().textContent()).trim();
  await uploadThrough(trainFile);
  seen.trainFileId = (await page.locator("#main dl dd").first().textContent()).trim();
  await shot("upload");

  // The new job form, reached from the uploaded file: preview first, then create.
  await page.getByRole("link", {name: "Start a fine-tuning job with this file"}).click();
  await page.getByLabel("Base model").selectOption(model);
  await page.waitForFunction((id) => document.querySelector("#job-training-file").value === id, seen.trainFileId);
  await page.getByLabel("Validation file").selectOption(seen.validFileId);
  await page.getByLabel("n epochs").fill("2");
  await page.getByLabel("batch size").fill("4");
  await page.getByLabel("Suffix").fill("browser");
  await page.getByRole("button", {name: "Preview"}).click();
  await page.locator("#preview-title").waitFor();
  seen.preview = await page.locator("section:has(#preview-title) dl").evaluate((list) =>
    Object.fromEntries([...list.querySelectorAll("dt")].map((term) => [term.textContent, term.nextElementSibling.textContent])));
  await shot("new-job");
  await page.getByRole("button", {name: "Create job"}).click();
  await page.waitForURL(/#\/jobs\/ftjob-/);
  seen.jobId = decodeURIComponent(page.url().split("#/jobs/")[1]);

  // Its page, until it succeeds; the before/after table.
  await page.waitForFunction(() => document.querySelector(".title .status")?.textContent === "succeeded", null, {timeout: TRAIN_MS});
  await page.locator("#evaluation-title").waitFor();
  seen.evaluation = await page.locator("section:has(#evaluation-title) tbody tr")
    .evaluateAll((rows) => rows.map((row) => [...row.cells].map((cell) => cell.textContent.trim())));
  seen.fineTunedModel = (await page.locator("dt:text-is('Fine-tuned model') + dd").textContent()).trim();
  seen.checkpointActions = await page.locator("tr[data-checkpoint]").first().locator(".row-actions")
    .evaluate((cell) => [...cell.querySelectorAll("a, button")].map((control) => control.textContent));
  // Share the newest checkpoint with the other project.
  const checkpoint = page.locator("tr[data-checkpoint]").first();
  seen.sharedCheckpoint = await checkpoint.getAttribute("data-checkpoint");
  await checkpoint.getByPlaceholder("project id").fill("theirs");
  await checkpoint.getByRole("button", {name: "Share with project"}).click();
  await page.getByText(`Shared ${seen.sharedCheckpoint} with theirs.`).waitFor();
  await shot("job");

  // The playground: the same prompt to the fine-tuned model and its base, both answers streaming.
  await page.getByRole("link", {name: "Playground"}).click();
  await page.getByLabel("Model", {exact: true}).selectOption(seen.fineTunedModel);
  await page.getByLabel("Side by side with another model").check();
  await page.getByLabel("Compare with").selectOption(model);
  await page.getByLabel("Longest answer (tokens)").fill("16");
  await page.getByLabel("Prompt").fill("What is 2 + 3?");
  await page.getByRole("button", {name: "Send"}).click();
  await page.waitForFunction(() => {
    const answers = [...document.querySelectorAll(".answer")];
    return answers.length === 2 && answers.every((a) => a.getAttribute("aria-busy") === "false");
  }, null, {timeout: 60_000});
  seen.sideBySide = await page.locator(".pane").evaluateAll((panes) => panes.map((pane) => ({
    model: pane.querySelector("h2").textContent, answer: pane.querySelector(".answer").textContent,
    live: pane.querySelector(".answer").getAttribute("aria-live"),
    failure: pane.querySelector("[role=alert]").hidden ? null : pane.querySelector("[role=alert]").textContent})));
  await shot("playground");

  // The models page: lineage, and a GGUF export downloaded.
  await page.getByRole("link", {name: "Models"}).click();
  const row = page.locator(`tr[data-model="${seen.fineTunedModel}"]`);
  await row.waitFor();
  seen.modelRow = (await row.locator("td").allTextContents()).slice(0, 4).map((text) => text.trim());
  await row.getByLabel("Export format").selectOption("gguf");
  await row.getByLabel("Quantization").selectOption("q8_0");
  const [download] = await Promise.all([page.waitForEvent("download", {timeout: 60_000}),
    row.getByRole("button", {name: "Export"}).click()]);
  const saved = join(downloads, download.suggestedFilename());
  await download.saveAs(saved);
  seen.download = saved;
  await page.getByText(`Downloaded ${download.suggestedFilename()}.`).waitFor();
  await shot("models");

  // Narrow window: the pages still fit.
  await page.setViewportSize({width: 390, height: 844});
  await page.goto(`${server}/dashboard/#/jobs/${seen.jobId}`);
  await page.locator("#evaluation-title").waitFor();
  seen.narrowOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  seen.narrowTooWide = await page.evaluate(() => [...document.querySelectorAll("body *")]
    .filter((element) => element.getBoundingClientRect().right > window.innerWidth + 1)
    .slice(0, 8).map((element) => `${element.tagName.toLowerCase()}.${element.className}#${element.id}:${Math.round(element.getBoundingClientRect().right)}`));
  await shot("job-narrow");
} catch (error) {
  await page.screenshot({path: join(artifacts, "dashboard-failure.png"), fullPage: true}).catch(() => {});
  console.error(error.message);
  process.exitCode = 1;
} finally {
  await browser.close();
  console.log(JSON.stringify(seen));
}
