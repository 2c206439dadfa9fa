// Drives ftserve's dashboard in headless Chromium as a person would, for tests/integration/test_dashboard.py.
// usage: FTSERVE_API_KEY=sk-... node dashboard.mjs SERVER_URL JOB_ID FILE_ID REWARDED_JOB_ID
// The job must be running (the rewarded one finished, with reward metrics) on a server that asks for FTSERVE_API_KEY. Prints one JSON object of what it saw;
// a step that never happens fails with its reason on stderr (exit 1). Screenshots (dashboard-watch-*.png), each
// checked by axe-core, go to FTSERVE_ARTIFACTS_DIR; CHROMIUM names another browser binary (browser.mjs).
import {openPage} from "./browser.mjs";

const [server, jobId, fileId, rewardedJobId] = process.argv.slice(2);
const key = process.env.FTSERVE_API_KEY;
const WAIT_MS = 10_000;
const {page, seen, shot, run} = await openPage("dashboard-watch", {waitMs: WAIT_MS});

const points = () => page.locator(".chart svg").getAttribute("data-points").then(Number);
const status = () => page.locator(".title .status").textContent();

await run(async () => {
  // The server wants a key: the prompt comes up, a wrong key is refused with the server's message.
  await page.goto(`${server}/dashboard`);
  seen.landedOn = page.url();
  const keyField = page.getByLabel("API key");
  await keyField.waitFor();
  await shot("sign-in");
  await keyField.fill("sk-not-a-key");
  await page.getByRole("button", {name: "Sign in"}).click();
  await page.waitForFunction(() => document.querySelector(".sign-in [role=alert]")?.textContent.trim());
  seen.wrongKeyMessage = (await page.locator(".sign-in [role=alert]").textContent()).trim();
  await keyField.fill(key);
  await page.getByRole("button", {name: "Sign in"}).click();

  // The jobs list shows the job; a status filter it does not match hides it.
  const row = page.locator(`tr[data-job="${jobId}"]`);
  await row.waitFor();
  seen.listedStatus = (await row.locator(".status").textContent()).trim();
  await page.getByRole("button", {name: "succeeded"}).click();
  await row.waitFor({state: "detached"});
  seen.hiddenBySucceededFilter = true;
  await page.getByRole("button", {name: "all"}).click();
  await row.waitFor();
  await shot("jobs");

  // Its page: the chart grows while the job runs; the evaluation is shown.
  await row.getByRole("link", {name: jobId}).click();
  seen.jobUrl = page.url();
  await page.waitForFunction(() => Number(document.querySelector(".chart svg")?.getAttribute("data-points")) > 0);
  const first = await points();
  await page.waitForFunction((before) => Number(document.querySelector(".chart svg").getAttribute("data-points")) > before, first);
  seen.chartPoints = [first, await points()];
  seen.validLine = await page.locator(".chart polyline.valid").count() === 1;
  seen.rewardChartHidden = await page.locator("#reward-title").isHidden();
  await page.locator("#evaluation-title").waitFor();
  seen.evaluation = await page.locator("section:has(#evaluation-title) tbody tr")
    .evaluateAll((rows) => rows.map((row) => [...row.cells].map((cell) => cell.textContent.trim())));
  seen.runningStatus = (await status()).trim();
  seen.enabledWhileRunning = await page.locator(".actions button:enabled").allTextContents();
  await shot("job-running");

  // Cancel: the status becomes cancelled and the buttons go off.
  await page.getByRole("button", {name: "Cancel"}).click();
  await page.waitForFunction(() => document.querySelector(".title .status")?.textContent === "cancelled");
  await page.getByText("Fine-tuning job cancelled").waitFor();
  seen.finalStatus = (await status()).trim();
  seen.enabledWhenCancelled = await page.locator(".actions button:enabled").allTextContents();
  await shot("job-cancelled");

  // The link the CLI prints opens the job directly.
  await page.goto(`${server}/dashboard/#/jobs/${jobId}`);
  await page.reload();
  await page.waitForFunction(() => document.querySelector(".title .status")?.textContent === "cancelled");
  seen.deepLinkTitle = (await page.locator("h1").textContent()).trim();

  // A job that reported rewards: their chart, next to the loss.
  await page.goto(`${server}/dashboard/#/jobs/${rewardedJobId}`);
  const rewardChart = page.locator("section:has(#reward-title) svg");
  await rewardChart.waitFor();
  seen.rewardChart = {points: await rewardChart.getAttribute("data-points"), lines: await rewardChart.locator("polyline").count(),
    label: await rewardChart.getAttribute("aria-label")};

  // The API's refusal is shown as it said it.
  await page.goto(`${server}/dashboard/#/jobs/ftjob-missing`);
  seen.missingJobAlert = (await page.locator("[role=alert]:visible").textContent()).trim();

  // The files page shows the uploaded file and its validation.
  await page.getByRole("link", {name: "Files"}).click();
  const file = page.locator(`tr[data-file="${fileId}"]`);
  await file.waitFor();
  seen.fileCells = (await file.locator("td").allTextContents()).map((text) => text.trim());
  seen.fileIds = await page.locator("tr[data-file]").evaluateAll((rows) => rows.map((row) => row.dataset.file));
  await shot("files");

  // Signing out forgets the key: the prompt is back.
  await page.getByRole("button", {name: "Sign out"}).click();
  await keyField.waitFor();
  seen.signedOut = await page.evaluate(() => sessionStorage.getItem("ftserve.apiKey") === null);
});
