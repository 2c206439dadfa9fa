// A person's whole path through the dashboard in headless Chromium, for tests/integration/test_dashboard_workflow.py:
// sign in, upload a file with a bad line (and read which), upload good ones (one large enough to go in parts, one
// dropped on the page) and read what validation found, try a bad and a good grader in the new job form, preview and
// create a job, watch it succeed, read its before/after table, chat with base and fine-tuned model side by side,
// download a GGUF export, and delete the fine-tuned model. axe-core checks each page (browser.mjs).
// usage: FTSERVE_API_KEY=sk-... node workflow.mjs SERVER_URL MODEL BAD_FILE TRAIN_FILE VALID_FILE LARGE_FILE BAD_GRADER GOOD_GRADER
// (the graders as JSON). Prints one JSON object of what it saw; a step that never happens fails with its reason on
// stderr (exit 1). Screenshots (dashboard-*.png) go to FTSERVE_ARTIFACTS_DIR, downloads to FTSERVE_DOWNLOADS_DIR.
import {readFileSync} from "node:fs";
import {basename, join} from "node:path";
import {artifacts, openPage} from "./browser.mjs";

const [server, model, badFile, trainFile, validFile, largeFile, badGrader, goodGrader] = process.argv.slice(2);
const key = process.env.FTSERVE_API_KEY;
const downloads = process.env.FTSERVE_DOWNLOADS_DIR ?? artifacts;
const WAIT_MS = 15_000;
const TRAIN_MS = 90_000;
const {page, seen, shot, run} = await openPage("dashboard", {waitMs: WAIT_MS, acceptDownloads: true});

// Picks the file in the upload page's file field, or, with `drop`, drops it on the page as a drag from the
// desktop would: a drop event whose DataTransfer holds the file.
async function uploadThrough(path, {drop = false} = {}) {
  await page.goto(`${server}/dashboard/#/upload`);
  await page.getByLabel("Purpose").selectOption("fine-tune");
  if (drop) {
    await page.locator(".drop").evaluate((zone, [name, text]) => {
      const files = new DataTransfer();
      files.items.add(new File([text], name, {type: "application/jsonl"}));
      zone.dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));
    }, [basename(path), readFileSync(path, "utf8")]);
  } else {
    await page.locator("#upload-file").setInputFiles(path);
  }
  await page.waitForFunction((name) => document.querySelector("[role=status]")?.textContent.startsWith(name), basename(path));
}

// A label-value list as an object: {term: value}.
const details = (list) => list.evaluate((dl) =>
  Object.fromEntries([...dl.querySelectorAll("dt")].map((term) => [term.textContent, term.nextElementSibling.textContent])));

await run(async () => {
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
    details: await details(page.locator("#main dl"))};

  // The validation file, dropped on the page; the training file, picked. Each shows what validation found.
  await uploadThrough(validFile, {drop: true});
  seen.validFile = await details(page.locator("#main dl"));
  seen.validFileId = seen.validFile.File;
  await uploadThrough(trainFile);
  seen.trainFile = await details(page.locator("#main dl"));
  seen.trainFileId = seen.trainFile.File;
  await shot("upload");

  // The new job form, reached from the uploaded file: preview first, then create.
  await page.getByRole("link", {name: "Start a fine-tuning job with this file"}).click();
  await page.getByLabel("Base model").selectOption(model);
  // The grader editor of a reinforcement job: a bad grader gets the API's refusal, a good one is accepted.
  await page.getByLabel("Method", {exact: true}).selectOption("reinforcement");
  await page.getByLabel("Grader (JSON)").fill(badGrader);
  await page.getByRole("button", {name: "Validate grader"}).click();
  seen.badGraderAlert = (await page.locator("[role=alert]:visible").textContent()).trim();
  await page.getByLabel("Grader (JSON)").fill(goodGrader);
  await page.getByRole("button", {name: "Validate grader"}).click();
  await page.getByText("The grader is valid.").waitFor();
  seen.goodGraderAlertShown = await page.locator("[role=alert]:visible").count() > 0;
  await page.getByLabel("Method", {exact: true}).selectOption("supervised");
  await page.waitForFunction((id) => document.querySelector("#job-training-file").value === id, seen.trainFileId);
  await page.getByLabel("Validation file").selectOption(seen.validFileId);
  await page.getByLabel("n epochs").fill("2");
  await page.getByLabel("batch size").fill("4");
  await page.getByLabel("Suffix").fill("browser");
  await page.getByRole("button", {name: "Preview"}).click();
  await page.locator("#preview-title").waitFor();
  seen.preview = await details(page.locator("section:has(#preview-title) dl"));
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
  // The API's record of it, read now: deleting the model at the end takes its checkpoints with it.
  seen.sharedWith = await page.evaluate(async (name) => {
    const answer = await fetch(`/v1/fine_tuning/checkpoints/${encodeURIComponent(name)}/permissions`,
      {headers: {authorization: `Bearer ${sessionStorage.getItem("ftserve.apiKey")}`}});
    return (await answer.json()).data.map((permission) => permission.project_id);
  }, seen.sharedCheckpoint);
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

  // Delete the fine-tuned model from the models page, confirming the browser's question.
  await page.goto(`${server}/dashboard/#/models`);
  const doomed = page.locator(`tr[data-model="${seen.fineTunedModel}"]`);
  await doomed.waitFor();
  page.once("dialog", (dialog) => { seen.deleteQuestion = dialog.message(); dialog.accept(); });
  await doomed.getByRole("button", {name: `Delete ${seen.fineTunedModel}`}).click();
  await page.getByText(`Deleted ${seen.fineTunedModel}.`).waitFor();
  await doomed.waitFor({state: "detached"});
  seen.modelsAfterDelete = await page.locator("tr[data-model]").evaluateAll((rows) => rows.map((row) => row.dataset.model));
});
